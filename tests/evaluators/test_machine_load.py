"""A busy machine is seen, not ranked: other processes' CPU time and steal over the measured window,
judged against the cores the target takes, with real CPU burner processes outside the trial's tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.errors import TrialError
from autoinfer.evaluators.energy import CpuTimeEstimate
from autoinfer.evaluators.machine_load import LoadGuard, LoadReading, measure_load, sample_load, tree_cpu_s
from autoinfer.evaluators.throughput import measure_throughput
from autoinfer.search.pareto import measured_trials, pareto_trials
from autoinfer.search.study import run_search
from tests.conftest import fake_config
from tests.evaluators.test_throughput import ScriptedEngine
from tests.fake_engine import _burn

CORES = os.cpu_count() or 1
# Burns a core until killed. It forks and its parent exits, so the burner is re-parented away from
# this process: it is "another process", not part of the tree being measured. It prints its pid and
# closes its output, so the caller is not left waiting on the pipe.
BURNER = """
import os, sys
if os.fork():
    os._exit(0)
print(os.getpid(), flush=True)
os.close(1)
os.close(2)
while True:
    pass
"""


@contextmanager
def burners(n: int) -> Iterator[list[int]]:
    """n processes outside this process tree, each burning a core while the block runs."""
    pids = []
    try:
        for _ in range(n):
            out = subprocess.run([sys.executable, "-c", BURNER], capture_output=True, text=True, timeout=30)
            pids.append(int(out.stdout.split()[-1]))
        time.sleep(0.2)  # running, not still starting
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def reading(other_cores: float, target: int, machine: int = 2, steal_s: float = 0.0) -> LoadReading:
    wall = 10.0
    own = target * wall
    return LoadReading(wall, machine, target, own, own + other_cores * wall, steal_s, machine * wall)


def test_what_counts_as_busy_depends_on_the_target() -> None:
    # One other busy core on a 2-core machine: cpu:1 keeps its core, cpu:2 loses half its time.
    assert reading(1.0, target=1).other_cpu_pct == 0.0
    assert reading(1.0, target=2).other_cpu_pct == pytest.approx(50.0, abs=0.5)
    assert reading(1.0, target=1).busy_reason(10, 10) is None
    why = reading(1.0, target=2).busy_reason(10, 10)
    assert why is not None and why.startswith("50 % of the target's CPU time went to other processes")
    # Steal is the hypervisor's: a share of the machine's CPU time whatever the target.
    stolen = reading(0.0, target=1, steal_s=4.0)
    assert stolen.steal_pct == pytest.approx(20.0)
    assert "hypervisor stole 20 %" in (stolen.busy_reason(10, 10) or "")


CHILD = """
import time
while time.process_time() < 0.3:
    pass
print("half", flush=True)
while time.process_time() < 0.6:
    pass
"""


def test_tree_cpu_counts_child_processes() -> None:
    before = tree_cpu_s()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "half\n"
    alive = tree_cpu_s() - before  # a live child's CPU time counts
    child.wait()
    reaped = tree_cpu_s() - before  # and still counts once it has exited and been reaped
    assert alive >= 0.28 and reaped >= 0.58


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat (Linux)")
def test_a_real_burner_outside_the_tree_is_other_cpu() -> None:
    with burners(CORES), measure_load(CORES) as box:
        time.sleep(1.0)
    r = box.reading
    assert r is not None
    assert r.other_cpu_s > 0.5 * CORES  # most of every core went to the burners
    assert r.other_cpu_pct > 50 and r.own_cpu_s < 0.2


class BurnOnceEngine(ScriptedEngine):
    """Starts burners outside its tree on the first measured call and stops them on the next
    window: a machine busy for exactly one measured window."""

    def __init__(self, windows_busy: int) -> None:
        super().__init__()
        self.windows_busy = windows_busy
        self.windows = 0
        self.active: Any = None

    def generate(self, prompts: list[str], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True) -> Any:
        # Call 0 is the warm-up; each window then makes two calls (4 prompts in batches of 2).
        if len(self.calls) % 2 == 1:
            self._window()
        _burn(0.05)
        return super().generate(prompts, max_new_tokens, ignore_eos, draft)

    def _window(self) -> None:
        self.windows += 1
        if self.active is not None and self.windows > self.windows_busy:
            self.active.__exit__(None, None, None)
            self.active = None
        if self.active is None and self.windows <= self.windows_busy:
            self.active = burners(CORES)
            self.active.__enter__()
            time.sleep(0.3)

    def close(self) -> None:
        if self.active is not None:
            self.active.__exit__(None, None, None)


def need_a_quiet_machine() -> None:
    """The tests that expect a quiet window need the machine quiet to begin with (CI is: only the
    test run is on it); beside other work they cannot tell, and say so instead of failing."""
    r = sample_load(CORES, 1.0)
    if r.busy_reason(20, 50):
        pytest.skip(f"the machine is already busy ({r.detail()}): no quiet window to expect")


def guard(retries: int) -> LoadGuard:
    return LoadGuard(CORES, max_other_pct=20, max_steal_pct=50, retries=retries, wait_s=0)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat (Linux)")
def test_a_busy_window_is_measured_again_and_the_quiet_one_kept() -> None:
    need_a_quiet_machine()
    eng: Any = BurnOnceEngine(windows_busy=1)
    try:
        r = measure_throughput(eng, ["a", "b", "c", "d"], 2, 8, 1, 1, CpuTimeEstimate(10), guard=guard(2))
    finally:
        eng.close()
    assert r.busy_remeasures == 1 and eng.windows == 2
    assert r.load is not None and r.load.other_cpu_pct <= 20


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat (Linux)")
def test_a_machine_that_stays_busy_fails_the_trial() -> None:
    eng: Any = BurnOnceEngine(windows_busy=99)
    try:
        with pytest.raises(TrialError, match=r"machine busy: \d+ % of the target's CPU time went to other processes"):
            measure_throughput(eng, ["a", "b", "c", "d"], 2, 8, 1, 1, CpuTimeEstimate(10), guard=guard(1))
    finally:
        eng.close()
    assert eng.windows == 2  # measured twice (one retry), busy both times


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat (Linux)")
def test_no_trial_measured_beside_a_burner_reaches_the_frontier(tmp_path: Path) -> None:
    """A whole search on all cores with burners running beside it: every trial is measured, found
    busy, measured again and failed as busy; nothing is ranked. The same search alone ranks."""
    need_a_quiet_machine()
    search = {"trials": 2, "sampler": "grid", "busy_retries": 1, "busy_wait_s": 0, "max_other_cpu_pct": 10}
    over = {"accuracy": {"tasks": []}, "objectives": [{"name": "tokens_per_s"}], "space": {"hardware": ["cpu"]}}
    (tmp_path / "busy").mkdir()
    (tmp_path / "quiet").mkdir()
    busy_cfg = parse_config(fake_config(tmp_path / "busy", search=search, **over), base_dir=str(tmp_path))
    with burners(CORES):
        study, _ = run_search(busy_cfg)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 2 and all("machine busy" in t.user_attrs["fail_reason"] for t in failed)
    assert pareto_trials(study, busy_cfg) == []

    quiet_cfg = parse_config(fake_config(tmp_path / "quiet", search=search, **over), base_dir=str(tmp_path))
    study, _ = run_search(quiet_cfg)
    kept = measured_trials(study)
    assert len(kept) == 2 and pareto_trials(study, quiet_cfg)
    assert all(m.record.metrics["other_cpu_pct"] <= 10 and "busy_remeasures" in m.record.metrics for m in kept)
