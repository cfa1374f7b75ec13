from __future__ import annotations

from autoinfer.evaluators.bandwidth import cached_bandwidth_gbs


def test_bandwidth_is_measured_once_then_cached() -> None:
    bw, how = cached_bandwidth_gbs("cpu", 1)
    assert how == "measured" and 0.5 < bw < 5000  # GB/s: any real machine lands in here
    again, how2 = cached_bandwidth_gbs("cpu", 1)
    assert how2 == "cached" and again == bw
