"""Peak memory of the generation window, apart from what loading needed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from autoinfer.evaluators import memory

MB = 1_000_000


def touch(n_bytes: int) -> bytearray:
    buf = bytearray(n_bytes)
    for i in range(0, n_bytes, 4096):
        buf[i] = 1  # resident, not just reserved
    return buf


def rss_gb() -> float:
    kib = memory._status_kib("VmRSS")
    assert kib is not None
    return kib * 1024 / 1e9


@pytest.mark.parametrize("reset", [True, False])
def test_the_window_peak_excludes_what_came_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reset: bool
) -> None:
    if memory._status_kib("VmHWM") is None:
        pytest.skip("no /proc/self/status on this platform")
    if not reset:  # where clear_refs cannot be written, RSS is sampled instead
        monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path / "missing-dir" / "clear_refs")
    big = touch(400 * MB)  # "loading": a peak the window must not report
    del big
    lifetime, _ = memory.process_peak_gb()
    before = rss_gb()
    with memory.cpu_window() as box:
        work = touch(150 * MB)
        time.sleep(0.05)
        del work
    r = box.reading
    assert r is not None
    assert ("clear_refs" in r.source) == reset and ("sampled" in r.source) == (not reset)
    assert before + 0.12 < r.peak_gb < lifetime - 0.2  # saw the 150 MB, not the 400 MB before it
