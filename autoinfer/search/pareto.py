"""Pareto frontier of finished trials, honouring constraints and objective directions."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        if x != y:
            better = True
    return better


def frontier_indices(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points (O(n^2): trials number tens, not thousands)."""
    return [
        i for i, p in enumerate(points) if not any(dominates(q, p, maximize) for j, q in enumerate(points) if j != i)
    ]


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())  # {name: value}, <= 0 is feasible


def measured_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that measured something (duplicates of earlier points excluded)."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs
    ]


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    trials = [t for t in measured_trials(study) if is_feasible(t) and t.values is not None]
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    idx = frontier_indices([t.values for t in trials], maximize)
    return [trials[i] for i in idx]
