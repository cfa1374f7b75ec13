"""The rules workers sharing a study follow (autoinfer.search.coordination), on real storages: a
worker that died before its first heartbeat, a re-queued point sampled afresh elsewhere, a trial
failed as lost under a live worker, and the storage's clock for who is still logging what."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.search import _optuna
from autoinfer.search.coordination import Coordinator, Holder, fail_and_requeue, recover_stale
from autoinfer.search.study import Events, open_study, run_search
from tests.conftest import fake_config

NO_ACC: dict[str, Any] = {"accuracy": {"tasks": []}, "objectives": [{"name": "tokens_per_s"}]}
DIST = {"quantization": CategoricalDistribution(["fp32", "int8"])}
P = TrialPoint(engine="fake", quantization="int8", draft="none", batch_size=2, hardware="cpu:1")


def config(tmp: Path, storage: str | None = None, **search: Any) -> Any:
    over = {"trials": 2, "sampler": "random", "heartbeat_s": 1, "study_name": "t", **search}
    if storage:
        over["storage"] = storage
    return parse_config(fake_config(tmp, search=over, **NO_ACC), base_dir=str(tmp))


def _plain_ask(study: optuna.Study) -> optuna.Trial:
    """A trial taken as Study.ask takes one, with no heartbeat: what a worker killed right after
    asking leaves behind (asked through a handle of its own: a Coordinator's study beats)."""
    other = optuna.load_study(study_name=study.study_name, storage=_optuna.storage(study))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return other.ask(DIST)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both clocks: SQLite's CURRENT_TIMESTAMP (UTC) and PostgreSQL's now() (a timestamptz)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    url: str = request.getfixturevalue("pg_url")
    return url


def test_a_trial_that_never_beat_is_failed_after_the_grace_period(storage: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, storage, study_name=f"never-{tmp_path.name}")
    study = open_study(cfg)
    try:
        orphan = _plain_ask(study)
        orphan.set_user_attr("worker", "elsewhere:1")
        beating = _plain_ask(study)
        beat = _optuna.start_heartbeat(study, _optuna.trial_id(beating))
        try:
            assert recover_stale(study) == []  # younger than 3 beats
            time.sleep(3.5)
            assert recover_stale(study, "machine-b:1") == [orphan.number]  # the beating one is left alone
        finally:
            beat.join()
        lost = study.trials[orphan.number]
        assert lost.state == TrialState.FAIL and lost.user_attrs["interrupted"] is True
        assert "elsewhere:1 took it and never beat" in lost.user_attrs["fail_reason"]
        assert lost.user_attrs["lost_by"] == "machine-b:1"  # whoever failed it logs it, not the gone worker
        retry = [t for t in study.trials if t.user_attrs.get("retry_of") == orphan.number]
        assert len(retry) == 1 and retry[0].state == TrialState.WAITING
        assert retry[0].system_attrs["fixed_params"] == orphan.params
        assert study.trials[beating.number].state == TrialState.RUNNING
    finally:
        optuna.delete_study(study_name=cfg.study_name, storage=storage)


def test_the_storage_clock_is_utc(storage: str, tmp_path: Path) -> None:
    import datetime

    cfg = config(tmp_path, storage, study_name=f"clock-{tmp_path.name}")
    study = open_study(cfg)
    try:
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        assert abs((_optuna.storage_utc_now(study) - now).total_seconds()) < 5
    finally:
        optuna.delete_study(study_name=cfg.study_name, storage=storage)


def test_a_queued_point_sampled_afresh_is_measured_once(tmp_path: Path) -> None:
    """A lost trial's point is re-queued while another worker, which had already found the queue
    empty, samples the same point afresh: exactly one of the two may measure it."""
    study = open_study(config(tmp_path))
    coord = Coordinator(study, config(tmp_path))
    study.enqueue_trial({"quantization": "int8"}, user_attrs={"point": P.as_dict(), "retry_of": 99})
    fresh = _optuna.create_trial(study)  # created after the queue was read empty, numbered after it
    fresh_number = _optuna.storage(study).get_trial(fresh).number
    assert coord.holder(fresh_number, P) == Holder("held", 0)  # the queued trial keeps it
    queued, beat = coord.ask()  # popped: the queue's trial now runs, numbered before the fresh one
    try:
        assert queued.number == 0 and coord.holder(queued.number, P) is None  # and it goes ahead
        assert coord.holder(fresh_number, P) == Holder("held", 0)  # still held, now running
    finally:
        beat.join()


def test_a_later_queued_copy_gives_way_to_an_earlier_sample(tmp_path: Path) -> None:
    study = open_study(config(tmp_path))
    coord = Coordinator(study, config(tmp_path))
    first, beat = coord.ask()
    try:
        first.set_user_attr("point", P.as_dict())
        study.enqueue_trial({"quantization": "int8"}, user_attrs={"point": P.as_dict()})
        assert coord.holder(first.number, P) is None  # the earliest keeps the point
        assert coord.holder(first.number + 1, P) == Holder("held", first.number)
    finally:
        beat.join()


def test_a_trial_failed_as_lost_under_a_live_worker_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker takes this worker's trial for lost (its beats looked stale) mid-measurement:
    this worker says so in one line, drops its result, and finishes the budget."""
    cfg = config(tmp_path, trials=1)
    monkeypatch.setenv("AUTOINFER_FAKE_LOAD_S", "3")
    open_study(cfg)  # created before the other worker opens it
    storage = cfg.search.storage
    taken: list[int] = []

    def other_worker() -> None:
        other = optuna.load_study(study_name="t", storage=storage)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not taken:
            for t in other.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if "point" in t.user_attrs:  # being measured
                    time.sleep(1)
                    if fail_and_requeue(other, t, "its worker stopped beating (test)"):
                        taken.append(t.number)
            time.sleep(0.2)

    said: list[str] = []
    thread = threading.Thread(target=other_worker, daemon=True)
    thread.start()
    study, _ = run_search(cfg, Events(message=said.append))
    thread.join()
    assert len(taken) == 1
    lines = [m for m in said if f"trial {taken[0]}: another worker failed it as lost" in m]
    assert len(lines) == 1 and "\n" not in lines[0]
    lost = study.trials[taken[0]]
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == "its worker stopped beating (test)"
    rerun = [t for t in study.trials if t.user_attrs.get("retry_of") == taken[0]]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE  # the budget, measured after all
    client = MlflowClient(cfg.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    logged = [int(r.data.tags["autoinfer.trial"]) for r in runs if "autoinfer.trial" in r.data.tags]
    assert sorted(logged) == sorted({taken[0], rerun[0].number})  # each once: the lost one by the catch-up


def test_what_next(tmp_path: Path) -> None:
    cfg = config(tmp_path, trials=2)
    study = open_study(cfg)
    coord = Coordinator(study, cfg)
    assert coord.next().action == "ask"
    elsewhere = _plain_ask(study)  # another worker's
    elsewhere.set_user_attr("worker", "elsewhere:1")
    mine, beat = coord.ask()
    try:
        step = coord.next()
        assert step.action == "wait" and "running on other workers" in step.say
        study.tell(mine, 1.0)
        study.tell(elsewhere.number, 2.0)
        assert coord.next().action == "stop" and coord.done == 2
    finally:
        beat.join()


def test_being_logged_reads_the_storage_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial another live worker finished a moment ago (on the storage's clock) is left to it."""
    import datetime

    cfg = config(tmp_path)
    study = open_study(cfg)
    coord = Coordinator(study, cfg)
    t = _plain_ask(study)
    t.set_user_attr("worker", "elsewhere:1")
    study.tell(t.number, 1.0)
    assert coord.being_logged() == {t.number} and coord.to_catch_up() == []
    real = _optuna.storage_utc_now
    later = datetime.timedelta(seconds=coord.grace_s + 1)
    monkeypatch.setattr(_optuna, "storage_utc_now", lambda s: real(s) + later)
    assert coord.being_logged() == set()  # the storage says the grace is over, whatever this clock says
    assert [x.number for x in coord.to_catch_up()] == [t.number]


def test_a_finished_trial_whose_worker_still_beats_is_left_to_it(tmp_path: Path) -> None:
    """A worker beats until it has told and logged its trial: however long logging takes (a busy
    tracking server), nobody else logs that trial meanwhile, and once it stops beating they may."""
    cfg = config(tmp_path)
    study = open_study(cfg)
    coord = Coordinator(study, cfg)
    t = _plain_ask(study)
    t.set_user_attr("worker", "elsewhere:1")
    study.tell(t.number, 1.0)
    beat = _optuna.start_heartbeat(study, _optuna.trial_id(t))  # its worker, still logging it
    try:
        time.sleep(coord.grace_s + 1.5)
        assert coord.being_logged() == {t.number}
    finally:
        beat.join()
    time.sleep(coord.grace_s + 1.5)
    assert coord.being_logged() == set()


def test_a_lost_trial_is_left_to_the_worker_that_failed_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker that fails a lost trial logs it; another worker catching up at the same moment
    must not log it too (seen: test_three_workers_survive_one_killed with two MLflow runs of the
    killed worker's trial). Once the grace is over it may, in case the failing worker died too."""
    import datetime

    from autoinfer.search import coordination

    cfg = config(tmp_path)
    study = open_study(cfg)
    coord = Coordinator(study, cfg)
    t = _plain_ask(study)
    t.set_user_attr("worker", "machine-a:1")
    monkeypatch.setattr(coordination, "WORKER", "machine-b:1")  # fails it, as another machine
    assert fail_and_requeue(study, study.trials[t.number], "its worker machine-a:1 stopped beating")
    monkeypatch.setattr(coordination, "WORKER", coord.worker)
    assert study.trials[t.number].user_attrs["lost_by"] == "machine-b:1"
    assert coord.being_logged() == {t.number} and coord.to_catch_up() == []
    real = _optuna.storage_utc_now
    later = datetime.timedelta(seconds=coord.grace_s + 1)
    monkeypatch.setattr(_optuna, "storage_utc_now", lambda s: real(s) + later)
    assert t.number in [x.number for x in coord.to_catch_up()]
    # The failing worker itself logs it at once.
    mine = Coordinator(study, cfg, worker="machine-b:1")
    monkeypatch.setattr(_optuna, "storage_utc_now", real)
    assert t.number not in mine.being_logged()


def test_the_worker_whose_failure_won_logs_a_lost_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers fail one lost trial at once: both write `lost_by` before one state change wins,
    so it may name the loser. The winner logs the trial all the same, and the loser, which then
    finds it named itself, may too but only if the winner has not (MLflow's check)."""
    cfg = config(tmp_path)
    study = open_study(cfg)
    winner = Coordinator(study, cfg, worker="machine-b:1")
    orphan = _plain_ask(study)  # never beats: failed once the grace is over
    storage = _optuna.storage(study)
    real = storage.set_trial_user_attr

    def loser_writes_last(trial_id: int, key: str, value: Any) -> None:
        real(trial_id, key, "machine-c:1" if key == "lost_by" else value)

    monkeypatch.setattr(storage, "set_trial_user_attr", loser_writes_last)
    time.sleep(winner.grace_s + 1.5)
    assert winner.recover() == [orphan.number]
    monkeypatch.undo()
    assert study.trials[orphan.number].user_attrs["lost_by"] == "machine-c:1"
    assert orphan.number in [t.number for t in winner.to_catch_up()]
    bystander = Coordinator(study, cfg, worker="machine-d:1")
    assert orphan.number not in [t.number for t in bystander.to_catch_up()]
