"""Energy figures from different meters are never ranked together, and busy trials are never ranked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.errors import AutoinferError
from autoinfer.evaluators import energy
from autoinfer.export.deploy import deployment_config
from autoinfer.identity import first_difference, study_identity
from autoinfer.record import Provenance, TrialRecord, save_point, save_record
from autoinfer.search.pareto import Measured, pareto_front
from tests.conftest import fake_config
from tests.evaluators.test_energy import fake_rapl

ESTIMATED = Provenance("id", "estimated:cpu-time", "", "", "VmHWM", 1, 16, 2, 0, 32, "measured")
RAPL = dataclasses.replace(ESTIMATED, energy_source="measured:rapl")


def record(prov: Provenance, hardware: str = "cpu:1", **metrics: float) -> TrialRecord:
    return TrialRecord(TrialPoint("fake", "fp32", "none", 1, hardware), metrics, prov)


def cfg(objectives: list[str], **over: Any) -> Any:
    return parse_config({"model": {"source": "m"}, "accuracy": {"tasks": []},
                         "objectives": [{"name": o} for o in objectives], **over})  # fmt: skip


def test_trials_of_two_meters_get_one_frontier_each() -> None:
    trials = [
        Measured(0, record(RAPL, "cpu:2", j_per_token=0.5, tokens_per_s=50.0)),
        Measured(1, record(ESTIMATED, j_per_token=0.2, tokens_per_s=40.0)),  # would dominate 2 only
        Measured(2, record(RAPL, "cpu:2", j_per_token=0.9, tokens_per_s=30.0)),
        Measured(3, record(ESTIMATED, j_per_token=0.4, tokens_per_s=10.0)),
    ]
    # Ranked by joules: each meter's trials are compared among themselves only. Trial 1 (estimated)
    # would dominate RAPL's trial 2 on both axes, but their joules are not the same quantity.
    front = pareto_front(cfg(["j_per_token", "tokens_per_s"]), trials)
    assert [m.number for m in front] == [0, 1]
    assert [m.number for m in pareto_front(cfg(["j_per_token"]), trials)] == [0, 1]
    # Ranked by speed alone, the meter does not matter: one frontier.
    assert [m.number for m in pareto_front(cfg(["tokens_per_s"]), trials)] == [0]


def test_a_trial_measured_on_a_busy_machine_is_never_on_the_frontier() -> None:
    trials = [
        Measured(0, record(ESTIMATED, tokens_per_s=99.0, other_cpu_pct=47.0)),
        Measured(1, record(ESTIMATED, tokens_per_s=20.0, other_cpu_pct=1.0, steal_pct=0.5)),
        Measured(2, record(ESTIMATED, tokens_per_s=90.0, steal_pct=30.0)),
    ]
    assert [m.number for m in pareto_front(cfg(["tokens_per_s"]), trials)] == [1]
    # A looser limit set later ranks them again: the limit is the current config's.
    loose = cfg(["tokens_per_s"], search={"max_other_cpu_pct": 50, "max_steal_pct": 50})
    assert [m.number for m in pareto_front(loose, trials)] == [0]


def test_export_refuses_to_pick_a_best_trial_across_meters() -> None:
    study = optuna.create_study(directions=["minimize"])
    for prov, j in ((RAPL, 0.5), (ESTIMATED, 0.2)):
        t = study.ask()
        rec = record(prov, j_per_token=j)
        save_point(t, rec.point)
        save_record(t, rec)
        study.tell(t, [j])
    config = cfg(["j_per_token"])
    with pytest.raises(AutoinferError, match=r"one frontier per energy meter \(estimated:cpu-time, measured:rapl\)"):
        deployment_config(config, study)


def test_the_study_identity_records_each_targets_meter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(fake_config(tmp_path), base_dir=str(tmp_path))
    estimated = study_identity(config)
    assert estimated["machine.cpu:1.energy_meter"] == "estimated:cpu-time"
    fake_rapl(tmp_path / "rapl")
    real = energy.rapl_domains
    monkeypatch.setattr(energy, "rapl_domains", lambda: real(tmp_path / "rapl"))
    measured = study_identity(config)
    assert measured["machine.cpu:1.energy_meter"] == "measured:rapl"
    assert first_difference(estimated, measured) == (
        "machine.cpu:1.energy_meter", "estimated:cpu-time", "measured:rapl"
    )  # fmt: skip
