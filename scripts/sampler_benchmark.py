"""Which Optuna sampler reaches the Pareto frontier fastest, replayed on real measurements.

Input: a study in which every valid point of a config's space was measured (run the config with
`search.sampler: grid` and `search.trials` >= the number of points). Each sampler then searches the
same space many times (different seeds) with the real measured values looked up instead of
re-measured, exactly as `autoinfer search` does (points already measured are answered from
storage and do not count). Reported: the fraction of the true frontier's hypervolume found after
N counted trials, mean over seeds.

    python scripts/sampler_benchmark.py examples/smollm2-cpu.yaml \
        --grid-csv scripts/results/smollm2-cpu-grid-trials.csv --seeds 20 --trials 15

The CSV kept in scripts/results/ is the 30-point grid measured on 2026-11-22 (see docs/samplers.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from autoinfer.config import SearchConfig, load_config
from autoinfer.metrics import METRICS
from autoinfer.search.pareto import frontier_indices, hypervolume
from autoinfer.search.samplers import WeightsFirstSampler, make_sampler
from autoinfer.spaces import enumerate_points, sample_point

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore")


Table = dict[str, tuple[list[float], list[float]]]
# point key -> (the trial's wall time in the grid, the part of it spent on accuracy or None where
# the grid did not keep it), for the seconds axis
Costs = dict[str, tuple[float, float | None]]


def load_costs(config: Any, path: str) -> Costs:
    """Each grid point's measured wall time, from a trials.csv that has `duration_s` (empty if not)."""
    import csv

    costs: Costs = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if not row.get("duration_s"):
                return {}
            acc = float(row["accuracy_s"]) if row.get("accuracy_s") else None
            costs[row_key(config, row)] = (float(row["duration_s"]), acc)
    return costs


def replay_seconds(keys: list[str], costs: Costs) -> list[float]:
    """Cumulative seconds after each counted trial of a replay, from the grid's measured wall times.

    Where the grid kept how long accuracy took, the replay pays it on the first trial of those
    weights in *its* order (the grid paid it on the first in the grid's order); where it did not,
    each trial costs what it cost in the grid."""
    by_weights: dict[tuple[str, str, str], float] = {}
    for key, (_, acc) in costs.items():
        p = json.loads(key)
        w = (p["engine"], p["quantization"], p["hardware"])
        by_weights[w] = max(by_weights.get(w, 0.0), acc or 0.0)
    seen: set[tuple[str, str, str]] = set()
    total, out = 0.0, []
    for key in keys:
        wall, acc = costs[key]
        if acc is not None:
            p = json.loads(key)
            w = (p["engine"], p["quantization"], p["hardware"])
            wall += (by_weights[w] if w not in seen else 0.0) - acc
            seen.add(w)
        total += wall
        out.append(total)
    return out


def row_key(config: Any, row: dict[str, str]) -> str:
    """The point a trials.csv row measured, as the replay's table keys it."""
    from autoinfer.spaces import DraftSpec

    keys = ("engine", "quantization", "draft", "batch_size", "hardware")
    point: dict[str, Any] = {k: int(row[k]) if k == "batch_size" else row[k] for k in keys}
    if row.get("draft_tokens"):
        point["draft_tokens"] = int(row["draft_tokens"])
    else:  # tables from before the column: the only length those spaces had
        spec = DraftSpec.parse(row["draft"])
        model_k = config.space.draft_tokens[0] if spec.reads_weights else 0
        point["draft_tokens"] = spec.n if spec.kind == "prompt_lookup" else model_k
    return json.dumps(point, sort_keys=True)


def load_csv(config: Any, path: str) -> Table:
    """The same table from a `trials.csv` artifact (pareto/trials.csv of a grid study's MLflow run)."""
    import csv

    table: Table = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            m = {k: float(v) for k, v in row.items() if k in METRICS and v}
            values = [m[o.name] for o in config.objectives]
            table[row_key(config, row)] = (values, [c.violation(m) for c in config.constraints])
    return table


def load_table(config: Any, storage: str, study_name: str) -> Table:
    """point key -> (objective values, constraint violations), from the grid study's trials."""
    from autoinfer.search.pareto import measured_trials

    table: Table = {}
    for m in measured_trials(optuna.load_study(study_name=study_name, storage=storage)):
        x = m.record.metrics
        values = [float(x[o.name]) for o in config.objectives]
        table[json.dumps(m.record.point.as_dict(), sort_keys=True)] = (
            values,
            [c.violation(x) for c in config.constraints],
        )
    return table


def replay(
    config: Any,
    table: Table,
    make: Callable[[int], optuna.samplers.BaseSampler],
    seed: int,
    n_trials: int,
    score: Callable[[list[list[float]]], float],
) -> tuple[list[float], list[str]]:
    """Search with real values looked up; return the hypervolume ratio after each counted trial,
    and the points measured, in order."""
    directions = [o.resolved_direction for o in config.objectives]
    study = optuna.create_study(directions=directions, sampler=make(seed))
    seen: set[str] = set()
    order: list[str] = []
    found: list[list[float]] = []
    curve: list[float] = []
    asks = 0
    while len(curve) < n_trials and asks < 50 * n_trials and len(seen) < len(table):
        asks += 1
        trial = study.ask()
        key = json.dumps(sample_point(trial, config).as_dict(), sort_keys=True)
        if key not in table:  # a point the grid did not have (--allow-missing): not in the replayed space
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        values, violations = table[key]
        for c, v in zip(config.constraints, violations, strict=True):
            trial.set_constraint(str(c), v)
        study.tell(trial, values)
        if key in seen:
            continue  # answered from storage: no measurement spent
        seen.add(key)
        order.append(key)
        if all(v <= 0 for v in violations):
            found.append(values)
        curve.append(score(found))
    while len(curve) < n_trials:
        curve.append(curve[-1] if curve else 0.0)
    return curve, order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--grid-storage", help="Optuna storage URL of the grid study")
    ap.add_argument("--grid-study", help="its study name")
    ap.add_argument("--grid-csv", help="or: a trials.csv of the grid study (e.g. scripts/results/*.csv)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--json", help="also write the curves here")
    ap.add_argument("--plot", help="also draw hypervolume against trials per sampler into this PNG")
    ap.add_argument("--samplers", nargs="+", help="only these (names as printed)")
    ap.add_argument(
        "--allow-missing",
        action="store_true",
        help="replay on the points the grid has even where today's space has more (a grid measured before "
        "the space grew); the others are left out of the replayed space",
    )
    args = ap.parse_args()
    config = load_config(args.config)
    if args.grid_csv:
        table = load_csv(config, args.grid_csv)
    elif args.grid_storage and args.grid_study:
        table = load_table(config, args.grid_storage, args.grid_study)
    else:
        raise SystemExit("give --grid-csv, or --grid-storage with --grid-study")
    n_points = len(enumerate_points(config))
    if len(table) < n_points and not args.allow_missing:
        raise SystemExit(f"grid study has {len(table)} of {n_points} points; measure them all first")
    if len(table) < n_points:
        print(f"replaying the grid's {len(table)} points; {n_points - len(table)} of today's space are left out")

    # Normalise every objective to minimisation in [0, 1] over the measured grid.
    maximize = [o.resolved_direction == "maximize" for o in config.objectives]
    cols = list(zip(*[v for v, _ in table.values()], strict=True))
    lo, hi = [min(c) for c in cols], [max(c) for c in cols]

    def norm(v: list[float]) -> tuple[float, ...]:
        out = []
        for x, a, b, up in zip(v, lo, hi, maximize, strict=True):
            z = (x - a) / (b - a) if b > a else 0.0
            out.append(1.0 - z if up else z)
        return tuple(out)

    ref = tuple(1.1 for _ in maximize)
    feasible = [v for v, viol in table.values() if all(x <= 0 for x in viol)]
    front = [feasible[i] for i in frontier_indices(feasible, maximize)]
    best = hypervolume([norm(v) for v in front], ref)

    def score(found: list[list[float]]) -> float:
        return hypervolume([norm(v) for v in found], ref) / best if best > 0 else 1.0

    base = config.search

    def tpe(s: int) -> optuna.samplers.BaseSampler:
        return make_sampler(base.model_copy(update={"sampler": "tpe", "seed": s}), args.trials)

    candidates: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
        "tpe (autoinfer)": tpe,  # auto before 2026-11-29
        "auto (autoinfer)": lambda s: WeightsFirstSampler(tpe(s), config, s),
        "auto without drafts step": lambda s: WeightsFirstSampler(tpe(s), config, s, drafts=False),
        "weights-first tpe": lambda s: WeightsFirstSampler(tpe(s), config, s, extremes=False),
        "tpe (optuna default)": lambda s: optuna.samplers.TPESampler(seed=s),
        "nsga2 pop=8": lambda s: make_sampler(SearchConfig(sampler="nsga2", population_size=8, seed=s), args.trials),
        "nsga2 pop=50 (default)": lambda s: optuna.samplers.NSGAIISampler(seed=s),
        "gp": lambda s: optuna.samplers.GPSampler(seed=s, warn_independent_sampling=False),
    }
    print(f"{len(table)} measured points, {len(front)} on the true frontier; {args.seeds} seeds per sampler")
    # The fewest trials that can reach 95 %, whatever the order: the best k frontier points (a
    # dominated point never adds more than the point dominating it would).
    import itertools

    oracle = next(
        k for k in range(1, len(front) + 1) if max(score(list(c)) for c in itertools.combinations(front, k)) >= 0.95
    )
    print(f"an oracle needs {oracle} trials ({oracle / len(table):.0%} of the grid) for 95 % of the hypervolume")
    marks = [m for m in (3, 5, 8, 10, 12, 15, 20) if m <= args.trials]
    # The grid's best feasible point on the first objective (what a user ranks by), and how soon
    # each replay measures it.
    first = config.objectives[0]
    up = 1.0 if maximize[0] else -1.0
    best_key = max(
        (k for k, (_, viol) in table.items() if all(x <= 0 for x in viol)), key=lambda k: up * table[k][0][0]
    )
    print(f"the grid's best {first.name}: {table[best_key][0][0]:.4g} at {best_key}")
    print(
        f"{'sampler':24s}"
        + "".join(f"  HV@{m:<3d}" for m in marks)
        + f"  median to 95%  mean trials to 100%  best in {args.trials}"
    )
    results = {}
    costs = load_costs(config, args.grid_csv) if args.grid_csv else {}
    seconds_to_95: dict[str, list[float]] = {}
    for name, make in candidates.items():
        if args.samplers and name.split(" ")[0] not in args.samplers and name not in args.samplers:
            continue
        runs = [replay(config, table, make, seed, args.trials, score) for seed in range(args.seeds)]
        curves = [c for c, _ in runs]
        if costs:
            for c, order in runs:
                secs = replay_seconds(order, costs)
                i = next((i for i, v in enumerate(c) if v >= 0.95), None)
                seconds_to_95.setdefault(name, []).append(secs[i] if i is not None and i < len(secs) else math.inf)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(args.trials)]
        hits = [next((i + 1 for i, v in enumerate(c) if v >= 1 - 1e-9), math.inf) for c in curves]
        reached = [h for h in hits if h != math.inf]
        to_full = f"{statistics.fmean(reached):.1f} ({len(reached)}/{len(hits)} runs)" if reached else "never"
        # Median over seeds of the trials needed for 95 % of the frontier's hypervolume (inf: not
        # within --trials), and that as a share of the grid.
        near = statistics.median(next((i + 1 for i, v in enumerate(c) if v >= 0.95), math.inf) for c in curves)
        to_95 = f"{near:.0f} ({near / len(table):.0%})" if near != math.inf else f">{args.trials}"
        # Trial (1-based) at which each replay measured the grid's best point (inf: not within --trials).
        to_best = [order.index(best_key) + 1 if best_key in order else math.inf for _, order in runs]
        got = sum(1 for t in to_best if t != math.inf)
        print(
            f"{name:24s}"
            + "".join(f"  {mean[m - 1]:6.3f}" for m in marks)
            + f"  {to_95:>13s}  {to_full:18s}  {got}/{len(to_best)} seeds"
        )
        results[name] = {
            "mean_hv_ratio": mean,
            "trials_to_full": hits,
            "median_trials_to_95": near,
            "trials_to_best": to_best,
        }
    if costs:
        grid_s = sum(w for w, _ in costs.values())
        kept = (
            "with accuracy charged in replay order"
            if all(a is not None for _, a in costs.values())
            else ("as each trial cost in the grid (the grid did not keep its accuracy time apart)")
        )
        print(f"\nseconds to 95 % (median over seeds; the whole grid took {grid_s / 3600:.1f} h; {kept}):")
        for name, xs in seconds_to_95.items():
            med = statistics.median(xs)
            print(f"{name:24s}  " + (f"{med / 60:.0f} min ({med / grid_s:.0%})" if med != math.inf else "not reached"))
    if args.plot:
        plot(results, args.plot, f"{args.config}: {len(table)} points, {args.seeds} seeds")
    if args.json:
        summary = {"points": len(table), "frontier": len(front), "seeds": args.seeds, "results": results}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


def plot(results: dict[str, Any], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in results.items():
        curve = r["mean_hv_ratio"]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("trials measured")
    ax.set_ylabel("share of the grid frontier's hypervolume (mean)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
