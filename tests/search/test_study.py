"""The search loop on the tiny model: tracking agreement, failures, resume, interruption."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autoinfer.config import parse_config
from autoinfer.search.study import open_study, run_search
from tests.conftest import base_config


def children(cfg: Any) -> dict[int, Any]:
    client = MlflowClient(cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {int(r.data.tags["autoinfer.trial"]): r for r in runs if "autoinfer.trial" in r.data.tags}


def config(model_dir: Path, tmp: Path, **over: Any) -> Any:
    return parse_config(base_config(model_dir, tmp, **over), base_dir=str(tmp))


def test_search_tracks_every_trial_and_the_frontier(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir, tmp_path, constraints=["tokens_per_s >= 1"])
    study, tracker = run_search(cfg)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    measured = [t for t in finished if "duplicate_of" not in t.user_attrs]
    assert len(measured) == 3
    runs = children(cfg)
    assert set(runs) == {t.number for t in study.trials}  # MLflow and Optuna agree trial for trial
    for t in measured:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
        r = runs[t.number].data
        assert r.metrics["tokens_per_s"] == t.user_attrs["metrics"]["tokens_per_s"] > 0
        assert r.tags["energy_source"] == "estimated:cpu-time"
        assert 0 <= r.metrics["accuracy"] <= 1 and r.metrics["accuracy_stderr"] > 0
        assert r.metrics["accuracy_samples"] == 4
        assert r.params["quantization"] == t.user_attrs["point"]["quantization"]
        assert "constraint.tokens_per_s_min_violation" in r.metrics
        if t.user_attrs["point"]["draft"] != "none":
            assert "acceptance_rate" in r.metrics
    # the accuracy of a (quantization) key is measured once and then reused, with a citation
    by_quant: dict[str, list[Any]] = {}
    for t in measured:
        by_quant.setdefault(t.user_attrs["point"]["quantization"], []).append(t)
    for trials in by_quant.values():
        fresh = [t for t in trials if "accuracy_reused_from_trial" not in t.user_attrs["info"]]
        assert len(fresh) == 1
    tps = {t.user_attrs["metrics"]["tokens_per_s"] for t in measured}
    assert len(tps) == len(measured)  # real, non-constant measurements
    client = MlflowClient(cfg.mlflow.tracking_uri)
    arts = {a.path for a in client.list_artifacts(tracker.parent_id, "pareto")}
    assert {"pareto/frontier.csv", "pareto/frontier.json", "pareto/pareto.png", "pareto/pareto.html"} <= arts
    assert any(r.data.tags.get("pareto") == "true" for r in runs.values())
    parent = client.get_run(tracker.parent_id).data
    assert "machine.cpu" in parent.tags and parent.params["search.trials"] == "3"


def test_failing_trial_is_recorded_and_the_study_finishes(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(
        tiny_model_dir,
        tmp_path,
        space={"quantization": ["fp32"], "draft": ["none", f"model:{tmp_path}/missing-draft"], "batch_size": [1],
               "hardware": ["cpu:1"]},
        search={"trials": 2, "sampler": "grid", "storage": f"sqlite:///{tmp_path}/o.db", "study_name": "f"},
        accuracy={"tasks": []},
        objectives=[{"name": "tokens_per_s"}],
    )  # fmt: skip
    study, _ = run_search(cfg)
    by_draft = {t.user_attrs["point"]["draft"]: t for t in study.trials}
    bad = by_draft[f"model:{tmp_path}/missing-draft"]
    assert bad.state == TrialState.FAIL
    assert "cannot be loaded" in bad.user_attrs["fail_reason"]
    assert by_draft["none"].state == TrialState.COMPLETE
    run = children(cfg)[bad.number]
    assert run.info.status == "FAILED" and "cannot be loaded" in run.data.tags["autoinfer.fail_reason"]


def test_resume_neither_loses_nor_reruns(tiny_model_dir: Path, tmp_path: Path) -> None:
    over: dict[str, Any] = {"accuracy": {"tasks": []}, "objectives": [{"name": "tokens_per_s"}]}
    first = config(tiny_model_dir, tmp_path, search={"trials": 2, "sampler": "random"}, **over)
    study, _ = run_search(first)
    before = {t.number: t.datetime_complete for t in study.trials}
    second = config(tiny_model_dir, tmp_path, search={"trials": 3, "sampler": "random"}, **over)
    study, _ = run_search(second)
    counted = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len(counted) == 3
    for number, done in before.items():
        assert study.trials[number].datetime_complete == done  # untouched
    assert set(children(second)) == {t.number for t in study.trials}


def test_interrupted_trial_is_failed_and_requeued(tiny_model_dir: Path, tmp_path: Path) -> None:
    over: dict[str, Any] = {"accuracy": {"tasks": []}, "objectives": [{"name": "tokens_per_s"}]}
    cfg = config(tiny_model_dir, tmp_path, search={"trials": 1, "sampler": "random"}, **over)
    study = open_study(cfg)
    # A trial left RUNNING by a search process that died (pid that cannot exist).
    dead = study.ask({"quantization": optuna.distributions.CategoricalDistribution(["fp32", "bf16"])})
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")
    assert not os.path.exists(f"/proc/{2**22 + 12345}")
    study, _ = run_search(cfg)
    old = study.trials[dead.number]
    assert old.state == TrialState.FAIL and old.user_attrs["interrupted"] is True
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params["quantization"] == old.params["quantization"]
