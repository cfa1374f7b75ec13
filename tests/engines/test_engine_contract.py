"""The engine contract on the transformers engine (tiny random llama) and the fake engine, plus
transformers-specific behaviour. The llama.cpp engine runs the same contract in test_llamacpp.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, Engine, TrialPoint
from autoinfer.errors import TrialError
from autoinfer.evaluators.lossless import check_lossless
from tests.conftest import base_config, fake_config
from tests.engines.contract import PROMPTS, EngineContract


def make(model_dir: Path, tmp: Path, engine: str, quant: str, draft: str, batch: int, **over: Any) -> Any:
    cfg = parse_config(base_config(model_dir, tmp, **over), base_dir=str(tmp))
    point = TrialPoint(engine=engine, quantization=quant, draft=draft, batch_size=batch, hardware="cpu:1")
    eng = ENGINES.get(engine).load_class()(cfg, point)
    eng.load()
    return eng


class TestTransformersContract(EngineContract):
    drafts = ("prompt_lookup:2", "early_exit:2", "model:SELF")

    @pytest.fixture(autouse=True)
    def _model(self, tiny_model_dir: Path) -> None:
        self.model_dir = tiny_model_dir

    def make(self, tmp_path: Path, draft: str = "none", batch: int = 1) -> Engine:
        draft = draft.replace("SELF", str(self.model_dir))  # the model as its own assistant
        eng: Engine = make(self.model_dir, tmp_path, "transformers", "fp32", draft, batch)
        return eng


class TestFakeContract(EngineContract):
    drafts = ("prompt_lookup:2", "model:any")

    def make(self, tmp_path: Path, draft: str = "none", batch: int = 1) -> Engine:
        cfg = parse_config(fake_config(tmp_path), base_dir=str(tmp_path))
        eng = ENGINES.get("fake").load_class()(cfg, TrialPoint("fake", "fp32", draft, batch, "cpu:1"))
        eng.load()
        return eng


@pytest.mark.parametrize("quant", ["bf16", "int8", "int4"])
def test_every_transformers_quantization_generates(tiny_model_dir: Path, tmp_path: Path, quant: str) -> None:
    eng = make(tiny_model_dir, tmp_path, "transformers", quant, "none", 2)
    g = eng.generate(PROMPTS[:2], 12, ignore_eos=True)
    assert g.new_tokens == (12, 12) and g.target_passes == 11
    assert eng.weight_bytes() > 0


@pytest.mark.parametrize(("quant", "backend"), [("int8", "optimum-quanto"), ("int8", "torchao"), ("int4", "auto")])
def test_int_backends_run_and_are_recorded(tiny_model_dir: Path, tmp_path: Path, quant: str, backend: str) -> None:
    eng = make(tiny_model_dir, tmp_path, "transformers", quant, "none", 2, transformers={"int_backend": backend})
    expected = {"auto": "optimum-quanto"}.get(backend, backend)
    assert eng.info["quant_backend"] == expected
    g = eng.generate(["List five fruits.", "Name the planets."], 6, ignore_eos=True)
    assert g.new_tokens == (6, 6)


def test_torchao_int4_on_cpu_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrialError, match="no CPU int4"):
        make(tiny_model_dir, tmp_path, "transformers", "int4", "none", 1, transformers={"int_backend": "torchao"})


def test_quantization_shrinks_weight_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    sizes = {q: make(tiny_model_dir, tmp_path, "transformers", q, "none", 1).weight_bytes() for q in ("fp32", "bf16")}
    assert sizes["bf16"] * 2 == pytest.approx(sizes["fp32"], rel=0.01)


def test_early_exit_draft_reads_only_its_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    eng = make(tiny_model_dir, tmp_path, "transformers", "fp32", "early_exit:2", 1)
    full, early = eng.weight_bytes(), eng.draft_weight_bytes()
    assert 0 < early < full  # 2 of the 4 layers, plus the tied embedding as lm_head


def test_early_exit_beyond_depth_is_a_clear_trial_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrialError, match="early_exit:9 needs fewer layers"):
        make(tiny_model_dir, tmp_path, "transformers", "fp32", "early_exit:9", 1)


def test_missing_draft_model_is_a_clear_trial_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrialError, match="cannot be loaded"):
        make(tiny_model_dir, tmp_path, "transformers", "fp32", f"model:{tmp_path}/no-such-model", 1)


def test_draft_model_reports_acceptance(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The model as its own assistant: greedy drafts match greedy verification almost always.
    eng = make(tiny_model_dir, tmp_path, "transformers", "fp32", f"model:{tiny_model_dir}", 1)
    g = eng.generate(["List five fruits."], max_new_tokens=16, ignore_eos=True)
    assert g.draft_proposed > 0
    assert g.draft_accepted / g.draft_proposed > 0.8


def test_a_tie_only_a_one_sequence_pass_shows_is_still_a_tie(tmp_path: Path) -> None:
    """A drafted batch's passes hold any number of tokens; a kernel may round the tokens past a
    multiple of 4 differently (Gemma-3 Q4_K_M, batch 8), which passes of B copies never show."""
    cfg = parse_config(fake_config(tmp_path), base_dir=str(tmp_path))
    eng = ENGINES.get("fake").load_class()(cfg, TrialPoint("fake", "fp32", "model:tie-batch", 2, "cpu:1"))
    eng.load()
    drafted = eng.generate(PROMPTS[:2], 16, ignore_eos=True).token_ids
    assert drafted != eng.generate(PROMPTS[:2], 16, ignore_eos=True, draft=False).token_ids
    check = check_lossless(eng, PROMPTS[:2], drafted)
    assert not check.lossless and check.detail.startswith("floating-point tie"), check.detail
    assert check.tied_prompts == 2 and check.max_tie_margin == pytest.approx(0.01)


def test_engines_name_the_pass_shapes_their_drafts_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Assisted generation's first pass takes the whole prompt, at batch 1 only, and the history it
    accepts keeps the KV cache its verification passes wrote (-width)."""
    eng = make(tiny_model_dir, tmp_path, "transformers", "fp32", "prompt_lookup:2", 1)
    w = eng.draft_width + 1
    assert eng.verify_pass_shapes() == ((w, 1), (0, 1), (-w, 1))


def test_a_chunked_history_is_fed_in_passes_of_that_width(tiny_model_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    eng = make(tiny_model_dir, tmp_path, "transformers", "fp32", "prompt_lookup:2", 1)
    widths: list[int] = []
    hook = eng.model.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    prefix = [5, 6, 7, 8, 9, 10, 11]
    try:
        chunked = eng.next_token_logits(PROMPTS[0], prefix, -3)
    finally:
        hook.remove()
    assert widths[1:] == [3, 3, 1]  # after the prompt's pass: the 7 tokens of history, 3 at a time
    plain = eng.next_token_logits(PROMPTS[0], prefix, 1)
    assert np.allclose(chunked, plain, atol=1e-3)  # fp32: the same logits up to rounding
