"""Inference engines behind one small interface; importing this registers the built-in ones."""

from __future__ import annotations

from autoinfer.engines.base import ENGINES, Engine, EngineSpec, GenerationResult, TrialPoint
from autoinfer.spaces.dimensions import LLAMACPP_LEVELS, TRANSFORMERS_QUANTIZATIONS

ENGINES.register("transformers")(
    EngineSpec(
        name="transformers",
        module="autoinfer.engines.transformers_engine",
        quantizations=TRANSFORMERS_QUANTIZATIONS,
        draft_kinds=("none", "prompt_lookup", "early_exit", "model"),
        hardware_kinds=("cpu", "cuda", "mps"),
        draft_max_batch=1,
        # fp16 matmuls on CPU run through slow fallback kernels; bf16 is the CPU half format.
        unsupported={"cpu": ("fp16",), "mps": ("bf16", "int4")},
    )
)

ENGINES.register("llama.cpp")(
    EngineSpec(
        name="llama.cpp",
        module="autoinfer.engines.llamacpp_engine",
        quantizations=LLAMACPP_LEVELS,
        draft_kinds=("none", "prompt_lookup", "model"),
        hardware_kinds=("cpu", "cuda"),
        draft_max_batch=1,
        draft_model_format="gguf",
        package="llama_cpp",
        install_hint="run scripts/build_llama_cpp.sh (builds llama-cpp-python with pinned CPU flags)",
    )
)

__all__ = ["ENGINES", "Engine", "EngineSpec", "GenerationResult", "TrialPoint"]
