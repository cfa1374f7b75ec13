"""Throughput and latency of one loaded engine over the fixed prompt set, under an energy meter.

Every trial generates the same prompts with the same token budget, in batches of its own size B,
so tokens/s and joules compare like for like across batch sizes. A repeat is one pass over the
whole set; the CV is over repeats of that same work.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from autoinfer.engines.base import Engine, GenerationResult
from autoinfer.errors import TrialError
from autoinfer.evaluators.energy import EnergyBox, EnergyMeter, EnergyReading
from autoinfer.evaluators.machine_load import LoadBox, LoadGuard, LoadReading, available, measure_load
from autoinfer.evaluators.workload import batches


@dataclass(frozen=True)
class ThroughputResult:
    tokens_per_s: float  # generated tokens (counted) / wall seconds, over all measured repeats
    tokens_per_s_cv: float  # std / mean of per-repeat tokens/s
    ttft_p50_s: float  # per request: its batch's start -> its first token
    tpot_p50_s: float  # per request: (last - first token) / (tokens - 1)
    latency_p50_s: float  # per request: its batch's start -> its last token
    latency_p95_s: float
    generated_tokens: int
    wall_s: float
    repeats: int
    prompts: int  # size of the prompt set, generated once per repeat
    sequences: int  # requests measured (repeats x prompts)
    acceptance_rate: float | None  # None when no draft ran
    draft_proposed: int
    draft_accepted: int
    # For the roofline: forward passes after each batch's first token and the seconds they took.
    target_passes: int
    draft_steps: int
    decode_s: float
    outputs: tuple[tuple[int, ...], ...]  # the first measured repeat's token ids, one per prompt
    energy: EnergyReading
    load: LoadReading | None = None  # how busy the machine was in the kept window (None: not read)
    busy_remeasures: int = 0  # windows thrown away because the machine was busy


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def generate_set(
    engine: Engine, prompts: list[str], batch_size: int, max_new_tokens: int, ignore_eos: bool, draft: bool = True
) -> list[GenerationResult]:
    """One pass over the prompt set in batches of `batch_size`."""
    return [engine.generate(b, max_new_tokens, ignore_eos, draft) for b in batches(prompts, batch_size)]


def outputs_of(runs: list[GenerationResult]) -> tuple[tuple[int, ...], ...]:
    return tuple(ids for g in runs for ids in g.token_ids)


def measure_throughput(
    engine: Engine,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    repeats: int,
    warmup: int,
    meter: EnergyMeter,
    ignore_eos: bool = False,
    guard: LoadGuard | None = None,
) -> ThroughputResult:
    """`warmup` unmeasured batches, then `repeats` measured passes over the whole prompt set.

    With a `guard`, a window in which the machine was busy (other processes on the target's cores,
    or steal) is thrown away and measured again after the machine quiets down; a machine that stays
    busy fails the trial, so no busy window is ever ranked."""
    sets = batches(prompts, batch_size)
    for w in range(warmup):
        engine.generate(sets[w % len(sets)], max_new_tokens, ignore_eos)
    passes, box, load, thrown = measured_window(
        lambda: [generate_set(engine, prompts, batch_size, max_new_tokens, ignore_eos) for _ in range(repeats)],
        meter,
        guard,
    )
    assert box.reading is not None
    runs = [g for p in passes for g in p]
    tokens = sum(sum(g.new_tokens) for g in runs)
    wall = sum(g.total_s for g in runs)
    per_repeat = [sum(sum(g.new_tokens) for g in p) / sum(g.total_s for g in p) for p in passes]
    mean = statistics.fmean(per_repeat)
    cv = statistics.pstdev(per_repeat) / mean if len(per_repeat) > 1 and mean > 0 else 0.0
    ttfts = [t[0] for g in runs for t in g.token_times if t]
    latencies = [t[-1] for g in runs for t in g.token_times if t]
    tpots = [(t[-1] - t[0]) / (len(t) - 1) for g in runs for t in g.token_times if len(t) > 1]
    proposed = sum(g.draft_proposed for g in runs)
    accepted = sum(g.draft_accepted for g in runs)
    drafted = engine.point.draft_spec.kind != "none"
    return ThroughputResult(
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        tokens_per_s_cv=cv,
        ttft_p50_s=percentile(ttfts, 50),
        tpot_p50_s=percentile(tpots, 50),
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        generated_tokens=tokens,
        wall_s=wall,
        repeats=repeats,
        prompts=len(prompts),
        sequences=len(latencies),
        acceptance_rate=(accepted / proposed if proposed else 0.0) if drafted else None,
        draft_proposed=proposed,
        draft_accepted=accepted,
        target_passes=sum(g.target_passes for g in runs),
        draft_steps=sum(g.draft_steps for g in runs),
        decode_s=sum(g.decode_s for g in runs),
        outputs=outputs_of(passes[0]),
        energy=box.reading,
        load=load,
        busy_remeasures=thrown,
    )


Passes = list[list[GenerationResult]]
W = TypeVar("W")  # what a measured window's work returns


def measured_window(
    work: Callable[[], W], meter: EnergyMeter, guard: LoadGuard | None
) -> tuple[W, EnergyBox, LoadReading | None, int]:
    """Run `work` under the energy meter (and the load reading, with a guard) until a window is the
    trial's own. Returns what the work returned (an offline trial's passes, a served trial's load),
    the energy box, the kept window's load and how many windows were thrown away."""
    if guard is None or not available():
        with meter.measure() as box:
            passes = work()
        return passes, box, None, 0
    reasons = []
    for attempt in range(guard.retries + 1):
        lbox: LoadBox
        with measure_load(guard.target_cores) as lbox, meter.measure() as box:
            passes = work()
        assert lbox.reading is not None
        reason = lbox.reading.busy_reason(guard.max_other_pct, guard.max_steal_pct)
        if reason is None:
            return passes, box, lbox.reading, attempt
        reasons.append(reason)
        if attempt < guard.retries:
            guard.wait_for_quiet()
    raise TrialError(f"machine busy: {reasons[-1]}; measured {len(reasons)} time(s), busy every time")
