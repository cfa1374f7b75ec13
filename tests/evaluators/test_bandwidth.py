from __future__ import annotations

from pathlib import Path

import pytest

from autoinfer.evaluators.bandwidth import cached_bandwidth_gbs


def test_bandwidth_is_measured_once_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache of its own: earlier real trials of the session have measured cpu:1 in the shared one.
    monkeypatch.setenv("AUTOINFER_CACHE", str(tmp_path))
    bw, how = cached_bandwidth_gbs("cpu", 1)
    assert how == "measured" and 0.5 < bw < 5000  # GB/s: any real machine lands in here
    again, how2 = cached_bandwidth_gbs("cpu", 1)
    assert how2 == "cached" and again == bw
