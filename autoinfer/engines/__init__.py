"""Inference engines behind one small interface; importing this registers the built-in ones.

Engines from other packages register themselves the same way when their module is imported:
name it in the AUTOINFER_PLUGINS environment variable (comma-separated module names), which trial
processes inherit, so a plugin engine runs in them too.
"""

from __future__ import annotations

import functools
import importlib
import os

from autoinfer.engines.base import ENGINES, Engine, EngineSpec, GenerationResult, TrialPoint
from autoinfer.engines.transformers_engine import resolved_int_backend
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
        version_packages=("torch", "transformers", "optimum-quanto", "torchao"),
        accuracy_settings=lambda config, point: {"int_backend": resolved_int_backend(config, point)},
    )
)


@functools.lru_cache(maxsize=1)
def _llamacpp_hardware() -> tuple[tuple[str, ...], str]:
    """cuda only where the installed build can offload (the pinned CPU build cannot)."""
    try:
        import llama_cpp
    except ImportError:
        return ("cpu", "cuda"), ""  # preflight reports the missing package itself
    if llama_cpp.llama_supports_gpu_offload():
        return ("cpu", "cuda"), ""
    return ("cpu",), (
        "the installed llama-cpp-python cannot offload to a GPU (a CPU build; "
        "scripts/build_llama_cpp.sh builds the CUDA variant where nvcc and a GPU are present)"
    )


ENGINES.register("llama.cpp")(
    EngineSpec(
        name="llama.cpp",
        module="autoinfer.engines.llamacpp_engine",
        quantizations=LLAMACPP_LEVELS,
        draft_kinds=("none", "prompt_lookup", "model"),
        hardware_kinds=("cpu", "cuda"),
        draft_max_batch=4096,  # every sequence of a batch drafts for itself
        draft_levels=True,
        package="llama_cpp",
        install_hint="run scripts/build_llama_cpp.sh (builds llama-cpp-python with pinned CPU flags)",
        version_packages=("llama_cpp_python",),
        usable_hardware=_llamacpp_hardware,
    )
)


import autoinfer.engines.vllm  # noqa: E402, F401 - registers "vllm" (vLLM itself is imported by trials only)


def load_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("AUTOINFER_PLUGINS", "").split(","))):
        importlib.import_module(module)


load_plugins()

__all__ = ["ENGINES", "Engine", "EngineSpec", "GenerationResult", "TrialPoint"]
