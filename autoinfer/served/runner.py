"""One search worker's served trials: one server, many load points.

Starting a server costs seconds (llama-server) to minutes (vLLM: a load, perhaps a compile); a load
point costs seconds. So the worker, not the trial, owns the server: a trial whose point differs from
the last one only in its load (`TrialPoint.server()` equal) is measured on the server that is
already running, with its prompt caches emptied first (`served.trial.reset_caches`). Only the
first trial of a server runs a child process (`autoinfer.trial:prepare_payload`: load the engine
there for what it records and for accuracy, isolated as every trial's load is); the server is
then started by the worker, so it outlives that child, and the load points are measured from the
worker. Each record says `server_reused`, and only the trial that started the server carries
`server_start_s`.

Billing: the server is the worker's child, so the busy-machine guard (which reads the worker's
process tree) counts it and the load generator as the trial's own work, and a CPU-time energy
estimate reads the server's tree over the measured window only: a reused server's idle time
between trials is billed to no trial.

The worker's `close()` stops the server (a different server is needed, the search ends, or it is
interrupted); the server also gets SIGTERM if the worker dies outright (parent-death signal), as
verify's servers do.

Steering: a grid enumerates the load last, so every load point of a server comes in a row; for
the other samplers, once a server's first load point is measured the others are queued next
(`queue_siblings`), so a sampler that picks a server gets its whole load sweep on one start.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoinfer.config import Config
from autoinfer.engines.base import TrialPoint
from autoinfer.search.isolation import ChildOutcome, run_isolated
from autoinfer.served.trial import Serving, measure_load_point, serving
from autoinfer.trial import Prepared, load_guard, served_record

PREPARE_ENTRY = "autoinfer.trial:prepare_payload"


@dataclass
class _Current:
    server: TrialPoint  # the point without its load
    prep: Prepared
    serving: Serving
    stack: contextlib.ExitStack
    trials: int = 0  # load points measured on it so far
    stages: list[tuple[str, float]] = field(default_factory=list)


class ServedRunner:
    def __init__(self, config: Config, stage: Callable[[str], None]) -> None:
        self.config = config
        self.stage = stage
        self.current: _Current | None = None
        self.starts = 0  # servers started by this worker

    def measure(self, payload: dict[str, Any], point: TrialPoint, timeout_s: float) -> ChildOutcome:
        """One served trial; its outcome as `run_isolated` gives one (a record, or why it failed)."""
        t0 = time.monotonic()
        log = Path(payload["log_path"])
        cur = self.current
        if cur is None or cur.server != point.server():
            self.close()
            prepared = run_isolated({**payload, "entry": PREPARE_ENTRY}, timeout_s, self.stage)
            if not prepared.ok:
                return prepared
            try:
                marks = [*prepared.stages, ("server start", time.monotonic() - t0)]
                cur = self._start(point, prepared.result, marks)
            except Exception as e:  # noqa: BLE001 - a server that will not start fails this trial only
                return self._failed(log, t0, e)
        assert cur is not None
        try:
            marks = self._marks(cur, t0)
            m = measure_load_point(self.config, point, cur.serving, cur.prep.prompts, load_guard(self.config, point),
                                   self.stage, reused=cur.trials > 0)  # fmt: skip
            record = served_record(self.config, point, payload["identity"], cur.prep, m)
        except Exception as e:  # noqa: BLE001 - the server may be broken: stop it; the next trial starts anew
            self.close()
            return self._failed(log, t0, e)
        cur.trials += 1
        _write_log(log, cur, point)
        return ChildOutcome(True, record, "", str(log), time.monotonic() - t0, tuple(marks))

    def _start(self, point: TrialPoint, prep: Prepared, stages: list[tuple[str, float]]) -> _Current:
        stack = contextlib.ExitStack()
        try:
            s = stack.enter_context(serving(self.config, point, prep.info, self.stage, trap_sigterm=False))
        except BaseException:
            stack.close()
            raise
        self.starts += 1
        self.current = _Current(point.server(), prep, s, stack, stages=stages)
        return self.current

    @staticmethod
    def _marks(cur: _Current, t0: float) -> list[tuple[str, float]]:
        """The stages of this trial, in seconds from its start: the preparation's (first trial of a
        server only), then the load."""
        marks = list(cur.stages) if cur.trials == 0 else []
        marks.append(("served load", time.monotonic() - t0))
        return marks

    def _failed(self, log: Path, t0: float, e: BaseException) -> ChildOutcome:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write("".join(traceback.format_exception(e)))
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        return ChildOutcome(False, None, reason, str(log), time.monotonic() - t0)

    def close(self) -> None:
        """Stop the running server, with every process it started."""
        if self.current is not None:
            current, self.current = self.current, None
            current.stack.close()


def _write_log(log: Path, cur: _Current, point: TrialPoint) -> None:
    """The trial's log: which server served it, and the tail of that server's log so far."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail = cur.serving.log.read_text(errors="replace").splitlines()[-20:] if cur.serving.log.exists() else []
    with log.open("a") as f:
        f.write(f"served {point.label()} on the server of {cur.server.label()} "
                f"(load point {cur.trials} of this server; command: {cur.serving.cmd.line})\n")  # fmt: skip
        f.write("server log, last lines:\n" + "\n".join(tail) + "\n")


def queue_siblings(study: optuna.Study, trial: FrozenTrial, config: Config, point: TrialPoint) -> int:
    """Queue the other load points of `point`'s server to be measured next (not for a grid, which
    enumerates them in a row already); how many were queued."""
    served = config.workload.served
    if served is None or config.search.sampler == "grid" or "load" not in trial.params:
        return 0
    from autoinfer.record import point_of

    taken = {point_of(t) for t in study.get_trials(deepcopy=False)}
    n = 0
    for load in served.loads():
        other = TrialPoint(**{**point.as_dict(), "load": load})
        if other not in taken:
            study.enqueue_trial({**trial.params, "load": load}, user_attrs={"point": other.as_dict()})
            n += 1
    return n
