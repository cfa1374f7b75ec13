"""A worker that stops beating (its machine died, or it was killed) has its trial failed and run
again by another worker, on whatever machine that worker is: Optuna's heartbeat, not a pid check."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import fake_config
from tests.search.conftest import running_trial


def test_a_dead_workers_trial_is_rerun_through_the_heartbeat(tmp_path: Path) -> None:
    data = fake_config(
        tmp_path, accuracy={"tasks": []}, objectives=[{"name": "tokens_per_s"}],
        search={"trials": 2, "sampler": "random", "seed": 3, "heartbeat_s": 1,
                "storage": f"sqlite:///{tmp_path}/optuna.db", "study_name": "t"},
    )  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "autoinfer", "search", "c.yaml"]
    # Worker A stands for another machine (the pid check cannot claim its trials) and loads slowly.
    env = {**os.environ, "AUTOINFER_WORKER_ID": "elsewhere:1", "AUTOINFER_FAKE_LOAD_S": "600"}
    a = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = data["search"]["storage"]
    lost = running_trial(a, "t", storage)
    a.kill()  # kill -9: no cleanup; its trial stays RUNNING until its heartbeat goes stale
    a.wait()
    time.sleep(4)  # past 3 missed beats, so the next worker finds the trial stale before its budget is met
    b = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=storage).trials
    dead = trials[lost]
    assert dead.state == TrialState.FAIL and dead.user_attrs["interrupted"] is True
    assert "its worker elsewhere:1 stopped beating" in dead.user_attrs["fail_reason"]
    rerun = [t for t in trials if t.user_attrs.get("retry_of") == lost]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE  # measured again, once
    done = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    points = [tuple(sorted(t.user_attrs["point"].items())) for t in done]
    assert len(done) == 2 and len(set(points)) == 2  # the budget, no point measured twice
    client = MlflowClient(data["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("autoinfer").experiment_id])
    status = {int(r.data.tags["autoinfer.trial"]): r.info.status for r in runs if "autoinfer.trial" in r.data.tags}
    assert status[lost] == "FAILED" and [status[t.number] for t in done] == ["FINISHED", "FINISHED"]
