"""The search loop: ask Optuna for a point, measure it in a child process, tell, track.

Resumable: the study lives in an RDB storage (SQLite by default). Finished trials are never run
again; a trial cut short by Ctrl-C or a crash of this process is marked FAIL ("interrupted") and
its point re-queued, so the next `autoinfer search` on the same config measures it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from autoinfer.config import Config
from autoinfer.engines import TrialPoint
from autoinfer.errors import ConfigError
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.identity import accuracy_key, base_of, first_difference, identity_hash, study_identity, upgrade
from autoinfer.record import STAGE_ATTR, TrialRecord, copy_record, point_of, record_of, save_point, save_record
from autoinfer.search.isolation import ChildOutcome, run_isolated
from autoinfer.search.pareto import objective_values, violations
from autoinfer.search.samplers import owns_everything, worker_sampler
from autoinfer.search.storage import ensure_sqlite_dir
from autoinfer.spaces import NoValidPoint, enumerate_points, sample_point

if TYPE_CHECKING:
    from autoinfer.tracking.mlflow_tracker import Tracker

# Who runs a trial: host:pid. AUTOINFER_WORKER_ID names it otherwise (tests stand in for another machine).
WORKER = os.environ.get("AUTOINFER_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"
STALE_BEATS = 3  # missed heartbeats after which a running trial's worker counts as gone
MAX_REJECTIONS = 200  # samples in a row that repeat a measured point before we call the space done


@dataclass
class Events:
    """Callbacks the CLI uses for its progress display (all optional)."""

    trial_started: Callable[[int, TrialPoint, int, int], None] = lambda n, p, i, total: None
    stage: Callable[[str], None] = lambda s: None
    trial_finished: Callable[[FrozenTrial], None] = lambda t: None
    message: Callable[[str], None] = lambda m: None


def _rdb_storage(url: str, heartbeat_s: int | None = None, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Open (and on first use create) the storage; workers starting together may race to create
    its tables, and the loser sees an integrity/duplicate error: wait and try again."""
    beats: dict[str, Any] = {}
    if heartbeat_s:
        beats = {"heartbeat_interval": heartbeat_s, "grace_period": STALE_BEATS * heartbeat_s}
    for i in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **beats)
        except Exception:  # sqlalchemy or driver errors of a creation race: re-raised at the end
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (i + 1))
    raise AssertionError("unreachable")


IDENTITY_ATTR = "identity"


def _short(value: str, width: int = 70) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def fresh_name(config: Config, identity: dict[str, str]) -> str:
    """The study `--fresh` starts: the config's name with the identity's hash, stable per setup."""
    return f"{config.study_name}-{identity_hash(identity)}"


def check_identity(config: Config, study: optuna.Study, identity: dict[str, str]) -> None:
    """Refuse to add numbers to a study whose numbers were measured under another setup."""
    stored = study.user_attrs.get(IDENTITY_ATTR)
    n = len([t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE])
    if stored is None and n == 0:
        return
    diff = first_difference(upgrade(stored or {}, identity), identity)
    if diff is None:
        return
    field, old, new = diff
    raise ConfigError(
        field,
        f"changed since study {config.study_name!r} measured {n} trial(s) ({_short(old)} -> {_short(new)}), so new "
        "numbers would not compare with its old ones; set search.study_name to start another study, or run "
        f"`autoinfer search CONFIG --fresh` (starts study {fresh_name(config, identity)!r})",
    )


def open_study(config: Config, identity: dict[str, str] | None = None) -> optuna.Study:
    """Open (or create) the config's study after checking it was measured under the same setup."""
    identity = identity if identity is not None else study_identity(config)
    storage_url = config.search.storage
    ensure_sqlite_dir(storage_url)
    storage = _rdb_storage(storage_url, config.search.heartbeat_s)
    directions: list[Any] = [o.resolved_direction for o in config.objectives]
    names = [o.name for o in config.objectives]
    try:
        existing: optuna.Study | None = optuna.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        check_identity(config, existing, identity)
        if [d.name.lower() for d in existing.directions] != directions:
            raise ConfigError(
                "objectives",
                f"study {config.study_name!r} was created with {len(existing.directions)} objective(s) "
                f"{[d.name.lower() for d in existing.directions]}; set search.study_name to rank by others",
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True, metric names
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            directions=directions,
            sampler=worker_sampler(config),
            load_if_exists=True,
        )
        study.set_metric_names(names)
    study.set_user_attr(IDENTITY_ATTR, {**upgrade(study.user_attrs.get(IDENTITY_ATTR) or {}, identity), **identity})
    if not owns_everything(config):
        _take_only_own_points(study, config)
    return study


def _take_only_own_points(study: optuna.Study, config: Config) -> None:
    """Make `study.ask()` pop only queued points this worker can measure. Queued points (the grid,
    re-queued lost trials) may be another machine's; Optuna pops the oldest whatever it is, so
    this replaces its pop (`Study._pop_waiting_trial_id`, same claim: WAITING -> RUNNING wins once)."""
    from autoinfer.spaces.space import owned_hardware

    owned = {(e, h) for e in config.space.engine for h in owned_hardware(config, e)}
    storage = study._storage

    def pop() -> int | None:
        for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            point = t.user_attrs.get("point") or {}
            if point and (point.get("engine"), point.get("hardware")) not in owned:
                continue  # another worker's hardware: left in the queue for it
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    return int(t._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker took and finished it meanwhile
        return None

    study._pop_waiting_trial_id = pop  # type: ignore[method-assign]


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


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead local workers FAIL(interrupted) and queue their points again;
    returns the numbers of the trials this worker failed."""
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _gone_here(str(t.user_attrs.get("worker", ""))):
            continue  # another machine's worker, or a live process here: not ours to touch
        if _fail_and_requeue(study, t, "interrupted (search process stopped)"):
            lost.append(t.number)
    return lost


def _fail_and_requeue(study: optuna.Study, t: FrozenTrial, reason: str) -> bool:
    """Record why a RUNNING trial was lost, fail it and queue its point again. Several workers may
    look at once: only the one whose state change wins queues the point."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker got there first
    study.enqueue_trial(t.params, user_attrs=_retry_attrs(t))
    return True


def recover_stale(study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker stopped beating, on any machine.

    Optuna's heartbeat marks them stale; this records why before failing each one. Returns the
    numbers of the trials this worker failed.
    """
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not storage.get_heartbeat_interval():
        return []
    lost = []
    grace = STALE_BEATS * (storage.get_heartbeat_interval() or 0)
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        t = storage.get_trial(trial_id)
        worker = t.user_attrs.get("worker", "?")
        reason = f"its worker {worker} stopped beating for over {grace} s (machine or process gone)"
        if _fail_and_requeue(study, t, reason):
            lost.append(t.number)
    return lost


def _retry_attrs(t: FrozenTrial) -> dict[str, Any]:
    """User attributes of a re-queued copy of `t` (the point lets grid search see it is queued)."""
    attrs: dict[str, Any] = {"retry_of": t.number}
    point = point_of(t)
    if point is not None:
        attrs["point"] = point.as_dict()
    return attrs


def requeue_failed(study: optuna.Study) -> int:
    """Queue the points of failed trials again (after fixing what made them fail)."""
    n = 0
    for t in counted_trials(study):
        if t.state == TrialState.FAIL:
            study.enqueue_trial(t.params, user_attrs=_retry_attrs(t))
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


def _being_logged(study: optuna.Study, grace_s: float) -> set[int]:
    """Finished trials whose worker may still be logging them to MLflow: another worker, alive as
    far as we can tell (not a dead process on this machine), that finished within `grace_s`.
    Trials failed as lost carry the reason they were lost and are logged by whoever failed them."""
    now = datetime.datetime.now()
    out = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        worker = str(t.user_attrs.get("worker", WORKER))
        if worker == WORKER or _gone_here(worker) or t.user_attrs.get("interrupted") or t.datetime_complete is None:
            continue
        if (now - t.datetime_complete).total_seconds() < grace_s:
            out.add(t.number)
    return out


def _running(study: optuna.Study, below: int | None = None) -> list[FrozenTrial]:
    """Trials in flight on any worker (numbered below `below`, if given)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if below is None or t.number < below]


def _held_elsewhere(study: optuna.Study, number: int, point: TrialPoint, wait_s: float = 30.0) -> int | None:
    """The number of an earlier running trial that is measuring `point` too (two workers sampled
    it at once): the earliest trial keeps a point. A trial still being sampled has not said its
    point yet, so wait (briefly) until every earlier one has, or the two could both go ahead."""
    deadline = time.monotonic() + wait_s
    while True:
        ahead = _running(study, below=number)
        for t in ahead:
            if point_of(t) == point:
                return t.number
        if all(point_of(t) is not None for t in ahead) or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _surplus(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Two workers that both saw one trial left may both have asked for it: the later-numbered
    one hands its trial back (PRUNED, not counted, not logged; a queued point goes back in the
    queue), so a shared study measures exactly its budget."""
    if len(counted_trials(study)) + len(_running(study, below=trial.number)) < budget:
        return False
    frozen = study._storage.get_trial(trial._trial_id)
    fixed = frozen.system_attrs.get("fixed_params")
    if fixed:
        study.enqueue_trial(fixed, user_attrs=dict(frozen.user_attrs))
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.PRUNED)
    return True


def _measured_points(counted: list[FrozenTrial]) -> dict[TrialPoint, int]:
    """Point -> number of the first trial that measured (or failed) it."""
    out: dict[TrialPoint, int] = {}
    for t in counted:
        point = point_of(t)
        if point is not None:
            out.setdefault(point, t.number)
    return out


def _cached_accuracy(study: optuna.Study, base: str) -> dict[str, AccuracyResult]:
    """Earlier evaluations whose key starts with `base`, by full key, each citing the trial that ran
    it; the trial picks the one whose load-time choices match its own."""
    out: dict[str, AccuracyResult] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = record_of(t)
        acc = rec.accuracy if rec is not None else None
        if acc is not None and acc.reused_from_trial is None and acc.key not in out and base_of(acc.key) == base:
            out[acc.key] = dataclasses.replace(acc, reused_from_trial=t.number)
    return out


def enqueue_grid(study: optuna.Study, config: Config, limit: int) -> int:
    """Queue up to `limit` valid points not yet measured or queued, in enumeration order."""
    done = set(_measured_points(counted_trials(study)))
    queued = {point_of(t) for t in study.get_trials(states=(TrialState.WAITING,))}
    n = 0
    for params, point in enumerate_points(config):
        if n < limit and point not in done and point not in queued:
            study.enqueue_trial(params, user_attrs={"point": point.as_dict()})
            n += 1
    return n


def trial_payload(
    config: Config,
    identity: dict[str, str],
    point: TrialPoint,
    log_path: Path,
    study: optuna.Study | None = None,
    config_json: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a trial process needs (`run_isolated`): plain data only. With `study`, accuracy the
    study already measured for the same weights is handed over instead of being evaluated again."""
    akey = accuracy_key(identity, config, point)
    return {
        "config": config_json if config_json is not None else config.model_dump(mode="json"),
        "point": point.as_dict(),
        "identity": identity_hash(identity, point.engine, point.hardware),  # the trial's own fingerprint
        "accuracy_key": akey,
        "known_accuracy": _cached_accuracy(study, akey) if study is not None and config.accuracy.tasks else {},
        "log_path": str(log_path),
    }


def logs_dir(config: Config) -> Path:
    d = Path(config.mlflow.artifact_location).expanduser() / "trial-logs" / config.study_name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tell(study: optuna.Study, trial: optuna.Trial, config: Config, metrics: dict[str, float]) -> None:
    """Constraints and objective values from the metrics, as the current config defines them."""
    for name, v in violations(config, metrics).items():
        trial.set_constraint(name, v)
    values = objective_values(config, metrics)
    if values is None:
        missing = [o.name for o in config.objectives if o.name not in metrics]
        trial.set_user_attr("fail_reason", f"objective(s) not measured: {', '.join(missing) or 'not finite'}")
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, values)


def stage_seconds(outcome: ChildOutcome, record: TrialRecord | None, asked_s: float) -> dict[str, float]:
    """Where a trial's wall time went, in seconds: `ask` (this process: sampling and preparing the
    trial), `spawn` (child start-up and imports), then the child's stages. The measured window is
    split out of its stage as `measure`, the rest of that stage being warm-up and timing set-up."""
    out = {"ask": asked_s, **outcome.stage_seconds()}
    window = record.metrics.get("wall_s") if record is not None else None
    if window is not None and "throughput+energy" in out:
        out["warmup"] = max(0.0, out.pop("throughput+energy") - window)
        out["measure"] = window
    return {k: round(v, 3) for k, v in out.items()}


def _finish_trial(
    study: optuna.Study, trial: optuna.Trial, config: Config, outcome: ChildOutcome, asked_s: float = 0.0
) -> None:
    record = outcome.result if isinstance(outcome.result, TrialRecord) else None
    trial.set_user_attr(STAGE_ATTR, stage_seconds(outcome, record, asked_s))
    if not outcome.ok or not isinstance(outcome.result, TrialRecord):
        trial.set_user_attr("fail_reason", outcome.reason or "the trial returned no record")
        study.tell(trial, state=TrialState.FAIL)
        return
    save_record(trial, outcome.result)
    _tell(study, trial, config, outcome.result.metrics)


def _answer_from_storage(study: optuna.Study, trial: optuna.Trial, config: Config, prev: FrozenTrial) -> None:
    """The sampler proposed a point already measured: tell it the stored result so it learns,
    without spending a measurement (such a trial does not count toward the budget)."""
    trial.set_user_attr("duplicate_of", prev.number)
    copy_record(trial, prev)
    rec = record_of(prev)
    if prev.state == TrialState.COMPLETE and rec is not None:
        _tell(study, trial, config, rec.metrics)
    else:
        trial.set_user_attr("fail_reason", f"repeat of failed trial {prev.number}")
        study.tell(trial, state=TrialState.FAIL)


def run_search(
    config: Config, events: Events | None = None, retry_failed: bool = False, fresh: bool = False
) -> tuple[optuna.Study, Tracker]:
    """Run (or resume) the config's study. `fresh`: a study of its own for this exact setup."""
    from autoinfer.tracking.mlflow_tracker import Tracker  # here, not at import: tracking uses search.pareto

    ev = events or Events()
    identity = study_identity(config)
    if fresh:
        name = fresh_name(config, identity)
        config = config.model_copy(update={"search": config.search.model_copy(update={"study_name": name})})
        ev.message(f"fresh study {name!r}")
    study = open_study(config, identity)
    tracker = Tracker(config, config.study_name, config.search.storage)
    logs = logs_dir(config)
    # Other workers log their own trials; one that finished this long ago and is still missing
    # from MLflow lost its worker before it was logged.
    grace = STALE_BEATS * config.search.heartbeat_s
    recovered = recover_interrupted(study)
    if recovered:
        ev.message(f"re-queued {len(recovered)} interrupted trial(s)")
    if retry_failed:
        ev.message(f"re-queued {requeue_failed(study)} failed trial(s)")
    tracker.sync(study, logs, leave=_being_logged(study, grace))
    if config.search.sampler == "grid":
        enqueue_grid(study, config, config.search.trials - len(counted_trials(study)))
    own_points = {point for _, point in enumerate_points(config)}  # this worker's; others may hold more
    budget = config.search.trials
    started = time.monotonic()
    rejections = 0
    payload_config = config.model_dump(mode="json")
    waiting = False
    while True:
        stale = recover_stale(study)
        if stale:
            ev.message(f"re-queued {len(stale)} trial(s) whose worker stopped beating")
            tracker.sync(study, logs, leave=_being_logged(study, grace))
        counted = counted_trials(study)
        done = len(counted)
        measured = _measured_points(counted)
        if done >= budget:
            break
        if own_points <= measured.keys():
            ev.message(f"every one of the {len(own_points)} valid points has been measured")
            break
        if config.search.timeout_s and time.monotonic() - started > config.search.timeout_s:
            ev.message(f"search.timeout_s ({config.search.timeout_s:g} s) reached")
            break
        if done + len(_running(study)) >= budget:
            # The rest of the budget is being measured by other workers. Stay to re-run a trial
            # whose worker dies (nobody else may be left to notice), and stop when it is met.
            if not waiting:
                ev.message("the rest of the budget is running on other workers; waiting for it")
            waiting = True
            time.sleep(config.search.heartbeat_s)
            continue
        asked = time.monotonic()
        with warnings.catch_warnings():  # heartbeats run by hand here, not through study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        if _surplus(study, trial, budget):
            continue
        beat = get_heartbeat_thread(trial._trial_id, study._storage)
        beat.start()  # until the trial is told: a worker that dies stops beating (recover_stale)
        try:
            trial.set_user_attr("worker", WORKER)
            try:
                point = sample_point(trial, config)
            except NoValidPoint as e:
                trial.set_user_attr("rejected", str(e))
                study.tell(trial, state=TrialState.PRUNED)
                tracker.log_trial(study.trials[trial.number])
                rejections += 1
                if rejections > MAX_REJECTIONS:
                    break
                continue
            save_point(trial, point)
            if point in measured:
                _answer_from_storage(study, trial, config, study.trials[measured[point]])
                tracker.log_trial(study.trials[trial.number])
                rejections += 1
                if rejections > MAX_REJECTIONS:
                    ev.message("the sampler keeps proposing measured points; stopping")
                    break
                continue
            holder = _held_elsewhere(study, trial.number, point)
            if holder is not None:  # another worker is measuring this point right now
                trial.set_user_attr("in_flight_on", holder)
                study.tell(trial, state=TrialState.PRUNED)
                rejections += 1
                continue
            rejections = 0
            log_path = logs / f"trial-{trial.number}.log"
            payload = trial_payload(config, identity, point, log_path, study, payload_config)
            ev.trial_started(trial.number, point, done + 1, budget)
            asked_s = time.monotonic() - asked
            try:
                outcome = run_isolated(payload, config.search.trial_timeout_s, ev.stage)
            except KeyboardInterrupt:
                trial.set_user_attr("interrupted", True)
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM)")
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs=_retry_attrs(study.trials[trial.number]))
                tracker.log_trial(study.trials[trial.number], str(log_path))
                tracker.finish("KILLED")
                raise
            _finish_trial(study, trial, config, outcome, asked_s)
            frozen = study.trials[trial.number]
            tracker.log_trial(frozen, str(log_path))
            tracker.update_pareto(study)
            ev.trial_finished(frozen)
        finally:
            beat.join()
    tracker.sync(study, logs, leave=_being_logged(study, grace))  # e.g. a worker that died after telling
    tracker.update_pareto(study)
    tracker.finish(study=study)
    return study, tracker


__all__ = ["Events", "open_study", "run_search"]
