"""The llama.cpp engine's registration (llama-cpp-python, built from source by
scripts/build_llama_cpp.sh with pinned CPU flags).

`engine.py` is the engine, `runtime.py` the llama.cpp context it drives, `lm.py` its lm-eval
adapter, `levels.py` the GGUF quantization levels, `convert.py` HF checkpoint -> GGUF, and
`export.py` the llama-server command of an exported trial. Importing this package registers the
engine without importing llama_cpp.
"""

from __future__ import annotations

import functools

from autoinfer.engines.base import ENGINES, EngineSpec
from autoinfer.spaces.dimensions import LLAMACPP_LEVELS


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


SPEC = ENGINES.register("llama.cpp")(
    EngineSpec(
        name="llama.cpp",
        module="autoinfer.engines.llamacpp.engine",
        quantizations=LLAMACPP_LEVELS,
        draft_kinds=("none", "prompt_lookup", "model"),
        hardware_kinds=("cpu", "cuda"),
        draft_max_batch=4096,  # every sequence of a batch drafts for itself
        draft_levels=True,
        package="llama_cpp",
        install_hint="run scripts/build_llama_cpp.sh (builds llama-cpp-python with pinned CPU flags)",
        version_packages=("llama_cpp_python",),
        usable_hardware=_llamacpp_hardware,
        export="autoinfer.engines.llamacpp.export:runtime",
    )
)
