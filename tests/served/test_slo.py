"""The SLO arithmetic over hand-made LoadResults: percentiles, goodput, failures, p99, JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from autoinfer.served.loadgen import LoadResult
from autoinfer.served.slo import Slo, percentile, percentiles, summarize, tpot


def made(rows: list[dict[str, Any]], duration_s: float = 10.0) -> LoadResult:
    """A LoadResult of `rows`: each sets success, ttft, e2el, out (tokens), itl; the rest defaults."""
    return LoadResult(
        generator="hand-made",
        duration_s=duration_s,
        success=tuple(r.get("success", True) for r in rows),
        ttft_s=tuple(r.get("ttft", 0.1) for r in rows),
        itl_s=tuple(tuple(r.get("itl", ())) for r in rows),
        e2el_s=tuple(r.get("e2el", 1.0) for r in rows),
        prompt_tokens=tuple(r.get("prompt", 5) for r in rows),
        output_tokens=tuple(r.get("out", 10) if r.get("success", True) else 0 for r in rows),
        error=tuple("" if r.get("success", True) else "Bad Request" for r in rows),
        start_s=tuple(0.1 * i for i in range(len(rows))),
        queue_s=tuple(0.0 for _ in rows),
    )


def test_tpot_is_vllms_e2el_minus_ttft_over_the_tokens_after_the_first() -> None:
    r = made([{"ttft": 0.5, "e2el": 2.3, "out": 10}, {"out": 1}, {"success": False}])
    assert tpot(r, 0) == pytest.approx((2.3 - 0.5) / 9)
    assert tpot(r, 1) is None  # one token: no time per output token after the first
    assert tpot(r, 2) is None


def test_percentiles_interpolate_as_numpy_does() -> None:
    values = [0.3, 0.1, 0.7, 0.2, 1.9, 0.4, 0.05]
    for p in (0, 10, 50, 95, 99, 100):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))
    assert percentile([2.0], 95) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)
    assert percentiles([], 0) is None


def test_goodput_counts_requests_within_every_set_limit() -> None:
    r = made(
        [
            {"ttft": 0.2, "e2el": 1.1, "out": 11},  # TPOT 0.09: good
            {"ttft": 1.2, "e2el": 2.0, "out": 11},  # TTFT over
            {"ttft": 0.2, "e2el": 3.2, "out": 11},  # TPOT 0.3: over
            {"ttft": 1.0, "e2el": 1.9, "out": 10},  # exactly on both limits: good (<=, as vLLM)
            {"ttft": 0.1, "e2el": 0.1, "out": 1},  # one token: TPOT 0 for goodput
        ],
        duration_s=2.0,
    )
    m = summarize(r, Slo(ttft_s=1.0, tpot_s=0.1))
    assert (m.sent, m.completed, m.failed, m.good) == (5, 5, 0, 3)
    assert m.goodput_rps == pytest.approx(1.5)
    assert m.slo_attainment == pytest.approx(0.6)
    assert m.request_throughput_rps == pytest.approx(2.5)
    assert m.output_tokens_per_s == pytest.approx(44 / 2.0)
    # A new SLO over the same arrays: nothing re-run.
    assert summarize(r, Slo(e2el_s=2.0)).good == 4
    assert summarize(r, Slo()).good == 5  # no limit: every successful request is good


def test_failed_requests_are_never_good_and_count_in_attainment_only() -> None:
    rows = [{"ttft": 0.1, "e2el": 0.5, "out": 5}] * 3 + [{"success": False}] * 2
    m = summarize(made(rows, duration_s=1.0), Slo(ttft_s=10.0))
    assert (m.completed, m.failed, m.good) == (3, 2, 3)
    assert m.slo_attainment == pytest.approx(3 / 5)
    assert m.goodput_rps == pytest.approx(3.0)
    assert m.output_tokens_per_s == pytest.approx(15.0)
    assert m.ttft_s is not None and m.ttft_s.p50 == pytest.approx(0.1)  # failures are in no percentile
    nothing = summarize(made([{"success": False}] * 4), Slo(ttft_s=1.0))
    assert (nothing.completed, nothing.good, nothing.slo_attainment) == (0, 0, 0.0)
    assert nothing.ttft_s is None and nothing.tokens_per_s_per_user is None


def test_p99_only_over_at_least_100_requests() -> None:
    rows = [{"ttft": 0.01 * i, "e2el": 1.0 + 0.01 * i, "out": 11, "itl": (0.1,) * 10} for i in range(99)]
    few = summarize(made(rows), Slo())
    assert few.ttft_s is not None and few.ttft_s.p99 is None
    assert few.itl_s is not None and few.itl_s.p99 is None  # 990 gaps, but from 99 requests
    assert "ttft_p99_s" not in few.flat() and "ttft_p95_s" in few.flat()
    many = summarize(made([*rows, {"ttft": 5.0, "e2el": 6.0, "out": 11, "itl": (0.1,) * 10}]), Slo())
    ttfts = [0.01 * i for i in range(99)] + [5.0]
    assert many.ttft_s is not None and many.ttft_s.p99 == pytest.approx(float(np.percentile(ttfts, 99)))
    assert many.ttft_s.p95 == pytest.approx(float(np.percentile(ttfts, 95)))
    assert many.tpot_s is not None and many.tpot_s.p99 is not None
    assert many.flat()["e2el_p99_s"] == pytest.approx(float(np.percentile([t + 1.0 for t in ttfts], 99)))


def test_tpot_percentiles_leave_out_one_token_requests_and_itl_pools_every_gap() -> None:
    r = made([{"ttft": 0.0, "e2el": 0.9, "out": 10, "itl": (0.1,) * 9}, {"out": 1, "e2el": 0.2, "ttft": 0.2},
              {"ttft": 0.0, "e2el": 1.8, "out": 10, "itl": (0.2,) * 9}])  # fmt: skip
    m = summarize(r, Slo())
    assert m.tpot_s is not None and m.tpot_s.p50 == pytest.approx(0.15)  # two requests, not three
    assert m.itl_s is not None and m.itl_s.p50 == pytest.approx(0.15)
    assert m.itl_s.p95 == pytest.approx(0.2)
    # Per user: mean of tokens / E2EL over completed requests, TTFT included.
    assert m.tokens_per_s_per_user == pytest.approx((10 / 0.9 + 1 / 0.2 + 10 / 1.8) / 3)


def test_a_load_result_round_trips_through_json() -> None:
    r = made([{"ttft": 0.123456789, "e2el": 1.5, "out": 7, "itl": (0.1, 0.2)}, {"success": False}])
    text = r.to_json()
    back = LoadResult.from_json(text)
    assert back == r
    assert summarize(back, Slo(ttft_s=0.2)) == summarize(r, Slo(ttft_s=0.2))
    with pytest.raises(ValueError, match="format"):
        LoadResult.from_json(text.replace('"format": 1', '"format": 99'))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        Slo(ttft_s=-1.0)
    with pytest.raises(ValueError):
        Slo(tpot_s=math.inf)
    with pytest.raises(ValueError, match="different lengths"):
        LoadResult("x", 1.0, (True,), (0.1,), ((),), (0.2,), (1,), (1,), ("",), (0.0,), ())
    with pytest.raises(ValueError, match="duration"):
        made([{}], duration_s=0.0)
