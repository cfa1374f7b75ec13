from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoinfer.search.isolation import run_isolated


def payload(tmp_path: Path, entry: str) -> dict[str, object]:
    return {"entry": f"tests.search.child_targets:{entry}", "x": 21, "log_path": str(tmp_path / "logs" / "t.log")}


def test_result_stages_and_log(tmp_path: Path) -> None:
    stages: list[str] = []
    out = run_isolated(payload(tmp_path, "ok"), 60, stages.append)
    assert out.ok and out.result is not None
    assert out.result["x"] == 42 and out.result["pid"] != os.getpid()
    assert stages == ["working"]
    assert "hello from the child" in Path(out.log_path).read_text()


def test_exception_is_the_reason_and_traceback_is_logged(tmp_path: Path) -> None:
    out = run_isolated(payload(tmp_path, "raises"), 60)
    assert not out.ok and out.reason == "RuntimeError: draft model not found"
    assert "Traceback" in Path(out.log_path).read_text()


def test_segfault_fails_the_trial_not_the_caller(tmp_path: Path) -> None:
    out = run_isolated(payload(tmp_path, "segfaults"), 60)
    assert not out.ok and "SIGSEGV" in out.reason


def test_hang_times_out_and_child_is_killed(tmp_path: Path) -> None:
    out = run_isolated(payload(tmp_path, "hangs"), 3)
    assert not out.ok and out.reason == "timed out after 3 s"
    assert out.duration_s < 20


def test_a_timed_out_trial_leaves_none_of_its_children(tmp_path: Path) -> None:
    stages: list[str] = []
    out = run_isolated(payload(tmp_path, "leaves_a_child"), 5, stages.append)
    assert not out.ok and out.reason == "timed out after 5 s"
    pid = int(stages[0].split()[1])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:  # killed at once; reaped by init soon after
        time.sleep(0.1)
    assert not _alive(pid), "the trial's child outlived the trial"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, waiting for init to reap it


def test_time_is_accounted_per_stage(tmp_path: Path) -> None:
    out = run_isolated(payload(tmp_path, "staged"), 60)
    assert out.ok
    secs = out.stage_seconds()
    assert list(secs) == ["spawn", "a", "b", "exit"]  # a stage entered twice is summed
    assert secs["a"] >= 0.4 and secs["b"] >= 0.2 and secs["spawn"] > 0
    assert sum(secs.values()) == pytest.approx(out.duration_s)


def test_a_trials_measured_window_is_split_out_of_its_stage() -> None:
    from autoinfer.search.isolation import ChildOutcome
    from autoinfer.search.study import stage_seconds

    out = ChildOutcome(True, None, "", "", 10.0, (("load", 1.0), ("throughput+energy", 3.0), ("exit", 9.5)))
    record = SimpleNamespace(metrics={"wall_s": 4.0})
    secs = stage_seconds(out, record, asked_s=0.25)  # type: ignore[arg-type]
    assert secs == {"ask": 0.25, "spawn": 1.0, "load": 2.0, "warmup": 2.5, "measure": 4.0, "exit": 0.5}
