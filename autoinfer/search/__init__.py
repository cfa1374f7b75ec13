"""The study: sampling, isolation of trials, objectives and constraints, the Pareto frontier."""

from __future__ import annotations

from autoinfer.search.pareto import (
    Measured,
    deltas_vs_most_accurate,
    dominates,
    frontier_indices,
    measured_trials,
    paired_delta,
    pareto_front,
    pareto_trials,
)
from autoinfer.search.samplers import make_sampler
from autoinfer.search.study import Events, open_study, run_search

__all__ = [
    "Events",
    "Measured",
    "deltas_vs_most_accurate",
    "dominates",
    "frontier_indices",
    "make_sampler",
    "measured_trials",
    "open_study",
    "paired_delta",
    "pareto_front",
    "pareto_trials",
    "run_search",
]
