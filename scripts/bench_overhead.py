"""Where an example search's wall time goes: measurement and accuracy against everything else.

Runs the example's search for real (its own budget and sampler, a fresh throw-away study, the
user's caches as they are) and accounts for its wall time:

- per trial, from the trial itself (`stage_s`, kept on every trial and logged to MLflow as
  `time.*_s`): `ask` (sampling and preparing it, in the search process), `spawn` (the child's
  start-up and imports), `prepare` (converting or quantizing files, cached across studies), `load`,
  `warmup` (unmeasured batches and timing set-up), `measure` (the timed window), `lossless check`
  (drafted trials), `accuracy` (lm-eval; reused across trials that share weights), `exit`;
- in the search process, timed here around the tracker: `logging` (MLflow runs, frontier artifacts);
- `other`: what is left (opening the study, the sampler between trials, Optuna bookkeeping).

Printed last: wall time / (measure + accuracy). Target (issue 11): at most 1.5 once caches are warm.

    python scripts/bench_overhead.py examples/smollm2-cpu.yaml
    python scripts/bench_overhead.py scripts/grids/smollm2-three-engines-avx512.yaml --own-study
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import machine, throwaway, today

from autoinfer.config import load_config
from autoinfer.record import point_of, stage_seconds_of
from autoinfer.search.study import Events, counted_trials, run_search
from autoinfer.tracking.mlflow_tracker import Tracker

ORDER = ["ask", "spawn", "prepare", "load", "warmup", "measure", "lossless check", "accuracy", "exit"]
USEFUL = ("measure", "accuracy")


def time_tracker(spent: dict[str, float]) -> None:
    """Add the seconds spent in the tracker's methods to spent["logging"]."""
    for name in ("__init__", "log_trial", "sync", "update_pareto", "finish"):
        original = getattr(Tracker, name)

        def timed(*a: Any, _original: Any = original, **k: Any) -> Any:
            t0 = time.monotonic()
            try:
                return _original(*a, **k)
            finally:
                spent["logging"] += time.monotonic() - t0

        setattr(Tracker, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--trials", type=int, help="override the example's search.trials")
    ap.add_argument("--json", help="also write the breakdown here")
    ap.add_argument("--keep", help="keep the study in this directory (scripts/bench_gain.py --study-dir can use it)")
    ap.add_argument(
        "--own-study",
        action="store_true",
        help="run the config's own study (its storage and name) rather than a throw-away copy, e.g. a grid "
        "whose store is a scratch directory already: `autoinfer pareto CONFIG` then reads the same trials",
    )
    args = ap.parse_args()
    config = load_config(args.config)
    if args.trials:
        config = config.model_copy(update={"search": config.search.model_copy(update={"trials": args.trials})})
    spent: dict[str, float] = collections.defaultdict(float)
    time_tracker(spent)
    events = Events(
        trial_started=lambda n, p, i, total: print(f"trial {n} ({i}/{total}): {p.label()}", flush=True),
        message=lambda m: print(m, flush=True),
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep) if args.keep else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        cfg = config if args.own_study else throwaway(config, d, f"{config.study_name}-bench")
        t0 = time.monotonic()
        study, _ = run_search(cfg, events)
        wall = time.monotonic() - t0
        trials = counted_trials(study)
        per_trial = []
        for t in trials:
            secs = stage_seconds_of(t)
            point = point_of(t)
            label = point.label() if point else "?"
            per_trial.append({"trial": t.number, "point": label, "state": t.state.name, **secs})
            for k, v in secs.items():
                spent[k] += v
    spent["other"] = wall - sum(spent.values())
    stages = ORDER + sorted({k for row in per_trial for k in row} - {*ORDER, "trial", "point", "state"})
    useful = sum(spent[k] for k in USEFUL)
    print(f"\n{args.config}: {len(trials)} trials, {config.search.sampler} sampler; {machine()}; {today()}")
    print("| trial | point | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for row in per_trial:
        print(f"| {row['trial']} | {row['point']} | " + " | ".join(f"{row.get(k, 0.0):.1f}" for k in stages) + " |")
    print("\n| stage | seconds | share of wall |")
    print("|---|---|---|")
    for k in [*stages, "logging", "other"]:
        print(f"| {k} | {spent[k]:.1f} | {spent[k] / wall:.1%} |")
    print(f"| **wall** | {wall:.1f} | 100% |")
    if args.json:
        out = {"config": args.config, "date": today(), "machine": machine(), "wall_s": wall, "stages_s": spent,
               "trials": per_trial}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\noverhead: wall {wall:.0f} s = {wall / useful:.2f} x (measure + accuracy = {useful:.0f} s); target <= 1.5")


if __name__ == "__main__":
    main()
