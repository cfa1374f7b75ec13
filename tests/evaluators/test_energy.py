"""Contract every energy meter must satisfy, plus each meter's own arithmetic (fake RAPL sysfs, fake NVML)."""

from __future__ import annotations

import ctypes
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from autoinfer.errors import TrialError
from autoinfer.evaluators.energy import (
    CpuTimeEstimate,
    EnergyMeter,
    EnergyReading,
    NvmlMeter,
    RaplMeter,
    meter_for,
    rapl_domains,
)
from autoinfer.spaces import HardwareSpec


def burn(seconds: float) -> int:
    end, x = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        x += 1
    return x


def domain(root: Path, name: str, label: str, value: int, wrap: int = 1000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(str(value))
    (d / "max_energy_range_uj").write_text(str(wrap))
    return d


def fake_rapl(root: Path) -> dict[str, Path]:
    """Two packages (each with core and dram sub-domains) and a platform-wide psys domain."""
    return {
        "pkg0": domain(root, "intel-rapl:0", "package-0", 100),
        "core0": domain(root, "intel-rapl:0:0", "core", 5),
        "dram0": domain(root, "intel-rapl:0:1", "dram", 10),
        "pkg1": domain(root, "intel-rapl:1", "package-1", 200),
        "psys": domain(root, "intel-rapl:2", "psys", 300),
    }


class FakeNvml(types.ModuleType):
    """Two GPUs in PCI order; `cuda` lists what CUDA calls device 0, 1 (here: reversed)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.gpus = [
            {"uuid": "GPU-aaaa", "bus": "00000000:17:00.0", "name": "A100", "mj": 1_000},
            {"uuid": "GPU-bbbb", "bus": "00000000:65:00.0", "name": "H100", "mj": 5_000},
        ]
        self.procs: dict[int, list[Any]] = {0: [], 1: []}

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetHandleByPciBusId(self, bus: bytes) -> int:
        return next(i for i, g in enumerate(self.gpus) if g["bus"] == bus.decode())

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return str(self.gpus[h]["uuid"])

    def nvmlDeviceGetName(self, h: int) -> str:
        return str(self.gpus[h]["name"])

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return types.SimpleNamespace(busId=self.gpus[h]["bus"])

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self.gpus[h]["mj"] = int(self.gpus[h]["mj"]) + 250  # every read: 0.25 J more
        return int(self.gpus[h]["mj"])

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return self.procs[h]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return types.SimpleNamespace(used=123)


class FakeDriver:
    """libcuda: CUDA device i is the GPU at bus_ids[i]."""

    def __init__(self, bus_ids: list[str]) -> None:
        self.bus_ids = bus_ids

    def cuDeviceGet(self, dev: Any, index: int) -> int:
        if index >= len(self.bus_ids):
            return 101  # CUDA_ERROR_INVALID_DEVICE
        ctypes.cast(dev, ctypes.POINTER(ctypes.c_int))[0] = index
        return 0

    def cuDeviceGetPCIBusId(self, buf: Any, n: int, dev: Any) -> int:
        buf.value = self.bus_ids[dev.value].encode()
        return 0


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def meters(tmp_path: Path) -> list[EnergyMeter]:
    fake_rapl(tmp_path / "rapl")
    return [CpuTimeEstimate(10.0), RaplMeter(rapl_domains(tmp_path / "rapl"))]


def test_contract_every_meter_yields_a_frozen_labelled_reading(tmp_path: Path) -> None:
    for meter in meters(tmp_path):
        with meter.measure() as box:
            burn(0.05)
            if isinstance(meter, RaplMeter):  # a counter that moved
                (meter.domains[0].path / "energy_uj").write_text("150")
        r = box.reading
        assert r is not None
        assert r.energy_j > 0 and r.duration_s >= 0.04
        assert r.source == meter.source and r.source.split(":")[0] in ("measured", "estimated")
        with pytest.raises(AttributeError):
            r.energy_j = 1.0  # type: ignore[misc]


def test_a_meter_that_reads_zero_fails_the_trial(tmp_path: Path) -> None:
    fake_rapl(tmp_path)
    rapl = RaplMeter(rapl_domains(tmp_path))
    with pytest.raises(TrialError, match=r"measured:rapl read 0 J over .* no energy figure to rank by"), rapl.measure():
        pass  # nothing moved the counters: a 0 J window would rank first with infinite efficiency


def test_cpu_estimate_is_cpu_seconds_times_watts() -> None:
    t0 = time.process_time()
    with CpuTimeEstimate(10.0).measure() as box:
        burn(0.3)
    cpu_s = time.process_time() - t0
    r = box.reading
    assert r is not None
    assert r.source == "estimated:cpu-time" and "assumed" in r.detail
    assert r.energy_j == pytest.approx(10.0 * cpu_s, rel=0.05, abs=0.02)
    assert r.energy_j > 0.5  # the busy loop did burn CPU time (however loaded the machine is)


def test_rapl_picks_packages_and_dram_by_name_never_psys(tmp_path: Path) -> None:
    d = fake_rapl(tmp_path)
    found = rapl_domains(tmp_path)
    assert [x.path for x in found] == [d["pkg0"], d["dram0"], d["pkg1"]]  # no core, no psys
    meter = RaplMeter(found)
    with meter.measure() as box:
        (d["pkg0"] / "energy_uj").write_text("400")  # +300
        (d["dram0"] / "energy_uj").write_text("60")  # +50
        (d["pkg1"] / "energy_uj").write_text("250")  # +50
        (d["psys"] / "energy_uj").write_text("900")  # ignored: it already contains the packages
    assert box.reading is not None and box.reading.energy_j == pytest.approx(400e-6)
    assert "package-0" in box.reading.detail and "dram" in box.reading.detail


def test_rapl_counts_every_wrap_of_a_long_window(tmp_path: Path) -> None:
    pkg = domain(tmp_path, "intel-rapl:0", "package-0", 900, wrap=1000)
    meter = RaplMeter(rapl_domains(tmp_path), poll_s=3600)  # samples taken by hand below
    with meter.measure() as box:
        for value in (100, 600, 50, 700):  # wraps twice: 900->1000->100, 600->1000->50, then 700
            (pkg / "energy_uj").write_text(str(value))
            meter.sample()
    assert box.reading is not None
    assert box.reading.energy_j == pytest.approx((200 + 500 + 450 + 650) * 1e-6)


def test_meter_for_cpu_falls_back_to_labelled_estimate_here() -> None:
    meter, why = meter_for(HardwareSpec.parse("cpu"), 7.0)
    if rapl_domains():
        assert meter.source == "measured:rapl"
    else:
        assert meter.source == "estimated:cpu-time" and "RAPL" in why


def test_nvml_reads_the_gpu_cuda_means(nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoinfer import gpu

    # CUDA orders devices fastest first: cuda:0 is the H100 on bus 65, NVML's device 1.
    monkeypatch.setattr(gpu, "_cuda_driver", lambda: FakeDriver(["00000000:65:00.0", "00000000:17:00.0"]))
    meter = NvmlMeter(0)
    assert meter.gpu.uuid == "GPU-bbbb" and meter.gpu.how == "CUDA driver PCI bus id"
    with meter.measure() as box:
        pass
    assert box.reading is not None and box.reading.energy_j == pytest.approx(0.25)
    assert "H100" in box.reading.detail and "incl. idle" in box.reading.detail
    assert nvml.gpus[0]["mj"] == 1_000  # the other GPU's counter was never read


def test_nvml_without_a_driver_honours_cuda_visible_devices(nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoinfer import gpu

    monkeypatch.setattr(gpu, "_cuda_driver", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    _, ident = gpu.nvml_handle(0)
    assert ident.uuid == "GPU-bbbb" and "UUID" in ident.how
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    _, ident = gpu.nvml_handle(1)
    assert ident.uuid == "GPU-aaaa" and "PCI order" in ident.how
    with pytest.raises(TrialError, match="not among CUDA_VISIBLE_DEVICES"):
        gpu.nvml_handle(2)


def test_nvml_per_process_memory(nvml: FakeNvml) -> None:
    import os

    from autoinfer.evaluators.memory import nvml_process_window
    from autoinfer.gpu import nvml_process_bytes

    assert nvml_process_bytes(1, os.getpid()) is None
    nvml.procs[1] = [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2_000_000_000)]
    with nvml_process_window(1) as box:
        nvml.procs[1] = [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3_000_000_000)]
        time.sleep(0.05)
        nvml.procs[1] = [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2_500_000_000)]
    assert box.reading is not None and box.reading.peak_gb == pytest.approx(3.0)
    assert "per-process" in box.reading.source


def test_reading_power() -> None:
    assert EnergyReading(10.0, 2.0, "measured:rapl").mean_power_w == 5.0


@pytest.mark.gpu
def test_nvml_meter_on_a_gpu() -> None:
    from autoinfer.hardware import gpus

    if not gpus():
        pytest.skip("needs an NVIDIA GPU with NVML; none on this machine")
    meter, _ = meter_for(HardwareSpec.parse("cuda:0"), 10.0)
    assert meter.source == "measured:nvml"
    with meter.measure() as box:
        time.sleep(0.5)
    assert box.reading is not None and box.reading.energy_j > 0


def test_cpu_estimate_adds_a_static_share_over_wall_time_and_writes_its_formula() -> None:
    """Fewer busy threads must not look free: the cores a target takes draw static power over the
    whole window, whether they compute or wait."""
    with CpuTimeEstimate(10.0, static_watts_per_core=5.0, cores=2).measure() as box:
        time.sleep(0.3)  # idle: almost no CPU time
    r = box.reading
    assert r is not None
    x = r.inputs
    assert x["static_j"] == pytest.approx(r.duration_s * 2 * 5.0) and x["static_j"] >= 3.0
    assert r.energy_j == pytest.approx(x["busy_j"] + x["static_j"]) and x["busy_j"] < 0.5
    assert x["busy_j"] == pytest.approx(x["cpu_s"] * 10.0) and x["wall_s"] == r.duration_s
    assert "W/core static" in r.detail and "CPU-s x 10 W/busy core" in r.detail


def test_cpu_estimate_counts_the_cpu_time_of_child_processes() -> None:
    """vLLM works in child processes: their CPU time is the trial's."""
    import subprocess

    with CpuTimeEstimate(10.0).measure() as box:
        subprocess.run([sys.executable, "-c", "import time\nwhile time.process_time() < 0.5: pass"], check=True)
    # The child burned 0.5 CPU-s; a reaped child is counted in 10 ms ticks, which round down.
    assert box.reading is not None and box.reading.inputs["cpu_s"] >= 0.45


def test_meter_for_cpu_estimates_over_the_targets_cores() -> None:
    meter, _ = meter_for(HardwareSpec.parse("cpu:1"), 10.0, 5.0)
    if isinstance(meter, CpuTimeEstimate):
        assert meter.cores == 1 and meter.static_watts_per_core == 5.0
