"""Optuna samplers by name. `auto` is the one our replay benchmark found fastest to the frontier:
every set of weights first (at its largest batch), the frontier's at their smallest batch, each
draft once across the frontier, then TPE.

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
from autoinfer.search import _optuna

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


class _Wrapper(optuna.samplers.BaseSampler):
    """Hands every decision to `base`; subclasses override what they change."""

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self._base = base

    def reseed_rng(self) -> None:
        self._base.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._base.after_trial(study, trial, state, values)


class OwnedSampler(_Wrapper):
    """A sampler for a worker that measures only some of the space's hardware (its own machine).

    The parameters keep the choices every worker sees, since one study's distributions must be
    the same on every machine; the engine and hardware are drawn from the base sampler and, when
    it proposes one this worker cannot run, from this worker's own choices instead. The other
    parameters are left to the base sampler, as PartialFixedSampler does for fixed ones.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, config: Config, seed: int | None = None) -> None:
        from autoinfer.spaces.space import owned_hardware

        super().__init__(base)
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

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        value = self._base.sample_independent(study, trial, param_name, param_distribution)
        allowed = self._allowed(trial, param_name)
        if allowed is None or value in allowed:
            return value
        choices = [c for c in getattr(param_distribution, "choices", ()) if c in allowed]
        return self._rng.choice(choices) if choices else value  # no choice of ours: sample_point rejects it


class WeightsFirstSampler(_Wrapper):
    """Measure every set of weights once before letting the base sampler loose.

    Accuracy depends on the weights alone (engine x quantization x compile mode on a machine), and most of a
    trial's cost is spent on it the first time those weights are seen, while batch and draft only
    move speed and energy. So the first trials take one point per weights, in a seeded random
    order, at its largest batch without a draft (where tokens per joule peaks on every grid we
    measured). With `extremes`, each weights that is then on the Pareto frontier is measured at
    its smallest batch too (where latency bottoms out). With `drafts`, each draft of the space is
    then tried once on every frontier member whose batch can draft, at a middle draft length:
    whether drafting pays is a property of the machine and the weights (a step's cost against a
    verification's), so it is tried where it would matter most rather than left for the base
    sampler to stumble on. The base sampler, which has seen all of these, picks the rest. Points are chosen by
    setting the trial's fixed parameters, as a queued point would be; a trial that already has
    them (the grid, a re-queued point) is left alone.
    """

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        config: Config,
        seed: int | None = None,
        extremes: bool = True,
        drafts: bool = True,
    ) -> None:
        from autoinfer.spaces import enumerate_points

        super().__init__(base)
        self._config = config
        self._extremes = extremes
        self._drafts = drafts
        self._points = enumerate_points(config)  # this worker's valid points, with their params
        weights = sorted({self._unit(p) for _, p in self._points})
        random.Random(seed).shuffle(weights)
        self._order = weights
        self._rng = random.Random(seed)
        self._known: dict[int, Any] = {}  # trial id -> its point, for finished trials (asked every trial)

    def _seen(self, study: optuna.Study) -> list[tuple[Any, FrozenTrial]]:
        """(point, trial) of every trial that has chosen its point: measured, failed, running, queued."""
        from optuna.trial import FixedTrial

        from autoinfer.spaces import sample_point

        out = []
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.PRUNED:
                continue
            point = self._known.get(_optuna.trial_id(t))
            if point is None:
                params = t.params or t.system_attrs.get("fixed_params") or {}
                if not params:
                    continue
                try:
                    point = sample_point(FixedTrial(params), self._config)
                except Exception:  # noqa: BLE001 - a trial still being sampled, or from another space
                    continue
                if t.state.is_finished():  # its params can no longer change: parse it once
                    self._known[_optuna.trial_id(t)] = point
            out.append((point, t))
        return out

    def _plan(self, study: optuna.Study) -> dict[str, Any] | None:
        seen = self._seen(study)
        taken = {p for p, _ in seen}
        covered = {self._unit(p) for p in taken}
        for key in self._order:
            plan = self._pick(key, max, taken) if key not in covered else None
            if plan is not None:  # (None: these weights have no point without a draft)
                return plan
        if not self._extremes or any(t.state != TrialState.COMPLETE for _, t in seen if t.state != TrialState.FAIL):
            return None  # the base sampler from here (or wait for the first round's results)
        from autoinfer.search.pareto import frontier_indices, hypervolume, normalized

        done = [(p, t) for p, t in seen if t.state == TrialState.COMPLETE and t.values is not None]
        maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
        values = [t.values for _, t in done]
        front = frontier_indices(values, maximize)
        if 1 <= len(maximize) <= 3:  # the members that hold most of the frontier's volume first
            norm = normalized(values, maximize)
            ref = tuple(1.1 for _ in maximize)
            whole = hypervolume([norm[i] for i in front], ref)
            front.sort(key=lambda i: hypervolume([norm[j] for j in front if j != i], ref) - whole)
        for i in front:
            p = done[i][0]
            params = self._pick(self._unit(p), min, taken)
            if params is not None:
                return params
        return self._draft_plan([done[i][0] for i in front], taken) if self._drafts else None

    def _draft_plan(self, front: list[Any], taken: set[Any]) -> dict[str, Any] | None:
        """Params of the next draft not yet tried on a frontier member's weights and batch (None:
        all tried, or those batches cannot draft). Draft by draft, in the order the user listed
        them, each across the frontier (in the order given): a kind of draft that pays on one
        member tends to pay on the others, so each kind is seen everywhere before the next."""
        for draft in self._config.space.draft:
            for lead in front:
                tries = [
                    (q, p)
                    for q, p in self._points
                    if self._unit(p) == self._unit(lead) and p.batch_size == lead.batch_size and p.draft == draft
                ]
                if not tries or any(p in taken for _, p in tries):
                    continue  # not valid here, or tried here already (at some length)
                lengths = sorted({p.draft_tokens for _, p in tries})
                middle = lengths[len(lengths) // 2]  # 4 of (2, 4, 8): long enough to show acceptance
                return dict(self._rng.choice([q for q, p in tries if p.draft_tokens == middle]))
        return None

    @staticmethod
    def _unit(point: Any) -> tuple[str, str, str, str]:
        """Weights on a hardware target, run eager or compiled: what accuracy (machines round
        differently, compiled graphs too) and, most of all, speed hinge on."""
        return (point.engine, point.quantization, point.compile_mode, point.hardware)

    def _pick(self, key: tuple[str, str, str, str], extreme: Any, taken: set[Any]) -> dict[str, Any] | None:
        """Params of these weights without a draft at the extreme batch, unless that is taken."""
        plain = [(q, p) for q, p in self._points if self._unit(p) == key and p.draft == "none"]
        if not plain:
            return None
        batch = extreme(p.batch_size for _, p in plain)
        at = [(q, p) for q, p in plain if p.batch_size == batch]
        if any(p in taken for _, p in at):
            return None  # measured already (or being measured)
        return dict(self._rng.choice([q for q, _ in at]))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        if trial.system_attrs.get("fixed_params"):
            return
        params = self._plan(study)
        if params is not None:
            _optuna.set_trial_system_attr(study, trial, "fixed_params", params)
            trial.system_attrs["fixed_params"] = params  # the Trial reads it from this very object


def owns_everything(config: Config) -> bool:
    """Whether this worker can measure every point of the space (no restriction needed)."""
    from autoinfer.spaces.space import hardware_for, owned_hardware

    return all(owned_hardware(config, e) == hardware_for(config, e) for e in config.space.engine)


def worker_sampler(config: Config) -> optuna.samplers.BaseSampler:
    """The config's sampler, restricted to this worker's hardware where it does not own it all."""
    base = make_sampler(config.search, config.search.trials)
    if config.search.sampler == "auto":
        base = WeightsFirstSampler(base, config, config.search.seed)
    return base if owns_everything(config) else OwnedSampler(base, config, config.search.seed)
