"""What the benchmark scripts share: a config turned into a throw-away study, one trial measured
the way the search measures it, and a line naming the machine. Not a benchmark itself."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import optuna

from autoinfer.config import Config
from autoinfer.engines import TrialPoint
from autoinfer.identity import base_of, study_identity
from autoinfer.record import TrialRecord
from autoinfer.search.isolation import run_isolated
from autoinfer.search.study import trial_payload


def throwaway(config: Config, workdir: Path, name: str) -> Config:
    """The config with its study and MLflow store in `workdir`: a fresh study that leaves the
    user's own untouched, while the caches (~/.cache/autoinfer: GGUF levels, conversions, the
    bandwidth probe) stay shared, so a benchmark starts warm once anything has run."""
    search = config.search.model_copy(update={"storage": f"sqlite:///{workdir}/optuna.db", "study_name": name})
    mlflow = config.mlflow.model_copy(
        update={"tracking_uri": f"sqlite:///{workdir}/mlflow.db", "artifact_location": str(workdir / "artifacts")}
    )
    return config.model_copy(update={"search": search, "mlflow": mlflow})


def measure(
    config: Config,
    point: TrialPoint,
    logs: Path,
    study: optuna.Study | None = None,
    known: tuple[TrialRecord, ...] = (),
    timeout_s: float = 1800,
) -> TrialRecord:
    """One trial of `point`, in a child process, exactly as `autoinfer search` runs it; accuracy
    already in `study` (or in `known` records) for the same weights is reused as the search would."""
    payload = trial_payload(config, study_identity(config), point, logs / f"{point.label()}.log", study)
    for rec in known:
        if rec.accuracy is not None and base_of(rec.accuracy.key) == payload["accuracy_key"]:
            payload["known_accuracy"].setdefault(rec.accuracy.key, rec.accuracy)
    outcome = run_isolated(payload, timeout_s)
    if not outcome.ok or not isinstance(outcome.result, TrialRecord):
        raise SystemExit(f"{point.label()}: the trial failed: {outcome.reason} (log: {outcome.log_path})")
    return outcome.result


def machine() -> str:
    from autoinfer.hardware import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def today() -> str:
    return datetime.date.today().isoformat()
