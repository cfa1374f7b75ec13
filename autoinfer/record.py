"""One typed record per measured trial, and the one place it is written to and read from Optuna.

A trial process returns a `TrialRecord`; the search process stores it as the trial's user
attributes; everything downstream (ranking, tables, MLflow, export) reads it back through
`record_of`. Nothing else reads trial results by string key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial

from autoinfer.engines.base import TrialPoint
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.metrics import check_declared

POINT_ATTR = "point"
STAGE_ATTR = "stage_s"  # where the trial's wall time went: seconds per stage (search.study.stage_seconds)
RECORD_ATTRS = ("metrics", "provenance", "accuracy", "generations")


@dataclass(frozen=True)
class Provenance:
    """Where a trial's numbers came from: how they were measured, and on what."""

    identity: str  # hash of the study identity (autoinfer.identity) the trial was measured under
    energy_source: str  # measured:nvml | measured:rapl | estimated:cpu-time
    energy_detail: str
    energy_meter_reason: str
    memory_source: str  # how peak_memory_gb was obtained
    threads: int
    prompts: int  # size of the fixed prompt set
    repeats: int  # measured passes over it
    warmup: int  # unmeasured batches before them
    sequences: int  # requests measured
    bandwidth_source: str
    # Drafted trials only: outputs equal plain greedy decoding of the same target (None: no draft).
    draft_lossless: bool | None = None
    draft_check: str = ""  # what the lossless check compared, or where it first differed
    engine: dict[str, Any] = field(default_factory=dict)  # engine facts: files, backends, versions
    # An estimated energy figure's formula inputs (cpu_s, wall_s, cores, watts, both terms' joules).
    energy_inputs: dict[str, float] = field(default_factory=dict)
    # How busy the machine was in the kept measured window (autoinfer.evaluators.machine_load).
    machine_load: str = ""
    machine: dict[str, Any] = field(default_factory=dict)  # the machine it ran on (host, CPU, GPUs)
    # Served trials only: the server command, the load point, the SLO and every request's timings.
    served: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generations:
    """What the trial generated in its first measured repeat, prompt by prompt: the evidence a
    served copy of the configuration is checked against (`autoinfer verify`)."""

    prompt_ids: tuple[tuple[int, ...], ...]  # the tokens the engine fed (chat template applied)
    output_ids: tuple[tuple[int, ...], ...]  # greedy output, up to and including EOS
    texts: tuple[str, ...]  # the output's text, end-of-generation tokens left out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Generations:
        return cls(
            prompt_ids=tuple(tuple(p) for p in d["prompt_ids"]),
            output_ids=tuple(tuple(o) for o in d["output_ids"]),
            texts=tuple(d["texts"]),
        )


@dataclass(frozen=True)
class TrialRecord:
    point: TrialPoint
    metrics: dict[str, float]
    provenance: Provenance
    accuracy: AccuracyResult | None = None
    generations: Generations | None = None  # None for trials from before they were kept

    def __post_init__(self) -> None:
        check_declared(self.metrics)

    def to_attrs(self) -> dict[str, Any]:
        return {
            POINT_ATTR: self.point.as_dict(),
            "metrics": dict(self.metrics),
            "provenance": dataclasses.asdict(self.provenance),
            "accuracy": dataclasses.asdict(self.accuracy) if self.accuracy is not None else None,
            "generations": dataclasses.asdict(self.generations) if self.generations is not None else None,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord | None:
        if POINT_ATTR not in attrs or "metrics" not in attrs or "provenance" not in attrs:
            return None
        acc, gen = attrs.get("accuracy"), attrs.get("generations")
        return cls(
            point=TrialPoint(**attrs[POINT_ATTR]),
            metrics=dict(attrs["metrics"]),
            provenance=Provenance(**attrs["provenance"]),
            accuracy=AccuracyResult(**acc) if acc else None,
            generations=Generations.from_dict(gen) if gen else None,
        )


def record_of(trial: FrozenTrial) -> TrialRecord | None:
    """The measured record of a trial (None for failed, pruned or not-yet-measured trials)."""
    return TrialRecord.from_attrs(trial.user_attrs)


def point_of(trial: FrozenTrial) -> TrialPoint | None:
    p = trial.user_attrs.get(POINT_ATTR)
    return TrialPoint(**p) if p else None


def stage_seconds_of(trial: FrozenTrial) -> dict[str, float]:
    """Seconds per stage of a trial's wall time (empty for trials from before they were kept)."""
    return {str(k): float(v) for k, v in (trial.user_attrs.get(STAGE_ATTR) or {}).items()}


def save_point(trial: Any, point: TrialPoint) -> None:
    """Record which point a trial measures, before it is measured (grid queue, duplicates)."""
    trial.set_user_attr(POINT_ATTR, point.as_dict())


def save_record(trial: Any, record: TrialRecord) -> None:
    for key, value in record.to_attrs().items():
        if key != POINT_ATTR:
            trial.set_user_attr(key, value)


def copy_record(trial: Any, source: FrozenTrial) -> None:
    """Give `trial` the stored results of `source` (a re-proposed point answered from storage)."""
    for key in RECORD_ATTRS:
        if key in source.user_attrs:
            trial.set_user_attr(key, source.user_attrs[key])
