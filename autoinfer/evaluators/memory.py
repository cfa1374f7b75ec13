"""Peak memory of a window of work, separately from what loading and quantizing needed.

A trial process loads (and may quantize from a wider type) before it generates, so the process's
lifetime peak says how much loading took, not how much the configuration needs to run. The
generation window's peak is measured by resetting the high-water mark right before it:

- CPU on Linux: `/proc/self/clear_refs` with "5" resets VmHWM to the current RSS; VmHWM is read
  after the window. Where that file cannot be written, RSS is sampled every 10 ms instead.
- torch on a GPU: `torch.cuda.reset_peak_memory_stats()` then `max_memory_allocated()`.
- llama.cpp on a GPU: NVML's per-process used memory of this pid, sampled every 10 ms (where the
  container hides the pid from NVML: the device's used memory, labelled so).
- vLLM, which computes in child processes (EngineCore, Worker): on CPU, the sum over the trial's
  process tree of each process's VmHWM, every one reset before the window (pages two processes
  share, such as libraries, count in each, so this is an upper bound on what the tree held at
  once); on a GPU, NVML's used memory summed over the tree's pids.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLE_S = 0.01


@dataclass(frozen=True)
class MemoryReading:
    peak_gb: float
    source: str  # how peak_gb was obtained


class MemoryBox:
    reading: MemoryReading | None = None


def _status_kib(field: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_peak_gb() -> tuple[float, str]:
    """This process's peak resident memory since it started (or since the last reset)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024 / 1e9, "VmHWM"
    # ru_maxrss: KiB on Linux, bytes on macOS; cannot be reset.
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9, "ru_maxrss"


def release_freed() -> None:
    """Hand memory that loading freed back to the OS before the generation window starts.

    glibc keeps freed heap chunks (anything under its mmap threshold, which rises to 32 MB after
    the first large free) for reuse, so a process that quantized fp32 weights to int8 still holds
    the fp32 pages in RSS. malloc_trim returns them; without it the window's peak would count
    memory the configuration does not use.
    """
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim this way
            pass


def _reset_hwm() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _sampled(read_bytes: Callable[[], int | None], source: str) -> Iterator[MemoryBox]:
    """Poll `read_bytes` from a thread for the length of the block; the box gets the maximum."""
    box = MemoryBox()
    peak = [read_bytes() or 0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(SAMPLE_S):
            peak[0] = max(peak[0], read_bytes() or 0)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], read_bytes() or 0)
        box.reading = MemoryReading(peak[0] / 1e9, source)


def _rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


@contextlib.contextmanager
def cpu_window() -> Iterator[MemoryBox]:
    if _reset_hwm():
        box = MemoryBox()
        yield box
        peak, _ = process_peak_gb()
        box.reading = MemoryReading(peak, "VmHWM reset by /proc/self/clear_refs before generating")
        return
    if _rss_bytes() is not None:
        with _sampled(_rss_bytes, f"RSS sampled every {SAMPLE_S * 1000:g} ms") as box:
            yield box
        return
    box = MemoryBox()
    yield box
    peak, how = process_peak_gb()
    box.reading = MemoryReading(peak, f"{how}: process lifetime peak (no way to reset it here)")


@contextlib.contextmanager
def torch_cuda_window(device: str) -> Iterator[MemoryBox]:
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    box = MemoryBox()
    yield box
    torch.cuda.synchronize(device)
    box.reading = MemoryReading(torch.cuda.max_memory_allocated(device) / 1e9, "torch.cuda.max_memory_allocated")


@contextlib.contextmanager
def nvml_process_window(handle: object) -> Iterator[MemoryBox]:
    from autoinfer.gpu import nvml_process_bytes

    pid = os.getpid()
    if nvml_process_bytes(handle, pid) is not None:
        with _sampled(lambda: nvml_process_bytes(handle, pid), "NVML per-process used memory, sampled") as box:
            yield box
        return
    import pynvml

    def used() -> int:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    source = "NVML device used memory, sampled (this pid is not visible to NVML: includes other processes)"
    with _sampled(used, source) as box:
        yield box


# Engines whose work (and memory) is in child processes of the trial.
TREE_ENGINES = ("vllm",)


def _tree() -> list[int]:
    from autoinfer.evaluators.machine_load import descendants

    me = os.getpid()
    return [me, *descendants(me)]


def _pid_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def tree_peak_gb(pids: list[int]) -> float:
    """Sum of VmHWM over the given processes (those that have exited count nothing)."""
    return sum(_pid_kib(p, "VmHWM") or 0 for p in pids) * 1024 / 1e9


@contextlib.contextmanager
def tree_window() -> Iterator[MemoryBox]:
    """Peak host memory of this process and its children over the block (see the module doc)."""
    pids = _tree()
    reset = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            reset = False
    if reset:
        box = MemoryBox()
        yield box
        how = f"sum of VmHWM over the trial's {len(pids)} processes, each reset by clear_refs before generating"
        box.reading = MemoryReading(tree_peak_gb(pids), how)
        return

    def rss() -> int:
        return sum(_pid_kib(p, "VmRSS") or 0 for p in pids) * 1024

    with _sampled(rss, f"sum of RSS over the trial's {len(pids)} processes, sampled every {SAMPLE_S * 1000:g} ms") as b:
        yield b


@contextlib.contextmanager
def nvml_tree_window(handle: object) -> Iterator[MemoryBox]:
    from autoinfer.gpu import nvml_process_bytes

    pids = _tree()

    def used() -> int:
        return sum(nvml_process_bytes(handle, p) or 0 for p in pids)

    with _sampled(used, f"NVML per-process used memory summed over the trial's {len(pids)} processes") as box:
        yield box


def generation_window(hardware_kind: str, engine: str, device: str, gpu_handle: object | None = None) -> Any:
    """The peak-memory window that fits a target: host RSS, torch's allocator, or NVML."""
    if engine in TREE_ENGINES:
        return nvml_tree_window(gpu_handle) if hardware_kind == "cuda" and gpu_handle is not None else tree_window()
    if hardware_kind == "cuda" and engine == "transformers":
        return torch_cuda_window(device)
    if hardware_kind == "cuda" and gpu_handle is not None:
        return nvml_process_window(gpu_handle)
    return cpu_window()


def load_peak(hardware_kind: str, engine: str, device: str, gpu_handle: object | None = None) -> MemoryReading:
    """Peak memory up to now (the end of loading), on the memory the target uses."""
    if engine in TREE_ENGINES and hardware_kind == "cpu":
        pids = _tree()
        return MemoryReading(tree_peak_gb(pids), f"sum of VmHWM over the trial's {len(pids)} processes")
    if hardware_kind == "cuda" and engine == "transformers":
        import torch

        return MemoryReading(torch.cuda.max_memory_allocated(device) / 1e9, "torch.cuda.max_memory_allocated")
    if hardware_kind == "cuda" and gpu_handle is not None:
        from autoinfer.gpu import nvml_process_bytes

        used = nvml_process_bytes(gpu_handle, os.getpid())
        if used is not None:
            return MemoryReading(used / 1e9, "NVML per-process used memory after loading")
    peak, how = process_peak_gb()
    return MemoryReading(peak, how)
