"""What this machine can run a config on: engines installed, hardware targets, memory, energy meters.

Importability is checked with importlib.util.find_spec, so nothing heavy is imported: torch only
where a GPU is present and the installed torch is not a CPU build, llama_cpp only to ask whether
the build can offload (engines.hardware_here, cached).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata

from autoinfer.hardware import cpu_model, gpus, memory_gb

# The engines init knows how to size. Plugin engines (AUTOINFER_PLUGINS) are left to the user:
# their memory needs and levels are not known here.
BUILTIN_ENGINES = ("transformers", "llama.cpp", "vllm")


@dataclass(frozen=True)
class EngineHere:
    name: str
    usable: bool
    kinds: tuple[str, ...]  # hardware kinds it runs on as installed (cpu, cuda)
    why: str  # why it is not usable, or what it leaves out


@dataclass(frozen=True)
class TargetHere:
    name: str  # cpu:N or cuda:I
    memory_bytes: int  # memory free for a trial's weights and caches on it now
    meter: str  # measured:rapl, measured:nvml or estimated:cpu-time
    meter_why: str


@dataclass(frozen=True)
class MachineFacts:
    cpu: str
    cores: int
    ram_total: int
    ram_available: int
    engines: tuple[EngineHere, ...]
    targets: tuple[TargetHere, ...]

    def engine(self, name: str) -> EngineHere:
        return next(e for e in self.engines if e.name == name)


def available_ram() -> int:
    """MemAvailable (what the kernel can hand out without swapping), else total memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = memory_gb()
    return int(total * 1e9) if total == total else 0  # NaN where unknown


def _gpu_free(index: int) -> int:
    try:
        import pynvml

        from autoinfer.gpu import nvml_handle

        handle, _ = nvml_handle(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
    except Exception:  # noqa: BLE001 - no NVML answer: treat the device as having no room
        return 0


def _torch_cuda() -> bool:
    """Whether the installed torch can use CUDA; a +cpu wheel is known not to without importing it."""
    try:
        if "+cpu" in metadata.version("torch"):
            return False
    except metadata.PackageNotFoundError:
        return False
    import torch

    return bool(torch.cuda.is_available())


def engine_here(name: str, have_gpu: bool) -> EngineHere:
    from autoinfer.engines import ENGINES

    spec = ENGINES.get(name)
    if importlib.util.find_spec(spec.package) is None:
        return EngineHere(name, False, (), f"not installed ({spec.install_hint})")
    kinds, why = spec.hardware_here()
    kinds = tuple(k for k in kinds if k in ("cpu", "cuda"))
    if "cuda" in kinds and (not have_gpu or (name == "transformers" and not _torch_cuda())):
        kinds = tuple(k for k in kinds if k != "cuda")
        why = why or ("no GPU here" if not have_gpu else "the installed torch has no CUDA")
    return EngineHere(name, True, kinds, why)


def machine_facts() -> MachineFacts:
    from autoinfer.config import EnergyConfig
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.spaces import HardwareSpec

    # The cores this process may run on (a container's cpuset can be smaller than the machine):
    # vLLM refuses a cpu:N above it.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ram = available_ram()
    names = gpus()
    watts = EnergyConfig().cpu_watts_per_core
    targets = []
    for name, room in [(f"cpu:{cores}", ram)] + [(f"cuda:{i}", _gpu_free(i)) for i in range(len(names))]:
        meter, why = meter_for(HardwareSpec.parse(name), watts)
        targets.append(TargetHere(name, room, meter.source, why))
    total = memory_gb()
    return MachineFacts(
        cpu=cpu_model(),
        cores=cores,
        ram_total=int(total * 1e9) if total == total else ram,
        ram_available=ram,
        engines=tuple(engine_here(n, bool(names)) for n in BUILTIN_ENGINES),
        targets=tuple(targets),
    )
