"""Every private part of Optuna that autoinfer relies on, in this one module.

Optuna has no public way to: claim a queued trial for one worker only (the queue pop of
`Study.ask`), start a trial's heartbeat outside `Study.optimize`, list stale trials without
failing them, see which running trials have never beaten, or write a trial's system attribute
from a sampler. The study loop needs all of these, so it reaches into Optuna here and nowhere
else (grep the package for `._` on an Optuna object: only this file should match).

tests/search/test_optuna_internals.py probes each of INTERNALS on a real study: when an Optuna
upgrade moves one, that test fails naming it, instead of a study hanging or a worker dying at run
time.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat, BaseHeartbeatThread, get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

# What each internal is for (tests/search/test_optuna_internals.py probes every one).
INTERNALS = {
    "Study._storage": "the storage a study reads and writes",
    "Study._study_id": "the study's id in its storage",
    "Study._pop_waiting_trial_id": "Study.ask takes the trial id it returns (replaced: claim_trials)",
    "Trial._trial_id / FrozenTrial._trial_id": "a trial's id in its storage",
    "optuna.storages._heartbeat.BaseHeartbeat": "whether a storage beats",
    "optuna.storages._heartbeat.get_heartbeat_thread": "beats outside Study.optimize",
    "BaseHeartbeat._get_stale_trial_ids": "running trials whose heartbeat went stale",
    "_CachedStorage._backend": "the RDBStorage under the cache Optuna wraps it in",
    "RDBStorage.engine": "the database, for its clock and the heartbeat table",
    "optuna.storages._rdb.models (trials, trial_heartbeats tables)": "trials that never beat, or beat now",
    "trials.datetime_start stores naive UTC": "how long a trial has run, on the database's clock",
}


def storage(study: optuna.Study) -> BaseStorage:
    return study._storage


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return int(trial._trial_id)


def claim_trials(study: optuna.Study, claim: Callable[[], int | None]) -> None:
    """Make `study.ask()` take its trial from `claim` (a WAITING trial it set RUNNING, or a trial
    it created); Optuna's own pops the oldest queued trial and creates one when it returns None."""
    study._pop_waiting_trial_id = claim  # type: ignore[method-assign]


def create_trial(study: optuna.Study) -> int:
    """A new RUNNING trial, as `Study.ask` makes one when the queue is empty."""
    return int(storage(study).create_new_trial(study_id(study)))


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    storage(study).set_trial_system_attr(trial_id(trial), key, value)


def heartbeat_interval(study: optuna.Study) -> int | None:
    s = storage(study)
    return s.get_heartbeat_interval() if isinstance(s, BaseHeartbeat) else None


def start_heartbeat(study: optuna.Study, tid: int) -> BaseHeartbeatThread:
    """Beat for trial `tid` until the returned thread is joined. The first beat is written before
    this returns, so a trial whose worker is seen to hold it (its `worker` attribute, set after
    this) always has a heartbeat row."""
    s = storage(study)
    if isinstance(s, BaseHeartbeat) and s.get_heartbeat_interval():
        s.record_heartbeat(tid)
    beat = get_heartbeat_thread(tid, s)
    beat.start()
    return beat


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period (not failed:
    the caller records why first). Trials without a heartbeat row are not among them."""
    s = storage(study)
    if not isinstance(s, BaseHeartbeat) or not s.get_heartbeat_interval():
        return []
    return list(s._get_stale_trial_ids(study_id(study)))


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    s: Any = storage(study)
    if isinstance(s, optuna.storages._CachedStorage):
        s = s._backend
    return s if isinstance(s, optuna.storages.RDBStorage) else None


def _utc_now(conn: sa.Connection) -> datetime.datetime:
    """The database's clock, as naive UTC. SQLite's CURRENT_TIMESTAMP and 'now' are UTC; PostgreSQL's
    now() is a timestamptz that its driver hands back in the session's time zone, so it is turned
    to UTC in the query; MySQL's NOW() is session-local, UTC_TIMESTAMP() is not."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        value: Any = conn.execute(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar()
    elif dialect == "postgresql":
        value = conn.execute(sa.text("SELECT now() AT TIME ZONE 'UTC'")).scalar()
    elif dialect in ("mysql", "mariadb"):
        value = conn.execute(sa.text("SELECT UTC_TIMESTAMP(6)")).scalar()
    else:
        value = conn.execute(sa.select(sa.func.now())).scalar()
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    assert isinstance(value, datetime.datetime), value
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


def storage_utc_now(study: optuna.Study) -> datetime.datetime:
    """Now on the storage's clock (naive UTC): the clock every worker of a shared study sees. A
    storage without a database (in memory, journal) has only this machine's clock."""
    rdb = _rdb(study)
    if rdb is None:
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    with rdb.engine.connect() as conn:
        return _utc_now(conn)


def as_utc(local: datetime.datetime) -> datetime.datetime:
    """A FrozenTrial's datetime_start/complete as naive UTC. RDBStorage stores them as naive UTC and
    hands them out as naive local time of the reading process; this undoes that conversion."""
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def never_beaten_trial_ids(study: optuna.Study, older_than_s: float) -> list[int]:
    """RUNNING trials of the study that have no heartbeat row and started over `older_than_s`
    ago: their worker died (kill -9, a machine lost) after taking the trial and before its first
    beat, so Optuna's stale check, which only looks at trials that have beaten, never sees them.

    Like with like: `datetime_start` is stamped by the worker that took the trial (its
    `datetime.now()`, which Optuna 5 converts to UTC and stores naive), and is compared here with
    the database's own UTC now (not this machine's clock, nor the heartbeat column, which
    PostgreSQL fills in its session's time zone). What is left is the asking machine's clock
    skew against the database, which NTP keeps far below a grace period of heartbeats.
    """
    from optuna.storages._rdb import models

    rdb = _rdb(study)
    if rdb is None:
        return []
    trials = models.TrialModel.__table__
    beats = models.TrialHeartbeatModel.__table__
    has_beaten = sa.exists().where(beats.c.trial_id == trials.c.trial_id)
    query = sa.select(trials.c.trial_id, trials.c.datetime_start).where(
        trials.c.study_id == study_id(study), trials.c.state == TrialState.RUNNING, ~has_beaten
    )
    with rdb.engine.connect() as conn:
        now = _utc_now(conn)
        rows = conn.execute(query).all()
    return [int(tid) for tid, start in rows if start is not None and (now - start).total_seconds() > older_than_s]


def beating_trial_ids(study: optuna.Study, within_s: float) -> set[int]:
    """Trials of the study (in any state) whose heartbeat was written within `within_s`: their
    worker is alive and still holds them. A worker beats for a trial until it has told and logged
    it, so a finished trial that still beats is being logged.

    Like with like: the heartbeat column is filled with the database's now() (PostgreSQL turns it
    into the writing session's time zone), so it is compared with now() read the same way, as
    Optuna's own stale check does."""
    from optuna.storages._rdb import models

    rdb = _rdb(study)
    if rdb is None:
        return set()
    trials = models.TrialModel.__table__
    beats = models.TrialHeartbeatModel.__table__
    query = (
        sa.select(beats.c.trial_id, beats.c.heartbeat)
        .join(trials, trials.c.trial_id == beats.c.trial_id)
        .where(trials.c.study_id == study_id(study))
    )
    with rdb.engine.connect() as conn:
        now: Any = conn.execute(sa.select(sa.func.now())).scalar()
        rows = conn.execute(query).all()
    if isinstance(now, str):
        now = datetime.datetime.fromisoformat(now)
    now = now.replace(tzinfo=None)
    return {int(tid) for tid, beat in rows if beat is not None and (now - beat).total_seconds() <= within_s}
