"""Servers the distributed-study tests share: PostgreSQL (scripts/start_postgres.sh) and an MLflow
tracking server on it (scripts/start_mlflow_server.sh). CI starts both; a test run started by hand
starts them when their binaries are installed, and skips when they are not."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PG_URL = os.environ.get("AUTOINFER_TEST_PG", "postgresql://autoinfer:autoinfer@127.0.0.1:55432/autoinfer_test")


def server_binaries() -> bool:
    return bool(shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/postgres")))


@pytest.fixture
def pg_url() -> str:
    if not server_binaries():
        pytest.skip("PostgreSQL server binaries are not installed (scripts/start_postgres.sh installs them)")
    import sqlalchemy as sa

    def reachable() -> str:
        try:
            with sa.create_engine(PG_URL).connect() as c:
                c.execute(sa.text("select 1"))
            return ""
        except Exception as e:  # noqa: BLE001 - any failure means "not up"
            return str(e).splitlines()[0]

    if reachable() and "AUTOINFER_TEST_PG" not in os.environ:
        # Installed but not running: start the project's throw-away server (as CI does).
        subprocess.run(["bash", str(SCRIPTS / "start_postgres.sh")], check=False, capture_output=True, timeout=120)
    problem = reachable()
    if problem:
        pytest.fail(f"PostgreSQL is installed but not reachable at {PG_URL}: {problem}")
    return PG_URL


MLFLOW_URL = os.environ.get("AUTOINFER_TEST_MLFLOW", "http://127.0.0.1:55000")


@pytest.fixture
def mlflow_server(pg_url: str) -> str:
    """The URL of a running MLflow tracking server whose backend store is PostgreSQL."""

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{MLFLOW_URL}/health", timeout=5):
                return True
        except OSError:
            return False

    if not up() and "AUTOINFER_TEST_MLFLOW" not in os.environ:
        subprocess.run(["bash", str(SCRIPTS / "start_mlflow_server.sh")], check=False, capture_output=True, timeout=600)
    if not up():
        pytest.fail(f"no MLflow tracking server answers at {MLFLOW_URL} (scripts/start_mlflow_server.sh starts one)")
    return MLFLOW_URL


def running_trial(worker: subprocess.Popen[str], study: str, storage: str, timeout_s: float = 300) -> int:
    """The number of the first trial the study holds RUNNING for a worker that has started beating
    for it (its `worker` attribute is written after its first heartbeat; waits while `worker` lives)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never started a trial"
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).trials
        except KeyError:
            continue  # not created yet
        running = [t.number for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if running:
            return running[0]
