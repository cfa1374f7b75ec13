"""The search loop on the fake engine: tracking agreement, failures, resume, interruption, and
refusing to mix numbers measured under different setups."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autoinfer.config import parse_config
from autoinfer.errors import ConfigError
from autoinfer.metrics import METRICS
from autoinfer.record import record_of
from autoinfer.search.pareto import measured_trials, pareto_trials
from autoinfer.search.study import logs_dir, open_study, run_search
from tests.conftest import base_config, fake_config


def children(cfg: Any) -> dict[int, Any]:
    client = MlflowClient(cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {int(r.data.tags["autoinfer.trial"]): r for r in runs if "autoinfer.trial" in r.data.tags}


def config(tmp: Path, **over: Any) -> Any:
    return parse_config(fake_config(tmp, **over), base_dir=str(tmp))


NO_ACC: dict[str, Any] = {"accuracy": {"tasks": []}, "objectives": [{"name": "tokens_per_s"}]}


def test_search_tracks_every_trial_and_the_frontier(tmp_path: Path) -> None:
    cfg = config(tmp_path, constraints=["tokens_per_s >= 1"], search={"trials": 4, "sampler": "grid"})
    study, tracker = run_search(cfg)
    measured = measured_trials(study)
    assert len(measured) == 4
    runs = children(cfg)
    assert set(runs) == {t.number for t in study.trials}  # MLflow and Optuna agree trial for trial
    for m in measured:
        rec = m.record
        assert set(rec.metrics) <= set(METRICS)  # every emitted metric is declared
        r = runs[m.number].data
        assert r.metrics["tokens_per_s"] == rec.metrics["tokens_per_s"] > 0
        assert r.tags["energy_source"] == rec.provenance.energy_source == "estimated:cpu-time"
        assert r.params["quantization"] == rec.point.quantization
        assert 0 < rec.metrics["roofline_pct"] < 100 and rec.metrics["peak_memory_gb"] > 0
        assert rec.provenance.prompts == 16 and rec.provenance.sequences == 2 * 16  # the whole set, twice
        assert "constraint.tokens_per_s_min_violation" in r.metrics
        assert rec.accuracy is not None and rec.accuracy.samples == 4 and r.metrics["accuracy_samples"] == 4
        if rec.point.draft != "none":
            assert rec.provenance.draft_lossless is True and "identical to plain greedy" in rec.provenance.draft_check
            assert 0 <= rec.metrics["acceptance_rate"] <= 1
        else:
            assert rec.provenance.draft_lossless is None and "acceptance_rate" not in rec.metrics
    # the accuracy of a key (here: the quantization) is measured once, then reused with a citation
    by_quant: dict[str, list[Any]] = {}
    for m in measured:
        by_quant.setdefault(m.record.point.quantization, []).append(m)
    for group in by_quant.values():
        fresh = [m for m in group if m.record.accuracy and m.record.accuracy.reused_from_trial is None]
        assert len(fresh) == 1
        for m in group:
            assert m.record.accuracy and m.record.accuracy.key == fresh[0].record.accuracy.key
    client = MlflowClient(cfg.mlflow.tracking_uri)
    arts = {a.path for a in client.list_artifacts(tracker.parent_id, "pareto")}
    assert {"pareto/frontier.csv", "pareto/frontier.json", "pareto/pareto.png", "pareto/pareto.html"} <= arts
    assert any(r.data.tags.get("pareto") == "true" for r in runs.values())
    parent = client.get_run(tracker.parent_id).data
    assert "machine.cpu" in parent.tags and parent.params["search.trials"] == "4"
    # Every measured trial in the table, with its draft length and how long it took.
    table = Path(client.download_artifacts(tracker.parent_id, "pareto/trials.csv", str(tmp_path)))
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["trial"]) for r in rows) == sorted(m.number for m in measured)
    assert all(float(r["duration_s"]) > 0 and r["draft_tokens"] != "" for r in rows)
    # ... and where that time went: accuracy only where it was evaluated, not where it was reused.
    fresh_acc = {m.number for m in measured if m.record.accuracy and m.record.accuracy.reused_from_trial is None}
    assert all((float(r["accuracy_s"]) > 0) == (int(r["trial"]) in fresh_acc) for r in rows)
    for m in measured:
        stages = runs[m.number].data.metrics
        assert stages["time.measure_s"] == pytest.approx(m.record.metrics["wall_s"], abs=1e-3)
        assert stages["time.spawn_s"] > 0 and stages["time.load_s"] > 0 and "time.warmup_s" in stages


def test_a_lossy_draft_fails_its_trial_and_a_rounding_tie_is_recorded(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, space={"quantization": ["fp32"], "draft": ["none", "model:lossy", "model:tie", "model:tie-single"],
                         "batch_size": [1]},
        search={"trials": 4, "sampler": "grid"}, **NO_ACC,
    )  # fmt: skip
    study, _ = run_search(cfg)
    by_draft = {t.user_attrs["point"]["draft"]: t for t in study.trials}
    bad = by_draft["model:lossy"]
    reason = bad.user_attrs["fail_reason"]
    assert bad.state == TrialState.FAIL and "draft is not lossless" in reason
    # one line pointing to the docs; each differing prompt's evidence in the trial's log
    assert "\n" not in reason and reason.endswith("(the trial log names each; docs/drafts.md#the-lossless-check)")
    assert "beyond what pass shape moves them" in (logs_dir(cfg) / f"trial-{bad.number}.log").read_text()
    assert by_draft["none"].state == TrialState.COMPLETE
    tie = record_of(by_draft["model:tie"])  # measured, kept, and not called lossless
    assert tie is not None and tie.provenance.draft_lossless is False
    assert tie.provenance.draft_check.startswith("floating-point tie: prompt ")
    # A tie where even a one-token pass prefers the drafted token (plain decoding, with other rows
    # beside it, rounded the other way): still a tie, not a broken draft.
    flipped = record_of(by_draft["model:tie-single"])
    assert flipped is not None and flipped.provenance.draft_check.startswith("floating-point tie: prompt ")
    run = children(cfg)[bad.number]
    assert run.info.status == "FAILED" and "not lossless" in run.data.tags["autoinfer.fail_reason"]


def test_resume_neither_loses_nor_reruns(tmp_path: Path) -> None:
    study, _ = run_search(config(tmp_path, search={"trials": 2, "sampler": "random"}, **NO_ACC))
    before = {t.number: t.datetime_complete for t in study.trials}
    second = config(tmp_path, search={"trials": 3, "sampler": "random"}, **NO_ACC)
    study, _ = run_search(second)
    assert len(measured_trials(study)) == 3
    for number, done in before.items():
        assert study.trials[number].datetime_complete == done  # untouched
    assert set(children(second)) == {t.number for t in study.trials}


def test_interrupted_trial_is_failed_and_requeued(tmp_path: Path) -> None:
    cfg = config(tmp_path, search={"trials": 1, "sampler": "random"}, **NO_ACC)
    study = open_study(cfg)
    # A trial left RUNNING by a search process that died (pid that cannot exist).
    dead = study.ask({"quantization": optuna.distributions.CategoricalDistribution(["fp32", "int8"])})
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")
    assert not os.path.exists(f"/proc/{2**22 + 12345}")
    study, _ = run_search(cfg)
    old = study.trials[dead.number]
    assert old.state == TrialState.FAIL and old.user_attrs["interrupted"] is True
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params["quantization"] == old.params["quantization"]


def test_a_changed_setup_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    run_search(config(tmp_path, search={"trials": 2, "sampler": "grid"}, **NO_ACC))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    n_trials = len(optuna.load_study(study_name="t", storage=storage).trials)
    n_runs = len(children(config(tmp_path, **NO_ACC)))
    for over, field in [
        ({"workload": {"max_new_tokens": 9}}, "workload.max_new_tokens"),
        ({"workload": {"prompt_count": 8}}, "workload.prompts"),
        ({"transformers": {"int_backend": "torchao"}}, "transformers.int_backend"),
        ({"energy": {"cpu_watts_per_core": 5}}, "energy.cpu_watts_per_core"),
    ]:
        changed = config(tmp_path, search={"trials": 3, "sampler": "grid"}, **NO_ACC, **over)
        with pytest.raises(ConfigError) as e:
            run_search(changed)
        assert e.value.where == field and "--fresh" in str(e.value) and "\n" not in str(e.value)
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == n_trials
    assert len(children(config(tmp_path, **NO_ACC))) == n_runs


def test_a_growing_space_measures_only_the_new_points(tmp_path: Path) -> None:
    space = {"quantization": ["fp32"], "draft": ["none"], "batch_size": [1]}
    study, _ = run_search(config(tmp_path, space=space, search={"trials": 10, "sampler": "grid"}, **NO_ACC))
    first = {m.number: m.record.point for m in measured_trials(study)}
    assert len(first) == 1
    grown = {**space, "batch_size": [1, 2], "quantization": ["fp32", "int8"]}
    study, _ = run_search(config(tmp_path, space=grown, search={"trials": 10, "sampler": "grid"}, **NO_ACC))
    points = [m.record.point for m in measured_trials(study)]
    assert len(points) == len(set(points)) == 4  # the old point kept, three new ones, none twice
    assert all(study.trials[n].user_attrs["point"] == p.as_dict() for n, p in first.items())


def test_fresh_starts_a_study_of_its_own_and_resumes_it(tmp_path: Path) -> None:
    run_search(config(tmp_path, search={"trials": 1, "sampler": "grid"}, **NO_ACC))
    changed = config(tmp_path, workload={"max_new_tokens": 6}, search={"trials": 1, "sampler": "grid"}, **NO_ACC)
    study, tracker = run_search(changed, fresh=True)
    assert study.study_name.startswith("t-") and study.study_name == tracker.study_name
    again, _ = run_search(changed.model_copy(update={"search": changed.search.model_copy(update={"trials": 2})}),
                          fresh=True)  # fmt: skip
    assert again.study_name == study.study_name and len(measured_trials(again)) == 2


def test_a_changed_constraint_reranks_old_trials(tmp_path: Path) -> None:
    cfg = config(tmp_path, search={"trials": 3, "sampler": "grid"}, **NO_ACC)
    study, _ = run_search(cfg)
    best = max(measured_trials(study), key=lambda m: m.record.metrics["tokens_per_s"])
    assert [m.number for m in pareto_trials(study, cfg)] == [best.number]
    limit = best.record.metrics["tokens_per_s"] * 0.999
    strict = config(
        tmp_path, constraints=[f"tokens_per_s <= {limit}"], search={"trials": 3, "sampler": "grid"}, **NO_ACC
    )
    front = pareto_trials(study, strict)
    assert front and best.number not in [m.number for m in front]  # no re-measurement needed
    run_search(strict)  # the budget is met: the re-run only re-ranks and re-tags
    tags = {n: r.data.tags["pareto"] for n, r in children(strict).items()}
    assert tags[best.number] == "false" and {tags[m.number] for m in front} == {"true"}


def test_int8_on_another_backend_is_another_study_with_its_own_accuracy(tiny_model_dir: Path, tmp_path: Path) -> None:
    def cfg(backend: str) -> Any:
        space = {"quantization": ["int8"], "draft": ["none"], "batch_size": [1], "hardware": ["cpu:1"]}
        data = base_config(tiny_model_dir, tmp_path, transformers={"int_backend": backend}, space=space,
                           workload={"max_new_tokens": 4, "repeats": 1, "warmup": 0, "prompt_count": 2},
                           search={"trials": 1, "sampler": "grid"})  # fmt: skip
        return parse_config(data, base_dir=str(tmp_path))

    first, _ = run_search(cfg("optimum-quanto"))
    with pytest.raises(ConfigError, match=r"transformers\.int_backend"):
        run_search(cfg("torchao"))
    second, _ = run_search(cfg("torchao"), fresh=True)
    recs = [record_of(s.trials[-1]) for s in (first, second)]
    assert [r.provenance.engine["quant_backend"] for r in recs if r] == ["optimum-quanto", "torchao"]
    assert recs[0] and recs[1] and recs[0].accuracy and recs[1].accuracy
    assert recs[0].accuracy.key != recs[1].accuracy.key  # so the second could never reuse the first's
