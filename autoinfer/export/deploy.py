"""A deployment config: the exact configuration of one trial plus the evidence for choosing it."""

from __future__ import annotations

from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from autoinfer.config import Config
from autoinfer.errors import AutoinferError
from autoinfer.export.runtime import runtime_block
from autoinfer.record import record_of
from autoinfer.search.pareto import pareto_trials


def deployment_config(config: Config, study: optuna.Study, number: int | None = None) -> dict[str, Any]:
    if number is None:
        front = pareto_trials(study, config)
        if not front:
            raise AutoinferError(f"study {config.study_name!r} has no feasible completed trial yet")
        first = config.objectives[0]
        sign = 1 if first.resolved_direction == "maximize" else -1
        chosen = max(front, key=lambda m: sign * m.record.metrics[first.name])
        trial_number, rec, why = chosen.number, chosen.record, f"Pareto frontier trial with the best {first.name}"
    else:
        if number < 0 or number >= len(study.trials):
            raise AutoinferError(f"trial {number} is not in study {config.study_name!r}")
        trial = study.trials[number]
        found = record_of(trial)
        if trial.state != TrialState.COMPLETE or found is None:
            raise AutoinferError(f"trial {number} is {trial.state.name}, not a completed measurement")
        trial_number, rec, why = number, found, "chosen by --trial"
    point = rec.point.as_dict()
    prov = rec.provenance
    model = {k: v for k, v in config.model.model_dump().items() if v is not None}
    return {
        "model": model,
        **point,
        "generation": {"max_new_tokens": config.workload.max_new_tokens, "do_sample": False},
        "runtime": runtime_block(model, point, prov.engine),
        "measured": {
            "study": config.study_name,
            "trial": trial_number,
            "why": why,
            "metrics": dict(rec.metrics),
            "energy_source": prov.energy_source,
            "energy_detail": prov.energy_detail,
            "memory_source": prov.memory_source,
            "quant_backend": prov.engine.get("quant_backend"),
            "prompts": prov.prompts,
            "repeats": prov.repeats,
            "sequences": prov.sequences,
            "draft_lossless": prov.draft_lossless,
            "identity": prov.identity,
        },
    }


def to_yaml(data: dict[str, Any]) -> str:
    return "# autoinfer deployment config: the measured configuration and the evidence for it\n" + yaml.safe_dump(
        data, sort_keys=False
    )
