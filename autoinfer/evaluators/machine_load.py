"""How busy the machine was while a trial measured: CPU time that went to other processes, and steal.

A trial's tokens/s is only its own if the cores it runs on were its own. Over the measured window
this reads the machine's CPU time (`/proc/stat`) and the CPU time of the trial's own process tree
(the trial process, its threads, and any child processes: vLLM works in children), and calls the
difference *other*. What counts as busy depends on the target: `cpu:1` on a 2-core machine leaves
one core free, so one other busy core does not touch it; on `cpu:2` the same core takes half the
target's capacity. `other_cpu_pct` is therefore the other processes' CPU time *beyond the cores the
target leaves free*, as a percentage of the target's own core-seconds.

Steal (time the hypervisor ran another guest on our virtual CPUs) slows a trial the same way and
is invisible to the processes here; it is reported as a share of the machine's CPU time.

Linux only; elsewhere `available()` is False and nothing is judged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01  # /proc counts in clock ticks


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU seconds since boot, summed over its CPUs (the `cpu` line of /proc/stat)."""

    busy_s: float  # user + nice + system + irq + softirq (guest time is inside user)
    steal_s: float
    total_s: float  # busy + idle + iowait + steal


def available() -> bool:
    return (PROC / "stat").is_file()


def machine_times(proc: Path = PROC) -> CpuTimes:
    fields = (proc / "stat").read_text().splitlines()[0].split()
    assert fields[0] == "cpu", "first line of /proc/stat is the aggregate cpu line"
    v = [int(x) * TICK_S for x in fields[1:9]] + [0.0] * (9 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    busy = user + nice + system + irq + softirq
    return CpuTimes(busy, steal, busy + idle + iowait + steal)


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None  # exited between listing and reading
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int, proc: Path = PROC) -> list[int]:
    """Every live process below `root` (children, their children, ...)."""
    parent: dict[int, int] = {}
    for d in proc.iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name), proc)
            if f is not None:
                parent[int(d.name)] = int(f[1])
    out: list[int] = []
    frontier = {root}
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out.extend(kids)
        frontier = set(kids)
    return out


def tree_cpu_s(root: int | None = None, proc: Path = PROC) -> float:
    """CPU seconds of a process tree: the root (every thread, and the children it has reaped) plus
    each live descendant (utime + stime + the children *it* reaped). For this process its own part
    is `time.process_time()` (nanoseconds; /proc and `os.times()` count 10 ms ticks, which read 0
    over a window of a few milliseconds); the children it reaped come from `os.times()`."""
    root = os.getpid() if root is None else root
    if root == os.getpid():
        t = os.times()
        total = time.process_time() + t.children_user + t.children_system
    else:
        f = _stat_fields(root, proc)
        total = sum(int(x) for x in f[11:15]) * TICK_S if f else 0.0
    for pid in descendants(root, proc):
        f = _stat_fields(pid, proc)
        if f is not None:
            total += sum(int(x) for x in f[11:15]) * TICK_S  # utime stime cutime cstime
    return total


@dataclass(frozen=True)
class LoadReading:
    """What the machine did during one window (frozen; seconds are CPU-seconds unless wall)."""

    wall_s: float
    machine_cores: int
    target_cores: int  # the cores the trial's target takes (cpu:N -> N, cpu -> all)
    own_cpu_s: float  # the trial's process tree
    busy_cpu_s: float  # every process on the machine
    steal_s: float
    total_cpu_s: float  # the machine's CPU time in the window, idle included

    @property
    def other_cpu_s(self) -> float:
        """Other processes' CPU seconds, less what reading two counters in ticks can be off by
        (one tick per CPU per read): on short windows that rounding alone looks like a busy core."""
        slack = 2 * self.machine_cores * TICK_S
        return max(0.0, self.busy_cpu_s - self.own_cpu_s - slack)

    @property
    def other_cpu_pct(self) -> float:
        """Other processes' CPU time beyond the cores the target leaves free, as % of the target's."""
        if self.wall_s <= 0:
            return 0.0
        spare = max(0, self.machine_cores - self.target_cores)
        intruding = max(0.0, self.other_cpu_s / self.wall_s - spare)
        return 100.0 * intruding / self.target_cores

    @property
    def steal_pct(self) -> float:
        return 100.0 * self.steal_s / self.total_cpu_s if self.total_cpu_s > 0 else 0.0

    def busy_reason(self, max_other_pct: float, max_steal_pct: float) -> str | None:
        """Why this window does not count as the trial's own, or None when it does."""
        if self.other_cpu_pct > max_other_pct:
            return (
                f"{self.other_cpu_pct:.0f} % of the target's CPU time went to other processes "
                f"({self.other_cpu_s:.2f} CPU-s over {self.wall_s:.2f} s on {self.machine_cores} cores, "
                f"{self.target_cores} of them the target's; search.max_other_cpu_pct is {max_other_pct:g})"
            )
        if self.steal_pct > max_steal_pct:
            stolen = f"the hypervisor stole {self.steal_pct:.0f} % of the CPU time"
            return f"{stolen} (search.max_steal_pct is {max_steal_pct:g})"
        return None

    def detail(self) -> str:
        return (
            f"other processes {self.other_cpu_s:.3f} CPU-s, own tree {self.own_cpu_s:.3f} CPU-s, steal "
            f"{self.steal_s:.3f} s over {self.wall_s:.3f} s wall on {self.machine_cores} cores "
            f"(target {self.target_cores})"
        )


class LoadBox:
    reading: LoadReading | None = None


@contextmanager
def measure_load(target_cores: int, root: int | None = None) -> Iterator[LoadBox]:
    """Context manager: the box's `.reading` is the window's `LoadReading` once the block exits."""
    box = LoadBox()
    cores = os.cpu_count() or 1
    m0, own0, t0 = machine_times(), tree_cpu_s(root), time.perf_counter()
    yield box
    m1, own1, wall = machine_times(), tree_cpu_s(root), time.perf_counter() - t0
    box.reading = LoadReading(
        wall, cores, min(target_cores, cores), own1 - own0, m1.busy_s - m0.busy_s,
        m1.steal_s - m0.steal_s, m1.total_s - m0.total_s,
    )  # fmt: skip


def sample_load(target_cores: int, seconds: float = 1.0) -> LoadReading:
    """How busy the machine is right now, for a target, over `seconds` of this process idling."""
    with measure_load(target_cores) as box:
        time.sleep(seconds)
    assert box.reading is not None
    return box.reading


@dataclass(frozen=True)
class LoadGuard:
    """When a measured window counts (search.max_other_cpu_pct, max_steal_pct) and what to do when
    it does not: wait up to `wait_s` for the machine to quiet down, then measure again, at most
    `retries` times."""

    target_cores: int
    max_other_pct: float
    max_steal_pct: float
    retries: int
    wait_s: float

    def wait_for_quiet(self, poll_s: float = 1.0) -> LoadReading:
        """Sample the machine until it is quiet for the target or `wait_s` is spent; the last sample."""
        deadline = time.monotonic() + self.wait_s
        while True:
            r = sample_load(self.target_cores, poll_s)
            if r.busy_reason(self.max_other_pct, self.max_steal_pct) is None or time.monotonic() >= deadline:
                return r
