"""Run one trial in a spawned child process, so a crash, OOM kill or hang fails that trial only."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the child runs: a "module:function" taking (payload, stage callback) and returning a result
# (a TrialRecord for real trials; anything picklable for tests).
DEFAULT_ENTRY = "autoinfer.trial:run_payload"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class ChildOutcome:
    ok: bool
    result: Any
    reason: str  # empty when ok
    log_path: str
    duration_s: float
    # (stage, seconds after the process was started when the child reported it), in order; the
    # time before the first is process start-up and imports, the last lasts until the result.
    stages: tuple[tuple[str, float], ...] = ()

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per stage (a stage entered twice is summed), with `spawn` for start-up."""
        out: dict[str, float] = {}
        marks = [("spawn", 0.0), *self.stages, ("", self.duration_s)]
        for (name, t0), (_, t1) in itertools.pairwise(marks):
            out[name] = out.get(name, 0.0) + max(0.0, t1 - t0)
        return out


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel SIGKILL this process when the search process dies, however it dies.

    Without this a `kill -9` of the search leaves its trial running, still holding cores and
    memory, and overlapping the next run's first trial. Linux only (prctl); elsewhere the search
    process's own cleanup is all there is. `signum`: another signal instead, for a process that
    must stop children of its own on the way out (a SIGKILLed vLLM server leaves its EngineCore).
    """
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _kill_own_group(signum: int, frame: Any) -> None:
    os.killpg(0, signal.SIGKILL)  # this process's group: the trial and everything it started


def _child_main(payload: dict[str, Any], conn: Any, parent_pid: int) -> None:
    # Its own process group, so whatever the trial starts (vLLM's engine core and workers, which
    # outlive a SIGKILLed parent) is found and stopped with it: see _kill_group.
    os.setpgid(0, 0)
    # If the search dies without its cleanup (kill -9, the OOM killer), the kernel sends SIGTERM,
    # and the handler takes the whole group down, children included; a plain SIGKILL of this
    # process alone would leave vLLM's engine core running.
    signal.signal(signal.SIGTERM, _kill_own_group)
    die_with_parent(parent_pid, signal.SIGTERM)
    # Ctrl-C reaches the whole process group; the search process alone decides what it means
    # (kill this child, record the trial as interrupted), so the child ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Everything the libraries print goes to the trial's log file, not over the progress display.
    fd = os.open(payload["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        import importlib

        module, _, func = payload.get("entry", DEFAULT_ENTRY).partition(":")
        entry = getattr(importlib.import_module(module), func)
        result = entry(payload, lambda s: conn.send(("stage", s)))
        conn.send(("result", result))
    except BaseException as e:  # noqa: BLE001 - report anything, including SystemExit
        traceback.print_exc()
        conn.send(("error", f"{type(e).__name__}: {e}".strip()))
    finally:
        conn.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        sig = signal.Signals(-code).name
        hint = " (likely killed for running out of memory)" if sig == "SIGKILL" else ""
        return f"trial process crashed with {sig}{hint}"
    return f"trial process exited with code {code} without a result"


def _kill_group(pgid: int | None) -> None:
    """SIGKILL what is left of a trial's process group once the trial process is gone: children
    it started and did not stop (a timed-out or crashed vLLM trial leaves its engine core running,
    holding a core and gigabytes). Nothing left is the usual case."""
    if pgid is None or sys.platform == "win32":
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: every process of the trial has exited


def run_isolated(
    payload: dict[str, Any],
    timeout_s: float,
    on_stage: Callable[[str], None] = lambda s: None,
) -> ChildOutcome:
    """Run `payload["entry"]` (default: one trial) in a fresh interpreter and collect its result."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    Path(payload["log_path"]).parent.mkdir(parents=True, exist_ok=True)
    proc = ctx.Process(target=_child_main, args=(payload, child, os.getpid()), daemon=True)
    t0 = time.monotonic()
    proc.start()
    child.close()
    result: Any = None
    reason = ""
    stages: list[tuple[str, float]] = []
    try:
        while True:
            remaining = timeout_s - (time.monotonic() - t0)
            if remaining <= 0:
                reason = f"timed out after {timeout_s:g} s"
                break
            if parent.poll(min(remaining, 0.5)):
                try:
                    kind, value = parent.recv()
                except EOFError:
                    break  # the child died; its exit code tells how
                if kind == "stage":
                    stages.append((value, time.monotonic() - t0))
                    on_stage(value)
                elif kind == "result":
                    result = value
                    break
                else:
                    reason = value
                    break
            elif not proc.is_alive():
                break
    finally:
        if stages:
            stages.append(("exit", time.monotonic() - t0))  # the child's tear-down, until it is reaped
        # Ctrl-C lands here too: never leave a child holding cores or memory.
        proc.join(timeout=10 if result is not None or reason else 0.1)
        if proc.is_alive():
            proc.kill()
            proc.join()
        _kill_group(proc.pid)
    if result is None and not reason:
        reason = _describe_exit(proc.exitcode)
    duration = time.monotonic() - t0
    return ChildOutcome(result is not None, result, reason, payload["log_path"], duration, tuple(stages))
