"""Energy meters: NVML (GPU counter), RAPL (CPU package counter), or a labelled CPU-time estimate.

Each meter is used as a context manager around the measured work and yields a box whose
`.reading` is a frozen `EnergyReading` once the block exits. `source` always says how the joules
were obtained: `measured:nvml`, `measured:rapl`, or `estimated:cpu-time`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoinfer.spaces.dimensions import HardwareSpec

RAPL_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyReading:
    energy_j: float
    duration_s: float
    source: str  # measured:nvml | measured:rapl | estimated:cpu-time
    detail: str = ""  # what exactly was counted (device, domains, assumed watts)

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else float("nan")


class _Box:
    reading: EnergyReading | None = None


class EnergyMeter(abc.ABC):
    source: str

    @abc.abstractmethod
    def _start(self) -> Any: ...

    @abc.abstractmethod
    def _stop(self, state: Any, duration_s: float) -> EnergyReading: ...

    @contextmanager
    def measure(self) -> Iterator[_Box]:
        box = _Box()
        state = self._start()
        t0 = time.perf_counter()
        yield box
        box.reading = self._stop(state, time.perf_counter() - t0)


class NvmlMeter(EnergyMeter):
    """GPU board energy from NVML's total-energy counter (millijoules since driver load; Volta+)."""

    source = "measured:nvml"

    def __init__(self, index: int) -> None:
        import pynvml  # from nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self.index = index
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # raises where unsupported

    def _start(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def _stop(self, state: int, duration_s: float) -> EnergyReading:
        mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - state
        name = self._nvml.nvmlDeviceGetName(self.handle)
        return EnergyReading(mj / 1000.0, duration_s, self.source, f"GPU {self.index} ({name})")


def rapl_domains(root: Path = RAPL_ROOT) -> list[Path]:
    """Top-level package domains (intel-rapl:N) whose counter this process can read."""
    found = []
    for d in sorted(root.glob("intel-rapl:*")):
        if d.name.count(":") != 1:
            continue  # sub-domains (core, uncore, dram) are already inside the package count
        try:
            int((d / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        found.append(d)
    return found


class RaplMeter(EnergyMeter):
    """CPU package energy from Linux powercap RAPL counters (whole sockets, all processes)."""

    source = "measured:rapl"

    def __init__(self, domains: list[Path]) -> None:
        if not domains:
            raise OSError("no readable RAPL package domain")
        self.domains = domains
        self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]

    def _read(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def _start(self) -> list[int]:
        return self._read()

    def _stop(self, state: list[int], duration_s: float) -> EnergyReading:
        total_uj = 0
        for before, after, wrap in zip(state, self._read(), self.ranges, strict=True):
            total_uj += after - before if after >= before else after + wrap - before  # counter wrapped
        names = ",".join(d.name for d in self.domains)
        return EnergyReading(total_uj / 1e6, duration_s, self.source, f"packages {names}")


class CpuTimeEstimate(EnergyMeter):
    """No counter readable: joules ~= this process's CPU seconds x an assumed watts per busy core."""

    source = "estimated:cpu-time"

    def __init__(self, watts_per_core: float) -> None:
        self.watts_per_core = watts_per_core

    def _start(self) -> float:
        return time.process_time()  # user + system seconds of every thread of this process

    def _stop(self, state: float, duration_s: float) -> EnergyReading:
        cpu_s = time.process_time() - state
        detail = f"{cpu_s:.3f} CPU-s x {self.watts_per_core:g} W/core (assumed)"
        return EnergyReading(cpu_s * self.watts_per_core, duration_s, self.source, detail)


def meter_for(hardware: HardwareSpec, watts_per_core: float) -> tuple[EnergyMeter, str]:
    """The best meter for a target, and why it was chosen (shown by `autoinfer hardware`)."""
    if hardware.kind == "cuda":
        try:
            return NvmlMeter(hardware.index or 0), "NVML total-energy counter"
        except Exception as e:  # noqa: BLE001 - any NVML failure means "no counter"
            reason = f"NVML unavailable ({type(e).__name__}: {e})"
    elif hardware.kind == "cpu":
        domains = rapl_domains()
        if domains:
            return RaplMeter(domains), "RAPL package counters"
        reason = f"no readable RAPL counter under {RAPL_ROOT}"
    else:
        reason = f"no energy counter for {hardware.kind}"
    return CpuTimeEstimate(watts_per_core), f"{reason}; estimating from CPU time"
