"""Two search workers sharing one study through PostgreSQL (started by scripts/start_postgres.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import fake_config


def test_two_workers_share_a_study(pg_url: str, tmp_path: Path) -> None:
    name = f"dist-{os.getpid()}-{tmp_path.name}"
    cfg = fake_config(
        tmp_path,
        accuracy={"tasks": []},
        objectives=[{"name": "tokens_per_s"}],
        search={"trials": 4, "sampler": "random", "storage": pg_url, "study_name": name, "seed": None},
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "autoinfer", "search", "c.yaml"]
    # The first worker's trials load slowly, so the second must take some of the budget: both
    # measure, and neither may go past the budget the other is filling.
    envs = [{**os.environ, "AUTOINFER_FAKE_LOAD_S": "3"}, dict(os.environ)]
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for env in envs
    ]
    outs = [w.communicate(timeout=900) for w in workers]
    for w, (out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, out[-2000:] + err[-2000:]
    study = optuna.load_study(study_name=name, storage=pg_url)
    measured = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(measured) == 4  # exactly: a worker that asked for a trial past the budget hands it back
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in measured} == {str(w.pid) for w in workers}
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("autoinfer")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("autoinfer.role") == "study"]
    assert len(parents) == 1
    assert "***" in parents[0].data.params["search.storage"] and "autoinfer:autoinfer@" not in str(
        parents[0].data.params
    )
    children = {int(r.data.tags["autoinfer.trial"]) for r in runs if "autoinfer.trial" in r.data.tags}
    handed_back = {t.number for t in study.trials if "surplus" in t.user_attrs or "in_flight_on" in t.user_attrs}
    assert children == {t.number for t in study.trials} - handed_back  # handed-back trials are never runs
    optuna.delete_study(study_name=name, storage=pg_url)


def test_a_password_in_the_storage_url_goes_nowhere(pg_url: str, tmp_path: Path) -> None:
    """The study's database password never reaches MLflow, the trial logs, the terminal or an export."""
    secret = "hunter2-s3cret"  # the throw-away server trusts local connections, so any password opens it
    url = pg_url.replace("autoinfer:autoinfer@", f"autoinfer:{secret}@")
    name = f"secret-{os.getpid()}-{tmp_path.name}"
    cfg = fake_config(tmp_path, accuracy={"tasks": []}, objectives=[{"name": "tokens_per_s"}],
                      search={"trials": 2, "sampler": "random", "storage": url, "study_name": name})  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    said = []
    for args in (["search", "c.yaml"], ["export", "c.yaml", "--out", "ship/deploy.yaml"], ["pareto", "c.yaml"]):
        r = subprocess.run([sys.executable, "-m", "autoinfer", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        said.append(r.stdout + r.stderr)
    assert secret not in "".join(said)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".db" and p.name != "c.yaml"]
    assert any(p.name == "deploy.yaml" for p in files) and any(p.suffix == ".log" for p in files)
    assert [p for p in files if secret in p.read_text(errors="replace")] == []  # artifacts, logs, export
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    for run in client.search_runs([client.get_experiment_by_name("autoinfer").experiment_id]):
        assert secret not in str(run.data.params) + str(run.data.tags)
    optuna.delete_study(study_name=name, storage=url)
