"""The contract every engine must pass, run here on a tiny random llama.

Engines are listed in ENGINE_CASES; an engine whose optional dependency is missing is skipped
with the reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.errors import TrialError
from tests.conftest import base_config

ENGINE_CASES = [
    ("transformers", "fp32", "none", 2),
    ("transformers", "bf16", "none", 3),
    ("transformers", "int8", "none", 2),
    ("transformers", "int4", "none", 1),
    ("transformers", "fp32", "prompt_lookup:2", 1),
    ("transformers", "fp32", "early_exit:2", 1),
]


def make(model_dir: Path, tmp: Path, engine: str, quant: str, draft: str, batch: int) -> Any:
    cfg = parse_config(base_config(model_dir, tmp), base_dir=str(tmp))
    point = TrialPoint(engine=engine, quantization=quant, draft=draft, batch_size=batch, hardware="cpu:1")
    spec = ENGINES.get(engine)
    eng = spec.load_class()(cfg, point)
    eng.load()
    return eng


@pytest.mark.parametrize(("engine", "quant", "draft", "batch"), ENGINE_CASES)
def test_engine_contract(tiny_model_dir: Path, tmp_path: Path, engine: str, quant: str, draft: str, batch: int) -> None:
    if quant in ("int8", "int4") and importlib.util.find_spec("optimum.quanto") is None:
        pytest.fail("optimum-quanto not installed (a dependency of autoinfer)")
    eng = make(tiny_model_dir, tmp_path, engine, quant, draft, batch)
    prompts = ["Write a haiku about autumn leaves.", "List five fruits.", "Name the planets."][:batch]
    g = eng.generate(prompts, max_new_tokens=12, ignore_eos=True)
    assert len(g.new_tokens) == batch and all(n == 12 for n in g.new_tokens)  # ignore_eos: fixed length
    assert 0 < g.ttft_s <= min(g.latency_s) <= max(g.latency_s) <= g.total_s + 1e-6
    if draft != "none":
        assert g.draft_proposed > 0 and 0 <= g.draft_accepted <= g.draft_proposed
    else:
        assert g.draft_proposed == 0
    g2 = eng.generate(prompts, max_new_tokens=12)
    assert all(1 <= n <= 12 for n in g2.new_tokens)
    assert eng.weight_bytes() > 0
    lm = eng.lm_eval_model()
    from lm_eval.api.instance import Instance

    req = Instance("loglikelihood", doc={}, arguments=("Question: what is a whale?\nAnswer:", " a mammal"), idx=0)
    ((ll, greedy),) = lm.loglikelihood([req])
    assert ll < 0 and isinstance(greedy, bool)
    eng.close()


@pytest.mark.parametrize(("quant", "backend"), [("int8", "optimum-quanto"), ("int8", "torchao"), ("int4", "auto")])
def test_int_backends_run_and_are_recorded(tiny_model_dir: Path, tmp_path: Path, quant: str, backend: str) -> None:
    data = base_config(tiny_model_dir, tmp_path, transformers={"int_backend": backend})
    cfg = parse_config(data, base_dir=str(tmp_path))
    eng = ENGINES.get("transformers").load_class()(cfg, TrialPoint("transformers", quant, "none", 2, "cpu:1"))
    eng.load()
    expected = {"auto": "optimum-quanto"}.get(backend, backend)
    assert eng.info["quant_backend"] == expected
    g = eng.generate(["List five fruits.", "Name the planets."], 6, ignore_eos=True)
    assert g.new_tokens == (6, 6)


def test_torchao_int4_on_cpu_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = base_config(tiny_model_dir, tmp_path, transformers={"int_backend": "torchao"})
    cfg = parse_config(data, base_dir=str(tmp_path))
    eng = ENGINES.get("transformers").load_class()(cfg, TrialPoint("transformers", "int4", "none", 1, "cpu:1"))
    with pytest.raises(TrialError, match="no CPU int4"):
        eng.load()


def test_quantization_shrinks_weight_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    sizes = {q: make(tiny_model_dir, tmp_path, "transformers", q, "none", 1).weight_bytes() for q in ("fp32", "bf16")}
    assert sizes["bf16"] * 2 == pytest.approx(sizes["fp32"], rel=0.01)


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
