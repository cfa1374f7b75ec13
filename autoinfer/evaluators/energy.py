"""Energy meters: NVML (GPU counter), RAPL (CPU package counters), or a labelled CPU-time estimate.

Each meter is used as a context manager around the measured work and yields a box whose
`.reading` is a frozen `EnergyReading` once the block exits. `source` always says how the joules
were obtained: `measured:nvml`, `measured:rapl`, or `estimated:cpu-time`. A window that reads 0 J
fails the trial: an efficiency divided by zero joules would rank first and mean nothing.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoinfer.errors import TrialError
from autoinfer.spaces.dimensions import HardwareSpec

RAPL_ROOT = Path("/sys/class/powercap")
# RAPL counters wrap at max_energy_range_uj (~262 kJ on Intel: ~11 min at 400 W; AMD's can be
# smaller). Sampling every few seconds sees at most one wrap between reads, however long the window.
RAPL_POLL_S = 5.0


@dataclass(frozen=True)
class EnergyReading:
    energy_j: float
    duration_s: float
    source: str  # measured:nvml | measured:rapl | estimated:cpu-time
    detail: str = ""  # what exactly was counted (device, domains, assumed watts)
    inputs: dict[str, float] = field(default_factory=dict)  # an estimate's formula inputs, by name

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else float("nan")


class EnergyBox:
    reading: EnergyReading | None = None


class EnergyMeter(abc.ABC):
    source: str

    @abc.abstractmethod
    def _start(self) -> Any: ...

    @abc.abstractmethod
    def _stop(self, state: Any, duration_s: float) -> EnergyReading: ...

    @contextmanager
    def measure(self) -> Iterator[EnergyBox]:
        box = EnergyBox()
        state = self._start()
        t0 = time.perf_counter()
        try:
            yield box
        except BaseException:
            self._stop(state, time.perf_counter() - t0)  # release pollers, then let it propagate
            raise
        reading = self._stop(state, time.perf_counter() - t0)
        if not reading.energy_j > 0:
            raise TrialError(
                f"energy meter {reading.source} read {reading.energy_j:g} J over {reading.duration_s:.2f} s"
                f" ({reading.detail}): no energy figure to rank by"
            )
        box.reading = reading


class NvmlMeter(EnergyMeter):
    """GPU board energy from NVML's total-energy counter (millijoules since driver load; Volta+).

    The board counter includes the GPU's idle power for the whole window, not only the work's.
    """

    source = "measured:nvml"

    def __init__(self, index: int) -> None:
        import pynvml  # from nvidia-ml-py

        from autoinfer.gpu import nvml_handle

        self._nvml = pynvml
        self.handle, self.gpu = nvml_handle(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # raises where unsupported

    def _start(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def _stop(self, state: int, duration_s: float) -> EnergyReading:
        mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - state
        g = self.gpu
        detail = f"cuda:{g.cuda_index} = {g.name} {g.uuid} (PCI {g.pci_bus_id}, matched by {g.how}); board incl. idle"
        return EnergyReading(mj / 1000.0, duration_s, self.source, detail)


@dataclass(frozen=True)
class RaplDomain:
    path: Path
    name: str  # package-N or dram
    range_uj: int  # the counter wraps back to 0 here


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def rapl_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """The readable RAPL domains whose sum is the CPU's energy: every `package-N`, plus `dram`.

    Picked by name, not position: `psys` (the whole platform, where present) already contains the
    packages and would count them twice; `core`/`uncore` sub-domains are inside their package;
    `dram` is outside it, as a sub-domain of a package or at the top level.
    """
    found = []
    for d in sorted(root.glob("intel-rapl:*")):
        name = _read_text(d / "name") or ""
        top = d.name.count(":") == 1
        if not ((top and name.startswith("package")) or name == "dram"):
            continue
        energy, wrap = _read_text(d / "energy_uj"), _read_text(d / "max_energy_range_uj")
        if energy is None or not energy.isdigit() or wrap is None or not wrap.isdigit():
            continue  # not readable by this user (usual since 2020 for non-root)
        found.append(RaplDomain(d, name, int(wrap)))
    return found


class RaplMeter(EnergyMeter):
    """CPU package (+ DRAM) energy from Linux powercap RAPL counters: whole sockets, all processes.

    A poller samples the counters every `poll_s` seconds and adds up the increments, so a window
    longer than a counter's wrap period is still counted in full.
    """

    source = "measured:rapl"

    def __init__(self, domains: list[RaplDomain], poll_s: float = RAPL_POLL_S) -> None:
        if not domains:
            raise OSError("no readable RAPL package domain")
        self.domains = domains
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._last: list[int] = []
        self._total_uj = 0

    def _read(self) -> list[int]:
        return [int((d.path / "energy_uj").read_text()) for d in self.domains]

    def sample(self) -> None:
        """Add what each counter advanced since the last sample (at most one wrap in between)."""
        with self._lock:
            now = self._read()
            for last, cur, d in zip(self._last, now, self.domains, strict=True):
                self._total_uj += cur - last if cur >= last else cur + d.range_uj - last
            self._last = now

    def _start(self) -> tuple[threading.Event, threading.Thread]:
        self._last, self._total_uj = self._read(), 0
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(self.poll_s):
                self.sample()

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return stop, thread

    def _stop(self, state: tuple[threading.Event, threading.Thread], duration_s: float) -> EnergyReading:
        stop, thread = state
        stop.set()
        thread.join()
        self.sample()
        names = ",".join(f"{d.path.name}={d.name}" for d in self.domains)
        return EnergyReading(self._total_uj / 1e6, duration_s, self.source, f"RAPL {names}")


class CpuTimeEstimate(EnergyMeter):
    """No counter readable: an estimate from CPU time, in two terms.

    - busy: the CPU seconds of the trial's whole process tree (threads and child processes: vLLM
      works in children) x an assumed watts per busy core;
    - static: the wall seconds x the target's cores x an assumed static watts per core, the share
      of package/uncore power a machine draws whatever its cores do, attributed to the cores the
      target takes. Without it a trial that leaves cores idle looks cheaper than it is: the idle
      cores still draw power, and a deployment on a machine of that size pays for them.
    """

    source = "estimated:cpu-time"

    def __init__(
        self, watts_per_core: float, static_watts_per_core: float = 0.0, cores: int = 1, root: int | None = None
    ) -> None:
        self.watts_per_core = watts_per_core
        self.static_watts_per_core = static_watts_per_core
        self.cores = cores
        self.root = root  # whose process tree is billed: this process's, or a served trial's server's

    def _start(self) -> float:
        from autoinfer.evaluators.machine_load import tree_cpu_s

        return tree_cpu_s(self.root)

    def _stop(self, state: float, duration_s: float) -> EnergyReading:
        from autoinfer.evaluators.machine_load import tree_cpu_s

        cpu_s = tree_cpu_s(self.root) - state
        busy_j = cpu_s * self.watts_per_core
        static_j = duration_s * self.cores * self.static_watts_per_core
        detail = (
            f"E = {cpu_s:.3f} CPU-s x {self.watts_per_core:g} W/busy core + {duration_s:.3f} s x {self.cores} "
            f"cores x {self.static_watts_per_core:g} W/core static = {busy_j:.3g} + {static_j:.3g} J (assumed watts)"
        )
        inputs = {
            "cpu_s": cpu_s,
            "wall_s": duration_s,
            "cores": float(self.cores),
            "watts_per_busy_core": self.watts_per_core,
            "static_watts_per_core": self.static_watts_per_core,
            "busy_j": busy_j,
            "static_j": static_j,
        }
        return EnergyReading(busy_j + static_j, duration_s, self.source, detail, inputs)


def meter_for(
    hardware: HardwareSpec, watts_per_core: float, static_watts_per_core: float = 0.0, root: int | None = None
) -> tuple[EnergyMeter, str]:
    """The best meter for a target, and why it was chosen (shown by `autoinfer hardware`). `root`:
    the process whose tree a CPU-time estimate bills (default this one's; a served trial's server)."""
    if hardware.kind == "cuda":
        try:
            return NvmlMeter(hardware.index or 0), "NVML total-energy counter"
        except Exception as e:  # noqa: BLE001 - any NVML failure means "no counter"
            reason = f"NVML unavailable ({type(e).__name__}: {e})"
    elif hardware.kind == "cpu":
        domains = rapl_domains()
        if domains:
            return RaplMeter(domains), "RAPL counters (" + ", ".join(d.name for d in domains) + ")"
        reason = f"no readable RAPL counter under {RAPL_ROOT}"
    else:
        reason = f"no energy counter for {hardware.kind}"
    cores = hardware.threads if hardware.kind == "cpu" else 1  # a GPU target holds one host core
    return CpuTimeEstimate(watts_per_core, static_watts_per_core, cores, root), f"{reason}; estimating from CPU time"
