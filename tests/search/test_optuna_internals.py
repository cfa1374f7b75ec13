"""The private parts of Optuna that autoinfer/search/_optuna.py relies on, each probed on a real
study: an Optuna upgrade that moves one fails here, by name, rather than hanging a shared study."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autoinfer.search import _optuna

DIST = {"x": CategoricalDistribution(["a", "b"])}


def _study(tmp: Path, heartbeat_s: int = 1) -> optuna.Study:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp}/internals.db", heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s
        )
    return optuna.create_study(storage=storage, study_name="internals")


def _ask(study: optuna.Study) -> optuna.Trial:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask(DIST)


def _storage_and_ids(study: optuna.Study) -> None:
    trial = _ask(study)
    tid = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial.number)
    assert trial._trial_id == tid and study._storage.get_trial(tid)._trial_id == tid


def _pop_hook(study: optuna.Study) -> None:
    made: list[int] = []

    def claim() -> int:
        made.append(study._storage.create_new_trial(study._study_id))
        return made[-1]

    _optuna.claim_trials(study, claim)
    trial = _ask(study)
    assert made == [trial._trial_id] and len(study.trials) == 1  # ask took our trial, made no other


def _heartbeat(study: optuna.Study) -> None:
    from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread

    assert isinstance(study._storage, BaseHeartbeat) and callable(get_heartbeat_thread)
    trial = _ask(study)
    beat = _optuna.start_heartbeat(study, trial._trial_id)
    beat.join()
    assert study._storage._get_stale_trial_ids(study._study_id) == []  # beaten just now
    time.sleep(3.5)  # past the grace period of 2 s (SQLite stamps beats to the second)
    assert _optuna.stale_trial_ids(study) == [trial._trial_id]


def _rdb_engine(study: optuna.Study) -> None:
    backend = study._storage._backend
    assert isinstance(backend, optuna.storages.RDBStorage) and isinstance(backend.engine, sa.Engine)


def _tables(study: optuna.Study) -> None:
    from optuna.storages._rdb import models

    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    assert {"trial_id", "study_id", "state", "datetime_start"} <= set(trials.c.keys())
    assert {"trial_id", "heartbeat"} <= set(beats.c.keys())
    never = _ask(study)
    beaten = _ask(study)
    study._storage.record_heartbeat(beaten._trial_id)
    assert _optuna.beating_trial_ids(study, 5.0) == {beaten._trial_id}
    time.sleep(2.2)  # SQLite stamps beats to the second
    assert _optuna.never_beaten_trial_ids(study, 1.0) == [never._trial_id]
    assert _optuna.never_beaten_trial_ids(study, 60.0) == []
    assert _optuna.beating_trial_ids(study, 0.5) == set()


def _datetime_start_is_utc(study: optuna.Study) -> None:
    """The column holds naive UTC, FrozenTrial hands out naive local time: as_utc undoes that."""
    from optuna.storages._rdb import models

    trial = _ask(study)
    table = models.TrialModel.__table__
    with study._storage._backend.engine.connect() as c:
        raw = c.execute(sa.select(table.c.datetime_start).where(table.c.trial_id == trial._trial_id)).scalar()
    frozen = study._storage.get_trial(trial._trial_id)
    assert raw is not None and frozen.datetime_start is not None
    assert abs((_optuna.as_utc(frozen.datetime_start) - raw).total_seconds()) < 1e-3
    real_utc = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((real_utc - raw).total_seconds()) < 60


PROBES: dict[str, Callable[[optuna.Study], None]] = {
    "Study._storage": lambda s: s._storage.get_all_trials(s._study_id),
    "Study._study_id": lambda s: s._storage.get_study_name_from_id(s._study_id),
    "Study._pop_waiting_trial_id": _pop_hook,
    "Trial._trial_id / FrozenTrial._trial_id": _storage_and_ids,
    "optuna.storages._heartbeat.BaseHeartbeat": _heartbeat,
    "optuna.storages._heartbeat.get_heartbeat_thread": _heartbeat,
    "BaseHeartbeat._get_stale_trial_ids": _heartbeat,
    "_CachedStorage._backend": _rdb_engine,
    "RDBStorage.engine": _rdb_engine,
    "optuna.storages._rdb.models (trials, trial_heartbeats tables)": _tables,
    "trials.datetime_start stores naive UTC": _datetime_start_is_utc,
}


def test_every_internal_has_a_probe() -> None:
    assert set(PROBES) == set(_optuna.INTERNALS)


@pytest.mark.parametrize("name", list(PROBES))
def test_optuna_still_has(name: str, tmp_path: Path) -> None:
    study = _study(tmp_path)
    try:
        PROBES[name](study)
    except Exception as e:  # noqa: BLE001 - any failure means the internal moved or changed
        pytest.fail(
            f"Optuna {optuna.__version__} moved or changed {name}, which autoinfer relies on for "
            f"{_optuna.INTERNALS[name]}: {type(e).__name__}: {e}. Update autoinfer/search/_optuna.py.",
            pytrace=False,
        )


def test_storage_clock_is_utc(tmp_path: Path) -> None:
    study = _study(tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((_optuna.storage_utc_now(study) - now).total_seconds()) < 5
    assert _optuna.storage_utc_now(study).tzinfo is None
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
