"""The lossless check's tie tolerance, on the fake engine's `model:tie-shape` draft: a test sets the
target's margin between the two tokens per prompt and how far each pass shape moves it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.lossless import DOCS, TIE_CAP, DraftCheck, check_lossless, draft_refusal
from tests.conftest import REPO, fake_config
from tests.engines.contract import PROMPTS

VERIFY = (4, 1)  # the fake's verification at batch 1: draft_width 3 + 1 tokens of one sequence


def tie_engine(tmp_path: Path, batch: int = 1, **tie: Any) -> Any:
    cfg = parse_config(fake_config(tmp_path), base_dir=str(tmp_path))
    eng = ENGINES.get("fake").load_class()(cfg, TrialPoint("fake", "fp32", "model:tie-shape", batch, "cpu:1"))
    eng.load()
    for k, v in tie.items():
        setattr(eng.tie_shape, k, v)
    return eng


def judged(eng: Any, prompts: list[str] = PROMPTS) -> DraftCheck:
    wl = eng.config.workload  # what check_lossless decodes plain with
    drafted = eng.generate(prompts, wl.max_new_tokens, wl.ignore_eos).token_ids
    assert drafted != eng.generate(prompts, wl.max_new_tokens, wl.ignore_eos, draft=False).token_ids
    check: DraftCheck = check_lossless(eng, prompts, drafted)
    return check


def refused(eng: Any, prompts: list[str] = PROMPTS) -> str:
    """The one-line refusal of a trial whose accuracy does not come from its drafted output."""
    reason = draft_refusal(judged(eng, prompts), scored_as_generated=False)
    assert reason is not None
    return reason


def test_a_tie_within_the_measured_shift_passes_and_is_counted(tmp_path: Path) -> None:
    margins = {PROMPTS[0]: 0.004, PROMPTS[1]: -0.006}  # the second: a one-token pass prefers the drafted token
    eng = tie_engine(tmp_path, margin=margins, shift={VERIFY: 0.01}, prompts=tuple(PROMPTS[:2]))
    check = judged(eng)
    assert not check.lossless and check.prompts == 3
    assert check.tied_prompts == 2 and check.max_tie_margin == pytest.approx(0.006)
    assert check.detail.startswith("floating-point tie: prompt 0 token "), check.detail
    assert "prompt 1 token " in check.detail and "prompt 2 " not in check.detail
    assert "2 of 3 prompts tied" in check.detail


def test_a_margin_beyond_the_measured_shift_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1.5x what pass shape moves these two tokens' margin: not a tie, however far pass shape moves
    other logits (a vocabulary-wide shift, or twice the measured one, would let it through)."""
    eng = tie_engine(tmp_path, default_margin=0.015, shift={VERIFY: 0.01}, noise=0.4)
    check = judged(eng)
    assert check.diverged == 3 and check.divergence == 1.0 and check.tied_prompts == 0
    # The fake's plain greedy output does not change with the batch size: measured, 0 of 3.
    assert check.self_diverged == 0 and check.self_batch == 3 and check.self_divergence == 0.0
    # Ranked where a generative task scores the drafted output; refused otherwise, in one line
    # naming the docs section; each prompt's evidence in the trial log (its stderr).
    assert draft_refusal(check, scored_as_generated=True) is None
    reason = draft_refusal(check, scored_as_generated=False)
    assert reason is not None and reason.startswith("draft is not lossless: 3 of 3 prompts")
    assert "\n" not in reason and reason.endswith("(the trial log names each; " + DOCS + ")")
    assert (REPO / DOCS.partition("#")[0]).is_file()
    log = capsys.readouterr().err
    assert "prompt 0 token " in log and "margin +0.015, tolerance 0.01 (4 tokens of 1 sequence moves it 0.01)" in log
    assert "beyond what pass shape moves them" in log


def test_every_differing_prompt_is_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first differing prompt is a tie; the second is not, and fails the trial."""
    margins = {PROMPTS[0]: 0.005, PROMPTS[1]: 0.02}
    eng = tie_engine(tmp_path, margin=margins, shift={VERIFY: 0.01}, prompts=tuple(PROMPTS[:2]))
    check = judged(eng)
    assert check.diverged == 1 and check.tied_prompts == 1
    assert "1 of 3 prompts part from plain greedy decoding beyond a tie (floating-point tie: prompt 0" in check.detail
    assert "1 of 3 prompts differ from plain greedy decoding beyond a tie" in refused(tie_engine(
        tmp_path, margin=margins, shift={VERIFY: 0.01}, prompts=tuple(PROMPTS[:2])))  # fmt: skip
    log = capsys.readouterr().err
    assert "prompt 1 token " in log and "margin +0.02, tolerance 0.01" in log and "prompt 0 token" not in log, log


def test_the_tolerance_is_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shift = {VERIFY: 3 * TIE_CAP}  # a pass shape that moves the margin far
    check = judged(tie_engine(tmp_path, default_margin=0.8 * TIE_CAP, shift=shift))
    assert check.tied_prompts == 3 and check.max_tie_margin == pytest.approx(0.8 * TIE_CAP)
    assert "draft is not lossless" in refused(tie_engine(tmp_path, default_margin=1.2 * TIE_CAP, shift=shift))
    assert re.search(rf"tolerance {TIE_CAP:.3g} .*, beyond the cap of {TIE_CAP}", capsys.readouterr().err)


def test_only_pass_shapes_the_engine_runs_set_the_tolerance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole sequence in one pass (0, 1) moves the margin, but this engine's drafts never run it."""
    shift = {(0, 1): 0.05}
    assert "draft is not lossless" in refused(tie_engine(tmp_path, shift=shift))
    assert "margin +0.01, tolerance 0 (4 tokens of 1 sequence moves it 0)" in capsys.readouterr().err
    check = judged(tie_engine(tmp_path, shift=shift, shapes=((4, 1), (0, 1))))  # an engine whose drafts run it
    assert check.tied_prompts == 3 and "1 whole sequence moves it 0.05" in check.detail


def test_at_batch_above_one_the_reference_is_the_batch_of_one_token_passes(tmp_path: Path) -> None:
    """At batch 2 the reference is (1, 2), and passes of one sequence count (the fake's default shapes)."""
    eng = tie_engine(tmp_path, batch=2, shift={(4, 1): 0.02, (1, 1): 0.5})  # (1, 1): not a shape it runs
    assert eng.verify_pass_shapes() == ((4, 2), (4, 1))
    check = judged(eng, PROMPTS[:2])
    assert check.tied_prompts == 2 and "4 tokens of 1 sequence moves it 0.02" in check.detail


def test_a_tied_trial_is_marked_on_the_frontier_and_warned_about_on_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the check records reaches the user: `pareto` marks the row, `export` warns and says so."""
    import optuna
    import yaml
    from rich.console import Console
    from typer.testing import CliRunner

    from autoinfer import cli
    from autoinfer.config import load_config
    from autoinfer.record import Provenance, TrialRecord

    objectives = [{"name": "tokens_per_s"}, {"name": "peak_memory_gb", "direction": "minimize"}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(fake_config(tmp_path, accuracy={"tasks": []}, objectives=objectives)))
    cfg = load_config(path)
    study = optuna.create_study(study_name=cfg.study_name, storage=cfg.search.storage, directions=["maximize"] * 2)
    for draft, tps, mem, lossless, check, tied in (
        ("none", 10.0, 1.0, None, "", {}),
        ("model:tie", 20.0, 2.0, False, "floating-point tie: prompt 0 token 5 (drafted 9, plain 7): ...",
         {"draft_tied_prompts": 1.0, "draft_tie_margin": 0.01}),
    ):  # fmt: skip
        prov = Provenance("id", "estimated:cpu-time", "", "", "rss", 1, 3, 2, 0, 6, "", lossless, check)
        rec = TrialRecord(
            TrialPoint("fake", "fp32", draft, 1, "cpu:1"), {"tokens_per_s": tps, "peak_memory_gb": mem, **tied}, prov
        )
        study.add_trial(optuna.trial.create_trial(values=[tps, -mem], user_attrs=rec.to_attrs()))

    out = Console(record=True, width=200)
    out.print(cli._frontier_table(study, cfg, "frontier"))
    rows = out.export_text().splitlines()
    assert "†" in next(r for r in rows if "model:tie" in r) and "†" not in next(r for r in rows if " none " in r)
    caption = " ".join(r.strip() for r in rows)
    assert "† drafted output parted from plain greedy decoding at floating-point ties, or beyond them" in caption

    monkeypatch.setattr("autoinfer.tracking.mlflow_tracker.trial_run_id", lambda config, number: None)
    r = CliRunner().invoke(cli.app, ["export", str(path), "--trial", "1"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "trial 1's drafted output was not identical to plain greedy" in r.stderr
    measured = yaml.safe_load(r.stdout)["measured"]
    assert measured["draft_lossless"] is False and measured["draft_check"].startswith("floating-point tie")
    assert "on 1 of 3 prompts, up to 0.01 logits apart" in measured["warnings"][0]
    plain = CliRunner().invoke(cli.app, ["export", str(path), "--trial", "0"])
    assert plain.exit_code == 0 and "drafted output" not in plain.stderr
    assert yaml.safe_load(plain.stdout)["measured"]["warnings"] == []
