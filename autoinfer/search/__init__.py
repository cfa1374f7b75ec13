"""The study: sampling, isolation of trials, objectives and constraints, the Pareto frontier.

The search loop is imported by its own name, autoinfer.search.study (run_search, open_study,
Events), not from here: it subscribes the MLflow tracker (autoinfer.tracking), which builds on
search.pareto and search.storage, so a re-export here would have the two packages import each other.
"""

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

__all__ = [
    "Measured",
    "deltas_vs_most_accurate",
    "dominates",
    "frontier_indices",
    "make_sampler",
    "measured_trials",
    "paired_delta",
    "pareto_front",
    "pareto_trials",
]
