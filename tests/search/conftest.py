"""Servers the distributed-study tests share: PostgreSQL (scripts/start_postgres.sh) and an MLflow
tracking server on it (scripts/start_mlflow_server.sh). CI starts PostgreSQL, and a test run
started by hand starts it when its binaries are installed (and skips when they are not); each test
session starts an MLflow server of its own. Whatever a fixture starts it stops at the end of the
session, with all of its processes; a PostgreSQL that was already up is left alone."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PG_URL = os.environ.get("AUTOINFER_TEST_PG", "postgresql://autoinfer:autoinfer@127.0.0.1:55432/autoinfer_test")
PG_DATA = os.environ.get("AUTOINFER_PG_DATA", "/tmp/autoinfer-pg")


def server_binaries() -> bool:
    return bool(shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/postgres")))


def _pg_reachable() -> str:
    import sqlalchemy as sa

    try:
        with sa.create_engine(PG_URL).connect() as c:
            c.execute(sa.text("select 1"))
        return ""
    except Exception as e:  # noqa: BLE001 - any failure means "not up"
        return str(e).splitlines()[0]


def _stop_postgres() -> None:
    """Stop the throw-away server scripts/start_postgres.sh started (as it started it: as the
    postgres user when root)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    pg_ctl = str(bins[-1]) if bins else shutil.which("pg_ctl") or "pg_ctl"
    cmd = f"{pg_ctl} -D {PG_DATA} -m fast -w stop"
    argv = ["su", "postgres", "-s", "/bin/bash", "-c", cmd] if os.getuid() == 0 else ["bash", "-c", cmd]
    subprocess.run(argv, check=False, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    if not server_binaries():
        pytest.skip("PostgreSQL server binaries are not installed (scripts/start_postgres.sh installs them)")
    started = False
    if _pg_reachable() and "AUTOINFER_TEST_PG" not in os.environ:
        # Installed but not running: start the project's throw-away server (as CI does).
        subprocess.run(["bash", str(SCRIPTS / "start_postgres.sh")], check=False, capture_output=True, timeout=120)
        started = True
    problem = _pg_reachable()
    if problem:
        pytest.fail(f"PostgreSQL is installed but not reachable at {PG_URL}: {problem}")
    yield PG_URL
    if started:
        _stop_postgres()


MLFLOW_URL = os.environ.get("AUTOINFER_TEST_MLFLOW")  # a server of your own; else each session starts one


def _mlflow_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process_tree(pid: int, timeout_s: float = 20) -> None:
    """End a process, its process group (when it leads one of its own) and every descendant,
    however far they wandered: SIGTERM first, SIGKILL what is left after `timeout_s`."""
    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]  # listed before any dies and is reparented
    except psutil.NoSuchProcess:
        return
    own_group = os.getpgid(pid) == pid and pid != os.getpgrp()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if own_group:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        if not alive:
            return


@pytest.fixture(scope="session")
def mlflow_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running MLflow tracking server whose backend store is PostgreSQL: the one
    AUTOINFER_TEST_MLFLOW names, or one this session starts on a free port (never one another
    session started and may stop under it) and stops at its end, uvicorn and job runner included."""
    if MLFLOW_URL:
        if not _mlflow_up(MLFLOW_URL):
            pytest.fail(f"no MLflow tracking server answers at AUTOINFER_TEST_MLFLOW={MLFLOW_URL}")
        yield MLFLOW_URL
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    base = tmp_path_factory.mktemp("mlflow-server")
    pidfile = base / "server.pid"
    env = {**os.environ, "AUTOINFER_MLFLOW_PORT": str(port), "AUTOINFER_MLFLOW_ARTIFACTS": str(base / "artifacts"),
           "AUTOINFER_MLFLOW_PIDFILE": str(pidfile)}  # fmt: skip
    # A run stopped by SIGTERM (a CI timeout, `timeout`) ends as Ctrl-C does, so the teardown runs.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        r = subprocess.run(["bash", str(SCRIPTS / "start_mlflow_server.sh")], capture_output=True, text=True,
                           timeout=600, env=env)  # fmt: skip
        if not _mlflow_up(url):
            pytest.fail(f"scripts/start_mlflow_server.sh started no MLflow server at {url}: {r.stderr[-2000:]}")
        yield url
    finally:
        if pidfile.exists():
            stop_process_tree(int(pidfile.read_text()))
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
