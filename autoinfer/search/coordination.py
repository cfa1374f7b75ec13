"""How one worker shares a study with the others: the budget, claiming trials, handing back a
surplus one, recovering trials whose worker is gone, not measuring a point twice, and leaving a
trial to the worker that is about to log it.

Workers never talk to each other, only to the study's storage: every rule here is decided from
what the storage holds, with the storage's own clock where time matters, so that several workers
looking at once come to one answer. The search loop (autoinfer.search.study) asks a
`Coordinator` what to do next and whether a point is its to measure.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoinfer.config import Config
from autoinfer.engines import TrialPoint
from autoinfer.record import point_of
from autoinfer.search import _optuna
from autoinfer.search._optuna import BaseHeartbeatThread
from autoinfer.spaces import enumerate_points

# Who runs a trial: host:pid. AUTOINFER_WORKER_ID names it otherwise (tests stand in for another machine).
WORKER = os.environ.get("AUTOINFER_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"
STALE_BEATS = 3  # missed heartbeats after which a running trial's worker counts as gone
# Test hook, checked once per trial (one environment lookup): a worker run with this set SIGKILLs
# itself right after taking a trial and before that trial's first heartbeat, the window in which
# only `never_beaten_trial_ids` can see that it died (tests/search/test_scale_out.py).
DIE_AFTER_ASK = "AUTOINFER_TEST_DIE_AFTER_ASK"


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that use up the budget: measured or failed, not repeats, interruptions or retried failures."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    out = []
    for t in trials:
        if t.number in retried or "duplicate_of" in t.user_attrs:
            continue
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")):
            out.append(t)
    return out


def measured_points(counted: Iterable[FrozenTrial]) -> dict[TrialPoint, int]:
    """Point -> number of the first trial that measured (or failed) it."""
    out: dict[TrialPoint, int] = {}
    for t in counted:
        point = point_of(t)
        if point is not None:
            out.setdefault(point, t.number)
    return out


def running(study: optuna.Study, below: int | None = None) -> list[FrozenTrial]:
    """Trials in flight on any worker (numbered below `below`, if given)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in trials if below is None or t.number < below]


def retry_attrs(t: FrozenTrial) -> dict[str, Any]:
    """User attributes of a re-queued copy of `t` (the point lets grid search see it is queued)."""
    attrs: dict[str, Any] = {"retry_of": t.number}
    point = point_of(t)
    if point is not None:
        attrs["point"] = point.as_dict()
    return attrs


def fail_and_requeue(study: optuna.Study, t: FrozenTrial, reason: str, worker: str | None = None) -> bool:
    """Record why a RUNNING trial was lost, fail it and queue its point again. Several workers may
    look at once: only the one whose state change wins queues the point."""
    storage, tid = _optuna.storage(study), _optuna.trial_id(t)
    try:
        storage.set_trial_user_attr(tid, "interrupted", True)
        storage.set_trial_user_attr(tid, "fail_reason", reason)
        storage.set_trial_user_attr(tid, "lost_by", worker or WORKER)  # who records it downstream (being_logged)
        if not storage.set_trial_state_values(tid, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker got there first
    # The point it was given (queued, or planned by the sampler), else what it had drawn; a trial
    # lost before either is queued empty, to be sampled afresh in its place.
    params = t.system_attrs.get("fixed_params") or t.params
    study.enqueue_trial(params, user_attrs=retry_attrs(t))
    return True


def recover_interrupted(study: optuna.Study, worker: str | None = None) -> list[int]:
    """Mark RUNNING trials of dead local workers FAIL(interrupted) and queue their points again;
    returns the numbers of the trials this worker failed."""
    lost = []
    for t in running(study):
        if not _gone_here(str(t.user_attrs.get("worker", ""))):
            continue  # another machine's worker, or a live process here: not ours to touch
        if fail_and_requeue(study, t, "interrupted (search process stopped)", worker):
            lost.append(t.number)
    return lost


def recover_stale(study: optuna.Study, worker: str | None = None) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker is gone, on any machine: those whose heartbeat
    went stale (Optuna's check), and those that never beat at all and have run longer than the
    grace period (a worker killed between taking the trial and its first beat, which Optuna's
    check cannot see: without this, the other workers would wait for that trial forever).
    Records why before failing each one; returns the numbers of the trials this worker failed."""
    interval = _optuna.heartbeat_interval(study)
    if not interval:
        return []
    grace = STALE_BEATS * interval
    storage = _optuna.storage(study)
    lost = []
    for tid in _optuna.stale_trial_ids(study):
        t = storage.get_trial(tid)
        gone = t.user_attrs.get("worker", "?")
        reason = f"its worker {gone} stopped beating for over {grace} s (machine or process gone)"
        if fail_and_requeue(study, t, reason, worker):
            lost.append(t.number)
    for tid in _optuna.never_beaten_trial_ids(study, grace):
        t = storage.get_trial(tid)
        gone = t.user_attrs.get("worker", "?")
        reason = f"its worker {gone} took it and never beat; gone for over {grace} s (machine or process gone)"
        if fail_and_requeue(study, t, reason, worker):
            lost.append(t.number)
    return lost


def requeue_failed(study: optuna.Study) -> int:
    """Queue the points of failed trials again (after fixing what made them fail)."""
    n = 0
    for t in counted_trials(study):
        if t.state == TrialState.FAIL:
            study.enqueue_trial(t.params, user_attrs=retry_attrs(t))
            n += 1
    return n


def _gone_here(worker: str) -> bool:
    """Whether a worker id (host:pid) names a process of this machine that no longer runs."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and not (pid.isdigit() and _alive(int(pid)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def being_logged(
    study: optuna.Study, grace_s: float, worker: str = WORKER, trials: list[FrozenTrial] | None = None
) -> set[int]:
    """Finished trials (of `trials`, else all) whose worker may still be logging them to MLflow:
    another worker, alive as far as we can tell (not a dead process on this machine), that still
    beats for the trial (a worker beats until it has told and logged it) or finished it within
    `grace_s`, on the storage's clock (the clock the finishing worker's stamp is compared with on
    every machine, not this one's). A trial failed as lost is logged by the worker that failed it
    (`lost_by`), so for the others it counts as being logged by that worker, from the moment it
    was failed, like any other finished trial: without this, two workers catching up at once
    would each log it, and MLflow would hold two runs of one trial."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    beating = _optuna.beating_trial_ids(study, grace_s)
    now = _optuna.storage_utc_now(study)
    out = set()
    for t in trials:
        lost = bool(t.user_attrs.get("interrupted"))
        who = str(t.user_attrs.get("lost_by" if lost else "worker", worker))
        if who == worker or _gone_here(who) or t.datetime_complete is None:
            continue
        recent = (now - _optuna.as_utc(t.datetime_complete)).total_seconds() < grace_s
        # A lost trial's heartbeat rows are the gone worker's, not its logger's: only the grace counts.
        if recent or (not lost and _optuna.trial_id(t) in beating):
            out.add(t.number)
    return out


def held_elsewhere(study: optuna.Study, number: int, point: TrialPoint, wait_s: float = 30.0) -> int | None:
    """The number of an earlier trial that holds `point` too: one measuring it (two workers sampled
    it at once), or one queued with it (a lost trial's point, re-queued while another worker
    sampled it afresh). The earliest trial keeps a point, so of any two exactly one goes ahead;
    both states are read in one query, so a queued trial being popped is seen in one or the other.
    A trial still being sampled has not said its point yet, so wait (briefly) until every earlier
    running one has, or the two could both go ahead."""
    deadline = time.monotonic() + wait_s
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        ahead = [t for t in trials if t.number < number]
        for t in ahead:
            if point_of(t) == point:
                return t.number
        unsaid = [t for t in ahead if t.state == TrialState.RUNNING and point_of(t) is None]
        if not unsaid or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


@dataclass(frozen=True)
class Next:
    """What the loop does next: ask for a trial, wait for other workers, or stop (`say`: why, if
    worth saying)."""

    action: Literal["ask", "wait", "stop"]
    say: str = ""


@dataclass(frozen=True)
class Holder:
    """Who already has a point: a trial that `measured` it (answer from its record), or one that
    holds it (`held`: measuring or queued with it; hand this trial back)."""

    kind: Literal["measured", "held"]
    number: int


class Coordinator:
    """One worker's side of a shared study. The loop asks it:

    - `recover_interrupted()` once, `recover()` every round: trials to fail and re-queue;
    - `next()`: ask, wait or stop (budget, space measured, timeout, the rest running elsewhere);
    - `ask()`: a trial this worker can measure, beating from the moment it exists;
    - `surplus(trial)`: whether to hand the trial back (the budget was met meanwhile);
    - `holder(number, point)`: whether another trial has the point (measured or held);
    - `interrupted(trial)`, `taken_from_us(trial)`: a trial cut short here, or failed by another;
    - `to_catch_up()`: finished trials no other worker is about to log to MLflow.
    """

    def __init__(self, study: optuna.Study, config: Config, worker: str = WORKER) -> None:
        from autoinfer.spaces.space import owned_hardware

        self.study = study
        self.worker = worker
        self.budget = config.search.trials
        self.timeout_s = config.search.timeout_s
        # Lost trials: a heartbeat this old, or none for this long. Logging: other workers log their
        # own trials; one that finished this long ago, no longer beats and is still missing from
        # MLflow lost its worker before it was logged.
        self.grace_s = STALE_BEATS * config.search.heartbeat_s
        self.own_points = {point for _, point in enumerate_points(config)}  # others may hold more
        self._owned = {(e, h) for e in config.space.engine for h in owned_hardware(config, e)}
        self._started = time.monotonic()
        self._beat: BaseHeartbeatThread | None = None
        self._claimed: int | None = None
        # Lost trials whose state change this worker won: its to log, whatever `lost_by` says (two
        # workers failing one trial at once both write it before one of them wins).
        self._failed_here: set[int] = set()
        self.done = 0  # trials counted toward the budget, as of the last `next()`
        _optuna.claim_trials(study, self._claim)

    def recover_interrupted(self) -> list[int]:
        lost = recover_interrupted(self.study, self.worker)
        self._failed_here.update(lost)
        return lost

    def recover(self) -> list[int]:
        lost = recover_stale(self.study, self.worker)
        self._failed_here.update(lost)
        return lost

    def next(self) -> Next:
        counted = counted_trials(self.study)
        self.done = len(counted)
        if self.done >= self.budget:
            return Next("stop")
        if self.own_points <= measured_points(counted).keys():
            return Next("stop", f"every one of the {len(self.own_points)} valid points has been measured")
        if self.timeout_s and time.monotonic() - self._started > self.timeout_s:
            return Next("stop", f"search.timeout_s ({self.timeout_s:g} s) reached")
        if self.done + len(running(self.study)) >= self.budget:
            # The rest of the budget is being measured by other workers. Stay to re-run a trial
            # whose worker dies (nobody else may be left to notice), and stop when it is met.
            return Next("wait", "the rest of the budget is running on other workers; waiting for it")
        return Next("ask")

    def ask(self) -> tuple[optuna.Trial, BaseHeartbeatThread]:
        """A trial to measure (queued or new) and its heartbeat, which beats until joined. If the
        ask fails after the trial was taken (Ctrl-C while the sampler works), the trial is failed
        and its point re-queued before the error goes on."""
        self._beat = self._claimed = None
        try:
            with warnings.catch_warnings():  # heartbeats run by hand here, not through study.optimize
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
        except BaseException:
            if self._beat is not None:
                self._beat.join()
            if self._claimed is not None:
                t = _optuna.storage(self.study).get_trial(self._claimed)
                fail_and_requeue(self.study, t, "interrupted while its point was being chosen", self.worker)
            raise
        assert self._beat is not None and self._claimed == _optuna.trial_id(trial)
        return trial, self._beat

    def _claim(self) -> int:
        """`Study.ask` takes its trial from here: a queued point this worker can measure (queued
        points, the grid or re-queued lost trials, may be another machine's; the claim is
        WAITING -> RUNNING, which one worker wins), or else a new trial. It beats from here on."""
        tid = self._pop_own()
        if tid is None:
            tid = _optuna.create_trial(self.study)
        self._claimed = tid
        if os.environ.get(DIE_AFTER_ASK):
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (see DIE_AFTER_ASK)
        self._beat = _optuna.start_heartbeat(self.study, tid)
        _optuna.storage(self.study).set_trial_user_attr(tid, "worker", self.worker)
        return tid

    def _pop_own(self) -> int | None:
        storage = _optuna.storage(self.study)
        for t in storage.get_all_trials(_optuna.study_id(self.study), deepcopy=False, states=(TrialState.WAITING,)):
            point = t.user_attrs.get("point") or {}
            if point and (point.get("engine"), point.get("hardware")) not in self._owned:
                continue  # another worker's hardware: left in the queue for it
            try:
                if storage.set_trial_state_values(_optuna.trial_id(t), state=TrialState.RUNNING):
                    return _optuna.trial_id(t)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker took and finished it meanwhile
        return None

    def surplus(self, trial: optuna.Trial) -> bool:
        """Two workers that both saw one trial left may both have asked for it: the later-numbered
        one hands its trial back (PRUNED, not counted, not logged; a queued point goes back in the
        queue), so a shared study measures exactly its budget."""
        if len(counted_trials(self.study)) + len(running(self.study, below=trial.number)) < self.budget:
            return False
        frozen = self.frozen(trial)
        fixed = frozen.system_attrs.get("fixed_params")
        if fixed:
            self.study.enqueue_trial(fixed, user_attrs={k: v for k, v in frozen.user_attrs.items() if k != "worker"})
        trial.set_user_attr("surplus", True)
        self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def holder(self, number: int, point: TrialPoint) -> Holder | None:
        """Another trial that has `point`: one that measured it, else an earlier one measuring or
        queued with it (`held_elsewhere`). Measured is read again after that, since a trial may
        finish between the two reads (states only move RUNNING -> finished)."""
        measured = self._measured(point)
        if measured is None:
            held = held_elsewhere(self.study, number, point)
            if held is not None:
                return Holder("held", held)
            measured = self._measured(point)
        return Holder("measured", measured) if measured is not None else None

    def _measured(self, point: TrialPoint) -> int | None:
        return measured_points(counted_trials(self.study)).get(point)

    def frozen(self, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
        """The trial as the storage holds it now."""
        return _optuna.storage(self.study).get_trial(_optuna.trial_id(trial))

    def interrupted(self, trial: optuna.Trial) -> FrozenTrial | None:
        """Fail a trial cut short here (Ctrl-C, SIGTERM) and queue its point again; the failed trial
        (None if it was already finished: told, or failed by another worker)."""
        frozen = self.frozen(trial)
        if frozen.state != TrialState.RUNNING:
            return None
        if not fail_and_requeue(self.study, frozen, "interrupted (Ctrl-C or SIGTERM)", self.worker):
            return None
        return self.frozen(trial)

    def taken_from_us(self, trial: optuna.Trial) -> bool:
        """Whether another worker finished this worker's trial: failed it as lost (its heartbeat
        looked stale, e.g. while this machine was suspended or its database link was down)."""
        frozen = self.frozen(trial)
        return frozen.state.is_finished() and bool(frozen.user_attrs.get("interrupted"))

    def being_logged(self) -> set[int]:
        return being_logged(self.study, self.grace_s, self.worker)

    def to_catch_up(self) -> list[FrozenTrial]:
        """Finished trials that nobody else is about to log: read once, then judged (a trial that
        finishes after the read waits for the next catch-up, rather than slipping past the check)."""
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        busy = being_logged(self.study, self.grace_s, self.worker, trials) - self._failed_here
        return [t for t in trials if t.number not in busy]
