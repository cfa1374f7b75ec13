"""A deployment config: the exact configuration of one trial plus the evidence for choosing it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from autoinfer.config import Config
from autoinfer.errors import AutoinferError
from autoinfer.export.runtime import runtime_block
from autoinfer.record import Provenance, TrialRecord, record_of
from autoinfer.search.pareto import pareto_trials, ranks_energy
from autoinfer.search.storage import redact


def deployment_config(
    config: Config, study: optuna.Study, number: int | None = None, host: str = "127.0.0.1"
) -> dict[str, Any]:
    """The deployment config of trial `number` (default: the best frontier trial); its server
    command listens on `host` (loopback unless the user names another)."""
    if number is None:
        front = pareto_trials(study, config)
        if not front:
            raise AutoinferError(f"study {config.study_name!r} has no feasible completed trial yet")
        sources = sorted({m.record.provenance.energy_source for m in front})
        if ranks_energy(config) and len(sources) > 1:
            raise AutoinferError(
                f"study {config.study_name!r} has one frontier per energy meter ({', '.join(sources)}): their "
                "joules are not the same quantity, so there is no single best trial; pick one with --trial"
            )
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
    model = {k: v for k, v in config.model.model_dump().items() if v is not None}
    return {
        "model": model,
        **point,
        "generation": {
            "max_new_tokens": config.workload.max_new_tokens,
            "ignore_eos": config.workload.ignore_eos,
            "do_sample": False,
        },
        "runtime": runtime_block(model, point, rec.provenance.engine, engine_config(config), host=host),
        "measured": measured_block(config, trial_number, why, rec),
    }


def measured_block(config: Config, trial_number: int, why: str, rec: TrialRecord) -> dict[str, Any]:
    """The evidence: what the trial measured, with what, and where its MLflow run is."""
    from autoinfer.tracking.mlflow_tracker import trial_run_id  # MLflow only when exporting

    prov = rec.provenance
    uri = config.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative to this directory
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return {
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
        "draft_check": prov.draft_check,
        "warnings": [w for w in (draft_tie_warning(trial_number, prov, rec.metrics),) if w],
        "identity": prov.identity,
        # Where `autoinfer verify` logs its result (the URI only where it holds no secret).
        "mlflow_run_id": trial_run_id(config, trial_number),
        "mlflow_tracking_uri": uri if redact(uri) == uri else None,
    }


def draft_tie_warning(number: int, prov: Provenance, metrics: dict[str, float]) -> str | None:
    """For a drafted trial whose output parted from plain greedy decoding (kept, not bit-exact): what
    a user of the export should know. None for any other trial."""
    if prov.draft_lossless is not False:
        return None
    if metrics.get("draft_divergence"):
        return (
            f"trial {number}'s drafted output parted from plain greedy decoding beyond floating-point ties on "
            f"{metrics['draft_divergence']:.0%} of its prompts: it was ranked by the accuracy of what it generated "
            "(or because plain greedy parts from itself as often), and served output will not match plain "
            "decoding of the same model (measured.draft_check says where)"
        )
    tied, margin = metrics.get("draft_tied_prompts"), metrics.get("draft_tie_margin")
    where = f" on {int(tied)} of {prov.prompts} prompts, up to {margin:.3g} logits apart" if tied and margin else ""
    return (
        f"trial {number}'s drafted output was not identical to plain greedy decoding: it parted at "
        f"floating-point ties{where}, so served greedy output need not be bit-exact with plain decoding "
        "of the same model (measured.draft_check has each tie)"
    )


def engine_config(config: Config) -> dict[str, Any]:
    """What an engine reads of the study config: enough to load the configuration again, and
    nothing with a secret in it (no storage or tracking URLs)."""
    dump = config.model_dump(mode="json")
    return {k: dump[k] for k in ("model", "workload", "transformers", "base_dir")}


def outputs_json(study: optuna.Study, number: int) -> str | None:
    """The trial's generated outputs as JSON (what `autoinfer verify` compares a server with)."""
    rec = record_of(study.trials[number])
    if rec is None or rec.generations is None:
        return None
    return json.dumps(dataclasses.asdict(rec.generations))


def to_yaml(data: dict[str, Any]) -> str:
    return "# autoinfer deployment config: the measured configuration and the evidence for it\n" + yaml.safe_dump(
        data, sort_keys=False
    )
