"""Optuna samplers by name. `auto` is the one our replay benchmark found fastest to the frontier.

See scripts/sampler_benchmark.py: on real measured trials, replayed many times, it compares how
much of the true frontier's hypervolume each sampler reaches after N trials.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autoinfer.config import Config, SearchConfig

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


class OwnedSampler(optuna.samplers.BaseSampler):
    """A sampler for a worker that measures only some of the space's hardware (its own machine).

    The parameters keep the choices every worker sees, since one study's distributions must be
    the same on every machine; the engine and hardware are drawn from the base sampler and, when
    it proposes one this worker cannot run, from this worker's own choices instead. The other
    parameters are left to the base sampler, as PartialFixedSampler does for fixed ones.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, config: Config, seed: int | None = None) -> None:
        from autoinfer.spaces.space import owned_hardware

        self._base = base
        self._config = config
        self._owned = {e: owned_hardware(config, e) for e in config.space.engine}
        self._rng = random.Random(seed)

    def _allowed(self, trial: FrozenTrial, param_name: str) -> list[Any] | None:
        name = param_name.split("@")[0]
        if name == "engine":
            return [e for e, hws in self._owned.items() if hws]
        if name == "hardware":
            engine = trial.params.get("engine", self._config.space.engine[0])
            return self._owned.get(engine, [])
        return None

    def reseed_rng(self) -> None:
        self._base.reseed_rng()
        self._rng.seed()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self._base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if self._allowed(trial, k) is None}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        value = self._base.sample_independent(study, trial, param_name, param_distribution)
        allowed = self._allowed(trial, param_name)
        if allowed is None or value in allowed:
            return value
        choices = [c for c in getattr(param_distribution, "choices", ()) if c in allowed]
        return self._rng.choice(choices) if choices else value  # no choice of ours: sample_point rejects it

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._base.after_trial(study, trial, state, values)


def owns_everything(config: Config) -> bool:
    """Whether this worker can measure every point of the space (no restriction needed)."""
    from autoinfer.spaces.space import hardware_for, owned_hardware

    return all(owned_hardware(config, e) == hardware_for(config, e) for e in config.space.engine)


def worker_sampler(config: Config) -> optuna.samplers.BaseSampler:
    """The config's sampler, restricted to this worker's hardware where it does not own it all."""
    base = make_sampler(config.search, config.search.trials)
    return base if owns_everything(config) else OwnedSampler(base, config, config.search.seed)
