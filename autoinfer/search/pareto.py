"""Cross-trial analysis: the Pareto frontier and paired accuracy deltas.

Both are derived from each trial's stored metrics and the *current* config every time they are
asked for, so changing a constraint or an objective re-ranks old trials instead of keeping the
values they were told with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from autoinfer.config import Config
from autoinfer.record import TrialRecord, record_of, stage_seconds_of


@dataclass(frozen=True)
class Measured:
    number: int  # Optuna trial number
    record: TrialRecord
    duration_s: float | None = None  # the trial's wall time (load, quantize, measure, accuracy)
    accuracy_s: float | None = None  # the part of it spent evaluating accuracy (0: reused; None: not kept)


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


def hv2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated (minimisation) by points inside the reference box."""
    pts = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(pts):
        best_y = min(best_y, y)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        area += (nxt - x) * (ref[1] - best_y)
    return area


def hypervolume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Exact hypervolume for 1-3 minimised objectives (slicing along the last one)."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return max(0.0, ref[0] - min(p[0] for p in points))
    if len(ref) == 2:
        return hv2d([(p[0], p[1]) for p in points], (ref[0], ref[1]))
    if len(ref) > 3:
        raise ValueError(f"hypervolume of {len(ref)} objectives is not implemented (1-3 are)")
    zs = sorted({p[2] for p in points if p[2] < ref[2]})
    total = 0.0
    for i, z in enumerate(zs):
        top = zs[i + 1] if i + 1 < len(zs) else ref[2]
        total += (top - z) * hv2d([(p[0], p[1]) for p in points if p[2] <= z], (ref[0], ref[1]))
    return total


def normalized(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[tuple[float, ...]]:
    """Points scaled to [0, 1] per objective over these points, every objective minimised."""
    cols = list(zip(*points, strict=True))
    lo, hi = [min(c) for c in cols], [max(c) for c in cols]
    out = []
    for p in points:
        z = [(x - a) / (b - a) if b > a else 0.0 for x, a, b in zip(p, lo, hi, strict=True)]
        out.append(tuple(1.0 - v if up else v for v, up in zip(z, maximize, strict=True)))
    return out


def measured_trials(study: optuna.Study) -> list[Measured]:
    """Completed trials that measured something (answers repeated from storage excluded)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = record_of(t)
        if rec is not None and "duplicate_of" not in t.user_attrs:
            end, start = t.datetime_complete, t.datetime_start
            stages = stage_seconds_of(t)
            acc_s = stages.get("accuracy", 0.0) if stages else None
            out.append(Measured(t.number, rec, (end - start).total_seconds() if end and start else None, acc_s))
    return out


def violations(config: Config, metrics: dict[str, float]) -> dict[str, float]:
    """Each constraint's violation (<= 0 is feasible), from the stored metrics."""
    return {str(c): c.violation(metrics) for c in config.constraints}


def is_feasible(config: Config, record: TrialRecord) -> bool:
    return all(v <= 0 for v in violations(config, record.metrics).values())


def objective_values(config: Config, metrics: dict[str, float]) -> list[float] | None:
    """The config's objectives read from a trial's metrics; None when one is missing or not finite."""
    values = [metrics.get(o.name) for o in config.objectives]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values if v is not None]


# Metrics whose value is joules or derived from them: comparable only under one energy meter.
ENERGY_METRICS = frozenset({"energy_j", "mean_power_w", "j_per_token", "correct_tokens_per_j"})


def ranks_energy(config: Config) -> bool:
    """Whether the config's objectives or constraints read an energy figure."""
    return bool(ENERGY_METRICS & ({o.name for o in config.objectives} | {c.metric for c in config.constraints}))


def measured_busy(config: Config, record: TrialRecord) -> bool:
    """A trial whose kept window had more of other processes or steal than the config allows now
    (measured before the guard, or under a looser limit): its speed and energy are not its own."""
    x, s = record.metrics, config.search
    return x.get("other_cpu_pct", 0.0) > s.max_other_cpu_pct or x.get("steal_pct", 0.0) > s.max_steal_pct


def by_energy_source(config: Config, trials: Sequence[Measured]) -> dict[str, list[Measured]]:
    """Trials grouped by what can be ranked together: by energy source when the config ranks an
    energy figure (joules from RAPL and joules estimated from CPU time are different quantities),
    else all in one group ("")."""
    groups: dict[str, list[Measured]] = {}
    for m in trials:
        key = m.record.provenance.energy_source if ranks_energy(config) else ""
        groups.setdefault(key, []).append(m)
    return groups


def pareto_front(config: Config, trials: Sequence[Measured]) -> list[Measured]:
    """The non-dominated feasible trials, one frontier per energy source (see `by_energy_source`):
    a trial is on the frontier when no trial measured with the same meter dominates it. Trials
    measured on a busy machine are never on it."""
    maximize = [o.resolved_direction == "maximize" for o in config.objectives]
    out: list[Measured] = []
    for group in by_energy_source(config, trials).values():
        ranked = [(m, objective_values(config, m.record.metrics)) for m in group if is_feasible(config, m.record)]
        rankable = [(m, v) for m, v in ranked if v is not None and not measured_busy(config, m.record)]
        out.extend(rankable[i][0] for i in frontier_indices([v for _, v in rankable], maximize))
    return sorted(out, key=lambda m: m.number)


def pareto_trials(study: optuna.Study, config: Config) -> list[Measured]:
    return pareto_front(config, measured_trials(study))


def paired_delta(a: dict[str, list[float]], b: dict[str, list[float]]) -> tuple[float, float, int] | None:
    """Mean of a - b over the items both were scored on, its standard error, and the item count.

    Two quantizations of one model mostly get the same items right, so the paired difference has a
    much smaller standard error than the two accuracies' own: 0.47 +- 0.05 vs 0.49 +- 0.05 can
    still be a real 0.02 +- 0.01 drop. Tasks are averaged like `accuracy` is (equal weight).
    """
    if not a or set(a) != set(b):
        return None  # not the same tasks: no paired comparison
    if any(len(a[t]) != len(b[t]) or len(a[t]) < 2 for t in a):
        return None  # not the same items: no paired comparison
    deltas, variances, n_total = [], [], 0
    for task, xs in a.items():
        d = [x - y for x, y in zip(xs, b[task], strict=True)]
        n = len(d)
        mean = sum(d) / n
        variances.append(sum((v - mean) ** 2 for v in d) / (n - 1) / n)
        deltas.append(mean)
        n_total += n
    k = len(deltas)
    return sum(deltas) / k, math.sqrt(sum(variances)) / k, n_total


@dataclass(frozen=True)
class AccuracyDelta:
    delta: float  # this trial's accuracy minus the reference's, over the same items
    stderr: float
    items: int
    reference: int  # trial number of the most accurate trial


def deltas_vs_most_accurate(trials: Sequence[Measured]) -> dict[int, AccuracyDelta]:
    """For each trial number: paired accuracy minus that of the most accurate trial (scored on
    the same items; trials scored on other items are left out)."""
    scored = [m for m in trials if m.record.accuracy is not None and m.record.accuracy.items]
    if not scored:
        return {}
    ref = max(scored, key=lambda m: m.record.accuracy.accuracy if m.record.accuracy else -1.0)
    assert ref.record.accuracy is not None
    out = {}
    for m in scored:
        assert m.record.accuracy is not None
        d = paired_delta(m.record.accuracy.items, ref.record.accuracy.items)
        if d is not None:
            out[m.number] = AccuracyDelta(d[0], d[1], d[2], ref.number)
    return out
