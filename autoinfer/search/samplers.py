"""Optuna samplers by name. `auto` is the one our replay benchmark found fastest to the frontier.

See scripts/sampler_benchmark.py: on real measured trials, replayed many times, it compares how
much of the true frontier's hypervolume each sampler reaches after N trials.
"""

from __future__ import annotations

import optuna

from autoinfer.config import SearchConfig

AUTO_SAMPLER = "tpe"


def make_sampler(cfg: SearchConfig, n_trials: int) -> optuna.samplers.BaseSampler:
    name = AUTO_SAMPLER if cfg.sampler == "auto" else cfg.sampler
    seed = cfg.seed
    if name == "tpe":
        # Multivariate TPE models dimensions jointly (quantization x batch interact strongly);
        # group=True handles the conditional parameters. A few random trials seed the model.
        startup = max(3, min(10, n_trials // 4))
        return optuna.samplers.TPESampler(multivariate=True, group=True, n_startup_trials=startup, seed=seed)
    if name == "nsga2":
        # The default population of 50 would make a tens-of-trials study pure random search.
        return optuna.samplers.NSGAIISampler(population_size=cfg.population_size, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name in ("random", "grid"):
        # grid: every valid point is enqueued up front; the sampler only fills gaps.
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(name)
