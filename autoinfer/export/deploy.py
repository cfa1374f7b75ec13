"""A deployment config: the exact configuration of one trial plus the evidence for choosing it."""

from __future__ import annotations

from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from autoinfer.config import Config
from autoinfer.errors import AutoinferError
from autoinfer.export.runtime import runtime_block
from autoinfer.search.pareto import pareto_trials


def deployment_config(config: Config, study: optuna.Study, number: int | None = None) -> dict[str, Any]:
    if number is None:
        front = pareto_trials(study)
        if not front:
            raise AutoinferError(f"study {config.study_name!r} has no feasible completed trial yet")
        first = config.objectives[0]
        sign = 1 if first.resolved_direction == "maximize" else -1
        trial = max(front, key=lambda t: sign * t.user_attrs["metrics"][first.name])
        why = f"Pareto frontier trial with the best {first.name}"
    else:
        if number < 0 or number >= len(study.trials):
            raise AutoinferError(f"trial {number} is not in study {config.study_name!r}")
        trial = study.trials[number]
        if trial.state != TrialState.COMPLETE:
            raise AutoinferError(f"trial {number} is {trial.state.name}, not COMPLETE")
        why = "chosen by --trial"
    point = trial.user_attrs["point"]
    info = trial.user_attrs.get("info", {})
    model = {k: v for k, v in config.model.model_dump().items() if v is not None}
    return {
        "model": model,
        "engine": point["engine"],
        "quantization": point["quantization"],
        "draft": point["draft"],
        "batch_size": point["batch_size"],
        "hardware": point["hardware"],
        "generation": {"max_new_tokens": config.workload.max_new_tokens, "do_sample": False},
        "runtime": runtime_block(model, point, info),
        "measured": {
            "study": config.study_name,
            "trial": trial.number,
            "why": why,
            "metrics": trial.user_attrs.get("metrics", {}),
            "energy_source": info.get("energy_source"),
            "energy_detail": info.get("energy_detail"),
            "quant_backend": info.get("quant_backend"),
            "repeats": info.get("measured_repeats"),
            "sequences": info.get("measured_sequences"),
        },
    }


def to_yaml(data: dict[str, Any]) -> str:
    return "# autoinfer deployment config: the measured configuration and the evidence for it\n" + yaml.safe_dump(
        data, sort_keys=False
    )
