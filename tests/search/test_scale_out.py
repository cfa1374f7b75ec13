"""Three workers, one PostgreSQL study, one MLflow tracking server; one worker is killed -9 in the
middle of a trial. Its trial is failed through the heartbeat and measured again by another worker,
the study measures exactly its budget, and MLflow holds one run per trial. Each worker has its own
worker id, as if on its own machine, so the same-machine pid check cannot rescue the lost trial."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import fake_config
from tests.search.conftest import running_trial


def test_three_workers_survive_one_killed(pg_url: str, mlflow_server: str, tmp_path: Path) -> None:
    name = f"scale-{os.getpid()}-{tmp_path.name}"
    budget = 6
    data = fake_config(
        tmp_path, accuracy={"tasks": []}, objectives=[{"name": "tokens_per_s"}],
        search={"trials": budget, "sampler": "random", "seed": None, "heartbeat_s": 1, "storage": pg_url,
                "study_name": name},
        mlflow={"tracking_uri": mlflow_server, "experiment": name},
    )  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "autoinfer", "search", "c.yaml"]

    def start(machine: str, load_s: str) -> subprocess.Popen[str]:
        env = {**os.environ, "AUTOINFER_WORKER_ID": f"{machine}:1", "AUTOINFER_FAKE_LOAD_S": load_s}
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    doomed = start("machine-a", "600")  # loads for ten minutes: killed long before
    others: list[subprocess.Popen[str]] = []
    try:
        lost = running_trial(doomed, name, pg_url)  # machine-a is the only worker so far
        others = [start("machine-b", "2"), start("machine-c", "2")]
        doomed.kill()  # kill -9 mid-trial: no cleanup, its heartbeat just stops
        doomed.wait()
        for w in others:
            out, err = w.communicate(timeout=900)
            assert w.returncode == 0, out[-2000:] + err[-2000:]
    finally:  # a test that fails or is interrupted leaves no worker behind
        for w in [doomed, *others]:
            w.kill()

    trials = optuna.load_study(study_name=name, storage=pg_url).trials
    dead = trials[lost]
    assert dead.state == TrialState.FAIL and "machine-a:1 stopped beating" in dead.user_attrs["fail_reason"]
    rerun = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(rerun) == 1 and rerun[0].user_attrs["worker"] in ("machine-b:1", "machine-c:1")
    # The lost point is measured again exactly once: by its retry, or, when a worker sampled the
    # same point afresh in a trial numbered below the retry (it asked while the point was being
    # re-queued), by that trial, which keeps it; the retry then hands itself back naming it.
    again = rerun[0]
    if again.state == TrialState.PRUNED:
        again = trials[again.user_attrs["in_flight_on"]]
        assert again.number < rerun[0].number and again.user_attrs["point"] == dead.user_attrs["point"]
    assert again.state == TrialState.COMPLETE, (rerun[0].state, rerun[0].user_attrs)
    done = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    points = [tuple(sorted(t.user_attrs["point"].items())) for t in done]
    assert len(done) == budget and len(set(points)) == budget  # exactly the budget, no point twice

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(name)
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # kept by the server, for every machine
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autoinfer.role") == "study"]
    assert len(parents) == 1
    per_trial: dict[int, list[str]] = {}
    for r in runs:
        if "autoinfer.trial" in r.data.tags:
            per_trial.setdefault(int(r.data.tags["autoinfer.trial"]), []).append(r.info.status)
    finished = {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)}
    surplus = {t.number for t in trials if t.user_attrs.get("surplus")}  # handed back: never a run
    assert finished <= set(per_trial) and not surplus & set(per_trial)
    twice = {n: v for n, v in per_trial.items() if len(v) != 1}
    assert not twice, [(n, v, trials[n].state.name, trials[n].user_attrs) for n, v in twice.items()]  # one run each
    assert per_trial[dead.number] == ["FAILED"] and all(per_trial[t.number] == ["FINISHED"] for t in done)
    # The parent's frontier artifacts hold every measured trial: no worker's older snapshot won.
    table = Path(client.download_artifacts(parents[0].info.run_id, "pareto/trials.csv", str(tmp_path)))
    with open(table) as f:
        assert {int(row["trial"]) for row in csv.DictReader(f)} == {t.number for t in done}
    assert parents[0].info.status == "FINISHED"
    optuna.delete_study(study_name=name, storage=pg_url)


def test_a_worker_killed_right_after_ask_does_not_hang_the_study(pg_url: str, tmp_path: Path) -> None:
    """A worker SIGKILLed after taking a trial and before that trial's first heartbeat (the test
    hook DIE_AFTER_ASK puts it exactly there) leaves a RUNNING trial with no heartbeat row, which
    Optuna's stale check never sees: the next worker fails it after the grace period, re-queues it
    and measures the whole budget instead of waiting for that trial forever."""
    from autoinfer.search.coordination import DIE_AFTER_ASK

    name = f"orphan-{os.getpid()}-{tmp_path.name}"
    budget = 2
    data = fake_config(
        tmp_path, accuracy={"tasks": []}, objectives=[{"name": "tokens_per_s"}],
        search={"trials": budget, "sampler": "random", "seed": None, "heartbeat_s": 1, "storage": pg_url,
                "study_name": name},
    )  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "autoinfer", "search", "c.yaml"]

    def worker(machine: str, **env: str) -> subprocess.Popen[str]:
        env = {**os.environ, "AUTOINFER_WORKER_ID": f"{machine}:1", **env}
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    doomed = worker("machine-a", **{DIE_AFTER_ASK: "1"})
    try:
        doomed.communicate(timeout=600)
    finally:
        doomed.kill()
    assert doomed.returncode == -9  # killed itself with its trial just taken
    (orphan,) = optuna.load_study(study_name=name, storage=pg_url).trials
    assert orphan.state == TrialState.RUNNING and "worker" not in orphan.user_attrs
    survivor = worker("machine-b")
    try:
        out, err = survivor.communicate(timeout=300)  # without the never-beat check: waits forever
    finally:
        survivor.kill()
    assert survivor.returncode == 0, out[-2000:] + err[-2000:]
    trials = optuna.load_study(study_name=name, storage=pg_url).trials
    lost = trials[orphan.number]
    assert lost.state == TrialState.FAIL and "took it and never beat" in lost.user_attrs["fail_reason"]
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == lost.number] == [TrialState.COMPLETE]
    done = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(done) == budget and {t.user_attrs["worker"] for t in done} == {"machine-b:1"}
    optuna.delete_study(study_name=name, storage=pg_url)
