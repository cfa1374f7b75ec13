"""Workers pinned to their hardware (`autoinfer search --hardware`): one study, several machines,
each worker measuring only the points on its own targets. Two worker ids stand in for two machines."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import fake_config


def _setup(tmp: Path, sampler: str, trials: int) -> dict[str, Any]:
    data = fake_config(
        tmp, accuracy={"tasks": []}, objectives=[{"name": "tokens_per_s"}],
        search={"trials": trials, "sampler": sampler, "seed": 2, "storage": f"sqlite:///{tmp}/optuna.db",
                "study_name": "t"},
    )  # fmt: skip
    data["space"]["hardware"] = ["cpu:1", "cpu:2"]
    (tmp / "c.yaml").write_text(yaml.safe_dump(data))
    return data


def _worker(tmp: Path, machine: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUTOINFER_WORKER_ID": f"{machine}:1"}
    cmd = [sys.executable, "-m", "autoinfer", "search", "c.yaml", *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def _measured(storage: str) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name="t", storage=storage).trials
    return [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]


@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_each_worker_measures_only_its_own_hardware(tmp_path: Path, sampler: str) -> None:
    data = _setup(tmp_path, sampler, trials=4)
    a = _worker(tmp_path, "box-a", "--hardware", "cpu:1", "--trials", "4")
    assert a.returncode == 0, a.stderr[-2000:]
    b = _worker(tmp_path, "box-b", "--hardware", "cpu:2", "--trials", "8")
    assert b.returncode == 0, b.stderr[-2000:]
    done = _measured(data["search"]["storage"])
    by_worker = {w: {t.user_attrs["point"]["hardware"] for t in done if t.user_attrs["worker"] == w}
                 for w in ("box-a:1", "box-b:1")}  # fmt: skip
    assert by_worker == {"box-a:1": {"cpu:1"}, "box-b:1": {"cpu:2"}}
    points = [tuple(sorted(t.user_attrs["point"].items())) for t in done]
    assert len(points) == 8 and len(set(points)) == 8  # the whole 8-point space, each point once
    # One set of parameter distributions serves both machines (no per-machine names).
    assert {name for t in done for name in t.params} <= {"hardware", "quantization", "batch_size", "draft"}
    # Each trial says which machine it ran on.
    rec = done[0].user_attrs["provenance"]["machine"]
    assert rec["cpu"] and rec["cpu_count"] == os.cpu_count()
    client = MlflowClient(data["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("autoinfer").experiment_id])
    assert all("info.machine.cpu" in r.data.params for r in runs if r.data.tags.get("autoinfer.state") == "COMPLETE")
    # One frontier over both machines' trials, from any machine.
    r = subprocess.run([sys.executable, "-m", "autoinfer", "pareto", "c.yaml", "--csv", "all.csv"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "all.csv") as f:
        assert sorted(row["hardware"] for row in csv.DictReader(f)) == ["cpu:1"] * 4 + ["cpu:2"] * 4


def test_a_queued_point_waits_for_the_worker_that_owns_its_hardware(tmp_path: Path) -> None:
    data = _setup(tmp_path, "random", trials=4)
    a = _worker(tmp_path, "box-a", "--hardware", "cpu:1", "--trials", "1")
    assert a.returncode == 0, a.stderr[-2000:]
    storage = data["search"]["storage"]
    study = optuna.load_study(study_name="t", storage=storage)
    point = {"engine": "fake", "quantization": "int8", "draft": "none", "batch_size": 2, "hardware": "cpu:2",
             "draft_tokens": 0}  # fmt: skip
    study.enqueue_trial({"hardware": "cpu:2", "quantization": "int8", "batch_size": 2}, user_attrs={"point": point})
    a = _worker(tmp_path, "box-a", "--hardware", "cpu:1", "--trials", "3")
    assert a.returncode == 0, a.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=storage).trials
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["point"] == point  # not taken by box-a
    assert all(t.user_attrs["point"]["hardware"] == "cpu:1" for t in _measured(storage))
    b = _worker(tmp_path, "box-b", "--hardware", "cpu:2", "--trials", "4")
    assert b.returncode == 0, b.stderr[-2000:]
    taken = [t for t in _measured(storage) if t.user_attrs["worker"] == "box-b:1"]
    assert [t.user_attrs["point"] for t in taken] == [point]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hardware", "cpu:3"], "search.hardware[0]: cpu:3 is not one of space.hardware"),
        (["--hardware", "cuda:0"], "search.hardware[0]: cuda:0"),
        (["--hardware", "tpu"], "search.hardware[0]: 'tpu' is not a hardware target"),
    ],
)
def test_a_bad_hardware_flag_is_a_one_line_error(tmp_path: Path, args: list[str], message: str) -> None:
    _setup(tmp_path, "random", trials=2)
    r = _worker(tmp_path, "box-a", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "optuna.db").exists()
