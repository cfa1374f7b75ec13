"""Measured memory bandwidth, the ceiling for weight-streaming decode (the roofline's slope)."""

from __future__ import annotations

import json
import time

from autoinfer.cache import cache_dir


def measure_bandwidth_gbs(device: str, size_mb: int = 256, reps: int = 5) -> float:
    """Best-of-`reps` read bandwidth in GB/s: summing a buffer much larger than any cache, with
    however many threads this process runs (the caller has pinned them)."""
    import torch

    x = torch.ones(size_mb * (1 << 20) // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        x.sum()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def cached_bandwidth_gbs(device: str, threads: int) -> tuple[float, str]:
    """Bandwidth for this device and thread count, measured once per machine and cached."""
    path = cache_dir() / "bandwidth.json"
    key = f"{device}@{threads}"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        return float(table[key]), "cached"
    bw = measure_bandwidth_gbs(device)
    table[key] = bw
    path.write_text(json.dumps(table, indent=1))
    return bw, "measured"
