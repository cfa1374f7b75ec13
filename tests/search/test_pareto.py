"""Ranking from stored metrics under the current config, and paired accuracy deltas."""

from __future__ import annotations

from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.metrics import UndeclaredMetric
from autoinfer.record import Provenance, TrialRecord
from autoinfer.search.pareto import (
    Measured,
    deltas_vs_most_accurate,
    dominates,
    frontier_indices,
    paired_delta,
    pareto_front,
)

PROV = Provenance("id", "estimated:cpu-time", "", "", "VmHWM", 1, 16, 2, 0, 32, "measured")


def measured(
    number: int, accuracy: float | None = None, items: list[float] | None = None, **metrics: float
) -> Measured:
    acc = AccuracyResult(accuracy, 0.05, len(items or []), items={"t": items or []}) if accuracy is not None else None
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    return Measured(number, TrialRecord(TrialPoint("fake", "fp32", "none", 1, "cpu:1"), metrics, PROV, acc))


def cfg(**over: Any) -> Any:
    return parse_config({"model": {"source": "m"}, "objectives": [{"name": "tokens_per_s"}, {"name": "accuracy"}],
                         "accuracy": {"tasks": ["arc_easy"]}, **over})  # fmt: skip


def test_dominance_respects_direction() -> None:
    assert dominates([2, 1], [1, 1], [True, True])
    assert not dominates([1, 1], [1, 1], [True, True])  # equal is not domination
    assert dominates([1, 1], [2, 1], [False, True])
    assert not dominates([2, 0], [1, 1], [True, True])


def test_frontier() -> None:
    pts = [(1, 5), (2, 4), (2, 2), (3, 1), (0, 0), (3, 1)]
    assert frontier_indices(pts, [True, True]) == [0, 1, 3, 5]
    assert frontier_indices(pts, [False, False]) == [4]


def test_the_front_is_derived_from_metrics_under_the_current_config() -> None:
    trials = [
        measured(0, 0.3, tokens_per_s=30.0),
        measured(1, 0.5, tokens_per_s=20.0),
        measured(2, 0.4, tokens_per_s=10.0),
    ]
    assert [m.number for m in pareto_front(cfg(), trials)] == [0, 1]
    # a constraint added later: trial 0 drops out, and trial 2 is still dominated by 1
    assert [m.number for m in pareto_front(cfg(constraints=["accuracy >= 0.35"]), trials)] == [1]
    # other objectives, same trials: ranked again from the stored metrics
    only_acc = cfg(objectives=[{"name": "accuracy"}])
    assert [m.number for m in pareto_front(only_acc, trials)] == [1]


def test_a_trial_missing_an_objective_is_not_ranked() -> None:
    trials = [measured(0, tokens_per_s=30.0), measured(1, 0.5, tokens_per_s=20.0)]
    assert [m.number for m in pareto_front(cfg(), trials)] == [1]


def test_records_refuse_undeclared_metrics() -> None:
    with pytest.raises(UndeclaredMetric, match="tokens_per_sec"):
        measured(0, tokens_per_sec=1.0)


def test_paired_delta_uses_the_item_pairing() -> None:
    a = {"t": [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]}
    b = {"t": [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]}  # one item lost, every other item shared
    delta, se, n = paired_delta(b, a) or (0.0, 0.0, 0)
    assert n == 8 and delta == pytest.approx(-1 / 8)
    # sd of the differences (one -1 among 8) / sqrt(8): far below the unpaired stderr of ~0.25
    assert se == pytest.approx((((7 * (1 / 8) ** 2 + (7 / 8) ** 2) / 7) ** 0.5) / 8**0.5)
    assert paired_delta(a, {"t": [1.0] * 5}) is None  # different items: no pairing
    assert paired_delta(a, {"u": a["t"]}) is None


def test_deltas_against_the_most_accurate_trial() -> None:
    trials = [measured(0, 0.5, [1, 0, 1, 0]), measured(1, 0.75, [1, 1, 1, 0]), measured(2, 0.25, [0, 0, 1, 0])]
    d = deltas_vs_most_accurate(trials)
    assert {x.reference for x in d.values()} == {1} and (d[1].delta, d[1].stderr) == (0.0, 0.0)
    assert d[0].delta == pytest.approx(-0.25) and d[2].delta == pytest.approx(-0.5) and d[2].items == 4


def test_hypervolume_of_known_shapes() -> None:
    from autoinfer.search.pareto import hypervolume, normalized

    assert hypervolume([], (1.0, 1.0)) == 0.0
    assert hypervolume([(0.0,)], (2.0,)) == 2.0
    # two points in 2-D: their boxes to (1, 1) overlap in 0.5 x 0.5
    assert hypervolume([(0.0, 0.5), (0.5, 0.0)], (1.0, 1.0)) == pytest.approx(0.75)
    # a dominated point adds nothing; a point outside the reference box neither
    assert hypervolume([(0.0, 0.5), (0.5, 0.0), (0.6, 0.6), (2.0, 0.0)], (1.0, 1.0)) == pytest.approx(0.75)
    assert hypervolume([(0.0, 0.0, 0.0)], (1.0, 2.0, 3.0)) == pytest.approx(6.0)
    assert hypervolume([(0.0, 0.0, 0.5), (0.5, 0.5, 0.0)], (1.0, 1.0, 1.0)) == pytest.approx(0.5 + 0.25 * 0.5)
    with pytest.raises(ValueError, match="4 objectives"):
        hypervolume([(0.0,) * 4], (1.0,) * 4)
    # maximised objectives are flipped, so 1 - best is 0
    assert normalized([(1.0, 10.0), (3.0, 20.0)], [True, False]) == [(1.0, 0.0), (0.0, 1.0)]
