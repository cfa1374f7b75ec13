"""Which physical GPU a `cuda:I` target is, as NVML sees it.

CUDA numbers devices after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER (fastest first by default);
NVML numbers every device by PCI bus. Reading the energy counter or the memory of `cuda:1` from
NVML's device 1 can therefore read another GPU. We ask the CUDA driver for the PCI bus id of the
device the frameworks call I (it applies both variables exactly as they do) and open that device
in NVML. Without the driver library, CUDA_VISIBLE_DEVICES is parsed by hand (indices or UUIDs),
and `how` says which route was taken. Unverified on a GPU machine at the time of writing.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from autoinfer.errors import TrialError


@dataclass(frozen=True)
class GpuIdentity:
    cuda_index: int  # what the trial's target says (cuda:I)
    uuid: str
    pci_bus_id: str
    name: str
    how: str  # how cuda:I was matched to an NVML device


def _cuda_driver() -> Any | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return lib if lib.cuInit(0) == 0 else None


def cuda_pci_bus_id(index: int, driver: Any | None = None) -> str | None:
    """PCI bus id of CUDA device `index` in this process's numbering, or None without a driver."""
    lib = driver if driver is not None else _cuda_driver()
    if lib is None:
        return None
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
        raise TrialError(f"cuda:{index} is not a CUDA device of this process (CUDA_VISIBLE_DEVICES?)")
    buf = ctypes.create_string_buffer(32)
    if lib.cuDeviceGetPCIBusId(buf, 32, dev) != 0:
        return None
    return str(buf.value.decode())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_handle(index: int, driver: Any | None = None) -> tuple[Any, GpuIdentity]:
    """The NVML handle of the physical GPU behind `cuda:index`, and how it was identified."""
    import pynvml

    pynvml.nvmlInit()
    bus = cuda_pci_bus_id(index, driver)
    if bus is not None:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
        how = "CUDA driver PCI bus id"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        entries = [e.strip() for e in visible.split(",") if e.strip()] if visible is not None else None
        if entries is not None and index >= len(entries):
            raise TrialError(f"cuda:{index} is not among CUDA_VISIBLE_DEVICES={visible}")
        entry = entries[index] if entries is not None else str(index)
        if entry.startswith(("GPU-", "MIG-")):
            handle = _by_uuid_prefix(pynvml, entry)
            how = f"CUDA_VISIBLE_DEVICES entry {entry} (UUID)"
        elif entry.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
            how = f"NVML index {entry} (no CUDA driver library: assumes CUDA numbers devices in PCI order)"
        else:
            raise TrialError(f"cannot match CUDA_VISIBLE_DEVICES entry {entry!r} to a GPU")
    identity = GpuIdentity(
        cuda_index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        how=how,
    )
    return handle, identity


def _by_uuid_prefix(pynvml: Any, prefix: str) -> Any:
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        if _text(pynvml.nvmlDeviceGetUUID(h)).startswith(prefix):
            return h
    raise TrialError(f"no GPU with UUID {prefix}")


def nvml_process_bytes(handle: Any, pid: int) -> int | None:
    """GPU memory NVML counts for process `pid` on this device, None where it does not list it."""
    import pynvml

    try:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return None
    for p in procs:
        if p.pid == pid and isinstance(p.usedGpuMemory, int):
            return int(p.usedGpuMemory)
    return None
