"""The search loop: ask Optuna for a point, measure it in a child process, tell, and tell listeners.

Resumable: the study lives in an RDB storage (SQLite by default). Finished trials are never run
again; a trial cut short by Ctrl-C or a crash of this process is marked FAIL ("interrupted") and
its point re-queued, so the next `autoinfer search` on the same config measures it. Sharing the
study with other workers (budget, claims, lost trials, duplicates) is autoinfer.search.coordination's
business; MLflow follows the loop as a listener (the Tracker subscribes to its events).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoinfer.config import Config
from autoinfer.engines import TrialPoint
from autoinfer.errors import ConfigError
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.identity import accuracy_key, base_of, first_difference, identity_hash, study_identity, upgrade
from autoinfer.record import STAGE_ATTR, TrialRecord, copy_record, point_of, record_of, save_point, save_record
from autoinfer.search.coordination import (
    STALE_BEATS,
    WORKER,
    Coordinator,
    counted_trials,
    measured_points,
    recover_interrupted,
    recover_stale,
    requeue_failed,
)
from autoinfer.search.isolation import ChildOutcome, run_isolated
from autoinfer.search.pareto import objective_values, violations
from autoinfer.search.samplers import worker_sampler
from autoinfer.search.storage import ensure_sqlite_dir
from autoinfer.spaces import NoValidPoint, enumerate_points, sample_point

if TYPE_CHECKING:
    from autoinfer.tracking.mlflow_tracker import Tracker

MAX_REJECTIONS = 200  # samples in a row that repeat a measured point before we call the space done


@dataclass
class Events:
    """Callbacks the CLI uses for its progress display (all optional)."""

    trial_started: Callable[[int, TrialPoint, int, int], None] = lambda n, p, i, total: None
    stage: Callable[[str], None] = lambda s: None
    trial_finished: Callable[[FrozenTrial], None] = lambda t: None
    message: Callable[[str], None] = lambda m: None


class Listener(Protocol):
    """What follows the loop besides the display (the MLflow tracker subscribes): told of every
    trial the study records. Trials handed back (surplus, held by another trial) are not part of
    the record and are never told."""

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial, log_path: str | None) -> None:
        """A trial was measured (or failed being measured)."""

    def trial_skipped(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial was told without a measurement: a repeat answered from storage, a rejected point."""

    def trial_interrupted(self, study: optuna.Study, trial: FrozenTrial, log_path: str | None) -> None:
        """This worker's trial was cut short (Ctrl-C, SIGTERM); its point is queued again."""

    def catch_up(self, study: optuna.Study, logs: Path, trials: Sequence[FrozenTrial]) -> None:
        """Finished trials that no other worker is about to record (other workers' that died before
        they did, lost ones): record those still missing downstream."""

    def search_ended(self, study: optuna.Study, status: str, logs: Path, trials: Sequence[FrozenTrial]) -> None:
        """The loop stopped: FINISHED (with a last catch-up), or KILLED (Ctrl-C, SIGTERM)."""


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
    return study


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
    done = set(measured_points(counted_trials(study)))
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


def _with_study_name(config: Config, name: str) -> Config:
    return config.model_copy(update={"search": config.search.model_copy(update={"study_name": name})})


def run_search(
    config: Config, events: Events | None = None, retry_failed: bool = False, fresh: bool = False
) -> tuple[optuna.Study, Tracker]:
    """Run (or resume) the config's study. `fresh`: a study of its own for this exact setup."""
    from autoinfer.tracking.mlflow_tracker import Tracker  # here, not at import: tracking uses search.pareto

    ev = events or Events()
    identity = study_identity(config)
    if fresh:
        config = _with_study_name(config, fresh_name(config, identity))
        ev.message(f"fresh study {config.study_name!r}")
    study = open_study(config, identity)
    tracker = Tracker(config, config.study_name, config.search.storage)
    loop = SearchLoop(config, identity, study, ev, listeners=[tracker])
    loop.begin(retry_failed)
    try:
        loop.run()
    except KeyboardInterrupt:
        loop.close()
        loop.end("KILLED")
        raise
    finally:
        loop.close()
    loop.end("FINISHED")
    return study, tracker


class SearchLoop:
    """One worker's search of a study: asks its Coordinator what to do next, measures points in
    child processes, tells Optuna, and tells the display (`Events`) and the listeners."""

    def __init__(
        self,
        config: Config,
        identity: dict[str, str],
        study: optuna.Study,
        events: Events,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.config, self.identity, self.study, self.ev = config, identity, study, events
        self.listeners = list(listeners)
        self.coord = Coordinator(study, config)
        self.logs = logs_dir(config)
        self.payload_config = config.model_dump(mode="json")
        self.rejections = 0  # proposals in a row that measured nothing
        self.runner: Any = None  # served trials: the server kept between load points (autoinfer.served.runner)

    def begin(self, retry_failed: bool = False) -> None:
        """Take back what this machine's dead workers left, catch the listeners up, queue the grid."""
        recovered = self.coord.recover_interrupted()
        if recovered:
            self.ev.message(f"re-queued {len(recovered)} interrupted trial(s)")
        if retry_failed:
            self.ev.message(f"re-queued {requeue_failed(self.study)} failed trial(s)")
        self._catch_up()
        if self.config.search.sampler == "grid":
            enqueue_grid(self.study, self.config, self.config.search.trials - len(counted_trials(self.study)))

    def run(self) -> None:
        """Measure until the budget is met, every point is measured, time is up, or the sampler
        only repeats itself; meanwhile re-queue trials whose worker is gone."""
        waiting = False
        while True:
            lost = self.coord.recover()
            if lost:
                self.ev.message(f"re-queued {len(lost)} trial(s) whose worker stopped beating")
                self._catch_up()
            step = self.coord.next()
            if step.action == "stop":
                if step.say:
                    self.ev.message(step.say)
                return
            if step.action == "wait":
                if not waiting:
                    self.ev.message(step.say)
                waiting = True
                time.sleep(self.config.search.heartbeat_s)
                continue
            if not self.one_trial():
                return

    def end(self, status: str) -> None:
        """FINISHED (catching the listeners up once more: a worker may have died after telling) or KILLED."""
        trials = self.coord.to_catch_up() if status == "FINISHED" else []
        for listener in self.listeners:
            listener.search_ended(self.study, status, self.logs, trials)

    def one_trial(self) -> bool:
        """Ask for a trial and see it through; False once the sampler keeps proposing measured points."""
        asked = time.monotonic()
        trial, beat = self.coord.ask()
        try:
            if self.coord.surplus(trial):
                return True
            return self._sample_and_measure(trial, asked)
        except KeyboardInterrupt:
            frozen = self.coord.interrupted(trial)
            if frozen is not None:
                for listener in self.listeners:
                    listener.trial_interrupted(self.study, frozen, str(self._log_path(trial)))
            raise
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
            if not self.coord.taken_from_us(trial):
                raise
            self.ev.message(
                f"trial {trial.number}: another worker failed it as lost while this worker ran it and queued its "
                "point again; this worker's result is dropped"
            )
            return True
        finally:
            beat.join()

    def _sample_and_measure(self, trial: optuna.Trial, asked: float) -> bool:
        try:
            point = sample_point(trial, self.config)
        except NoValidPoint as e:
            trial.set_user_attr("rejected", str(e))
            self.study.tell(trial, state=TrialState.PRUNED)
            self._skipped(trial)
            return self._rejected()
        save_point(trial, point)
        holder = self.coord.holder(trial.number, point)
        if holder is not None and holder.kind == "measured":
            _answer_from_storage(self.study, trial, self.config, self.study.get_trials(deepcopy=False)[holder.number])
            self._skipped(trial)
            return self._rejected("the sampler keeps proposing measured points; stopping")
        if holder is not None:  # an earlier trial is measuring this point right now, or is queued to
            trial.set_user_attr("in_flight_on", holder.number)
            self.study.tell(trial, state=TrialState.PRUNED)
            self.rejections += 1
            return True
        self.rejections = 0
        self._measure(trial, point, asked)
        return True

    def _measure(self, trial: optuna.Trial, point: TrialPoint, asked: float) -> None:
        log_path = self._log_path(trial)
        payload = trial_payload(self.config, self.identity, point, log_path, self.study, self.payload_config)
        self.ev.trial_started(trial.number, point, self.coord.done + 1, self.coord.budget)
        asked_s = time.monotonic() - asked
        if self.config.workload.mode == "served":  # the worker keeps the server for the next load point
            outcome = self._runner().measure(payload, point, self.config.search.trial_timeout_s)
        else:
            outcome = run_isolated(payload, self.config.search.trial_timeout_s, self.ev.stage)
        _finish_trial(self.study, trial, self.config, outcome, asked_s)
        frozen = self.coord.frozen(trial)
        if self.runner is not None and outcome.ok and not outcome.result.provenance.served.get("server_reused"):
            from autoinfer.served.runner import queue_siblings

            queue_siblings(self.study, frozen, self.config, point)
        for listener in self.listeners:
            listener.trial_finished(self.study, frozen, str(log_path))
        self.ev.trial_finished(frozen)

    def _runner(self) -> Any:
        """This worker's served-trial runner (autoinfer.served.runner), made on first use."""
        if self.runner is None:
            from autoinfer.served.runner import ServedRunner

            self.runner = ServedRunner(self.config, self.ev.stage)
        return self.runner

    def close(self) -> None:
        """Stop what this worker keeps running between trials (a served trial's server)."""
        if self.runner is not None:
            self.runner.close()

    def _rejected(self, say: str = "") -> bool:
        self.rejections += 1
        if self.rejections <= MAX_REJECTIONS:
            return True
        if say:
            self.ev.message(say)
        return False

    def _skipped(self, trial: optuna.Trial) -> None:
        frozen = self.coord.frozen(trial)
        for listener in self.listeners:
            listener.trial_skipped(self.study, frozen)

    def _catch_up(self) -> None:
        trials = self.coord.to_catch_up()
        for listener in self.listeners:
            listener.catch_up(self.study, self.logs, trials)

    def _log_path(self, trial: optuna.Trial) -> Path:
        return self.logs / f"trial-{trial.number}.log"


__all__ = [
    "MAX_REJECTIONS",
    "STALE_BEATS",
    "WORKER",
    "Events",
    "Listener",
    "SearchLoop",
    "counted_trials",
    "open_study",
    "recover_interrupted",
    "recover_stale",
    "requeue_failed",
    "run_search",
]
