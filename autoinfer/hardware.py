"""What this machine offers: hardware targets, their energy meters, and a fingerprint for MLflow."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from autoinfer.spaces.dimensions import HardwareSpec


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return float("nan")


def gpus() -> list[str]:
    """CUDA device names through NVML (no torch import), empty where there is no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())
        ]
    except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU: all mean "none"
        return []


def mps_available() -> bool:
    if platform.system() != "Darwin":
        return False
    import torch

    return bool(torch.backends.mps.is_available())


def available_targets() -> list[str]:
    n = os.cpu_count() or 1
    targets = ["cpu"] + [f"cpu:{i}" for i in range(1, n + 1)]
    targets += [f"cuda:{i}" for i in range(len(gpus()))]
    if mps_available():
        targets.append("mps")
    return targets


def target_problem(hw: HardwareSpec) -> str | None:
    """Why a target cannot run here, or None when it can."""
    if hw.kind == "cpu":
        n = os.cpu_count() or 1
        if hw.index is not None and hw.index > n:
            return f"{hw} asks for {hw.index} threads but this machine has {n} cores"
        return None
    if hw.kind == "cuda":
        found = gpus()
        if (hw.index or 0) >= len(found):
            return f"{hw} is not present (this machine has {len(found)} CUDA device(s))"
        return None
    return None if mps_available() else "mps is not available on this machine"


def fingerprint() -> dict[str, Any]:
    libs = {}
    for name in ("torch", "transformers", "lm_eval", "optuna", "mlflow", "optimum-quanto", "llama_cpp_python", "vllm"):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(memory_gb(), 1),
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{f"lib.{k}": v for k, v in libs.items()},
    }


def machine_of_trial() -> dict[str, Any]:
    """What a trial records of the machine it ran on (a study may span several)."""
    import socket

    return {"host": socket.gethostname(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "memory_gb": round(memory_gb(), 1), "gpus": gpus()}  # fmt: skip
