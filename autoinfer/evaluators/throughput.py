"""Throughput, latency and memory of one loaded engine, measured under an energy meter."""

from __future__ import annotations

import resource
import statistics
from dataclasses import dataclass

from autoinfer.engines.base import Engine, GenerationResult
from autoinfer.evaluators.energy import EnergyMeter, EnergyReading
from autoinfer.evaluators.workload import batch_for_repeat


@dataclass(frozen=True)
class ThroughputResult:
    tokens_per_s: float  # generated tokens (counted) / wall seconds, over all measured repeats
    tokens_per_s_cv: float  # std / mean of per-repeat tokens/s
    ttft_p50_s: float
    tpot_p50_s: float
    latency_p50_s: float
    latency_p95_s: float
    peak_memory_gb: float
    generated_tokens: int
    wall_s: float
    repeats: int
    sequences: int  # requests measured (repeats x batch size)
    acceptance_rate: float | None  # None when no draft ran
    draft_proposed: int
    draft_accepted: int
    energy: EnergyReading


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def peak_memory_gb(device_kind: str) -> float:
    if device_kind == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    # ru_maxrss is in KiB on Linux: the peak resident set of this trial process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def measure_throughput(
    engine: Engine,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    repeats: int,
    warmup: int,
    meter: EnergyMeter,
    ignore_eos: bool = False,
) -> ThroughputResult:
    for w in range(warmup):
        engine.generate(batch_for_repeat(prompts, batch_size, w), max_new_tokens, ignore_eos)
    runs: list[GenerationResult] = []
    with meter.measure() as box:
        for r in range(repeats):
            runs.append(engine.generate(batch_for_repeat(prompts, batch_size, warmup + r), max_new_tokens, ignore_eos))
    assert box.reading is not None
    tokens = sum(sum(g.new_tokens) for g in runs)
    wall = sum(g.total_s for g in runs)
    per_repeat = [sum(g.new_tokens) / g.total_s for g in runs]
    mean = statistics.fmean(per_repeat)
    cv = statistics.pstdev(per_repeat) / mean if len(per_repeat) > 1 and mean > 0 else 0.0
    tpots = [
        (lat - g.ttft_s) / (n - 1) for g in runs for n, lat in zip(g.new_tokens, g.latency_s, strict=True) if n > 1
    ]
    latencies = [lat for g in runs for lat in g.latency_s]
    proposed = sum(g.draft_proposed for g in runs)
    accepted = sum(g.draft_accepted for g in runs)
    drafted = engine.point.draft_spec.kind != "none"
    return ThroughputResult(
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        tokens_per_s_cv=cv,
        ttft_p50_s=percentile([g.ttft_s for g in runs], 50),
        tpot_p50_s=percentile(tpots, 50),
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        peak_memory_gb=peak_memory_gb(engine.point.hardware_spec.kind),
        generated_tokens=tokens,
        wall_s=wall,
        repeats=repeats,
        sequences=len(latencies),
        acceptance_rate=(accepted / proposed if proposed else 0.0) if drafted else None,
        draft_proposed=proposed,
        draft_accepted=accepted,
        energy=box.reading,
    )
