"""The study: sampling, isolation of trials, objectives and constraints, the Pareto frontier."""

from __future__ import annotations

from autoinfer.search.pareto import dominates, frontier_indices, pareto_trials
from autoinfer.search.samplers import make_sampler
from autoinfer.search.study import Events, open_study, run_search

__all__ = ["Events", "dominates", "frontier_indices", "make_sampler", "open_study", "pareto_trials", "run_search"]
