"""Fault injection: a trial that segfaults, runs out of memory, hangs or raises fails with its own
reason in Optuna and MLflow, and the study goes on to finish."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autoinfer.config import parse_config
from autoinfer.search.study import run_search
from tests.conftest import fake_config


def test_each_fault_fails_its_trial_with_its_reason_and_the_study_finishes(tmp_path: Path) -> None:
    data = fake_config(
        tmp_path,
        space={"engine": ["fake"], "quantization": ["segv", "oom", "hang", "raise", "fp32"], "draft": ["none"],
               "batch_size": [1], "hardware": ["cpu:1"]},
        accuracy={"tasks": []},
        objectives=[{"name": "tokens_per_s"}],
        search={"trials": 5, "sampler": "grid", "trial_timeout_s": 45},
    )  # fmt: skip
    study, _ = run_search(parse_config(data, base_dir=str(tmp_path)))
    by_quant = {t.user_attrs["point"]["quantization"]: t for t in study.trials}
    reasons = {q: str(t.user_attrs.get("fail_reason", "")) for q, t in by_quant.items()}
    assert by_quant["fp32"].state == TrialState.COMPLETE
    assert "SIGSEGV" in reasons["segv"]
    assert "MemoryError" in reasons["oom"]
    assert reasons["hang"] == "timed out after 45 s"
    assert reasons["raise"] == "RuntimeError: injected raise failure"
    client = MlflowClient(data["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("autoinfer").experiment_id])
    logged = {int(r.data.tags["autoinfer.trial"]): r for r in runs if "autoinfer.trial" in r.data.tags}
    for q, t in by_quant.items():
        run = logged[t.number]
        if q == "fp32":
            assert run.info.status == "FINISHED"
        else:  # the same reason in both stores
            assert run.info.status == "FAILED" and run.data.tags["autoinfer.fail_reason"] == reasons[q]
