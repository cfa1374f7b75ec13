"""What the search is worth: the best configuration the default search finds against the naive
default (transformers, fp32, batch 1, no draft, every core), measured in the same run.

1. The example's search, as `autoinfer search` runs it (its budget, its sampler, a fresh
   throw-away study; the user's caches as they are).
2. Its best feasible point by correct tokens per joule, and the naive default, each measured again
   `--repeats` times, alternating (so drift on a noisy machine hits both alike); accuracy is
   measured once per weights and reused, as in the search.

Printed last: median of the paired ratios (found / default) of correct tokens per joule, with
their range, and the same for tokens/s.

    python scripts/bench_gain.py examples/smollm2-cpu.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import optuna
from benchkit import machine, measure, throwaway, today

from autoinfer.config import Config, load_config
from autoinfer.engines import TrialPoint
from autoinfer.record import TrialRecord
from autoinfer.search.pareto import is_feasible, measured_trials
from autoinfer.search.study import Events, run_search

METRIC = "correct_tokens_per_j"


def with_point(config: Config, point: TrialPoint) -> Config:
    """`config` itself when its space holds `point`'s engine and level; otherwise a copy whose space
    also lists them (Qwen's example searches llama.cpp only, yet the naive default is transformers
    fp32). Model, prompts, token budget and accuracy items are untouched, so both sides do the same
    work; the copy's study identity differs, so no accuracy is borrowed across the two."""
    space = config.space
    update: dict[str, list[str]] = {}
    if point.engine not in space.engine:
        update["engine"] = [*space.engine, point.engine]
    if point.quantization not in space.quantization:
        update["quantization"] = [*space.quantization, point.quantization]
    if not update:
        return config
    return config.model_copy(update={"space": space.model_copy(update=update)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--repeats", type=int, default=3, help="alternating re-measurements of each side")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--study-dir",
        help="keep the search here; a search already here (say a `bench_overhead.py --keep` directory) is "
        "resumed, or reused as it is once its budget is spent; the paired re-measurements are made in this run "
        "either way",
    )
    args = ap.parse_args()
    config = load_config(args.config)
    default = TrialPoint("transformers", "fp32", "none", 1, f"cpu:{os.cpu_count()}")

    def finished(t: optuna.trial.FrozenTrial) -> None:
        if t.state == optuna.trial.TrialState.FAIL:  # kept in the log: a lost point may be the best one
            print(f"search trial {t.number} FAILED: {t.user_attrs.get('fail_reason')}", flush=True)

    events = Events(
        trial_started=lambda n, p, i, total: print(f"search trial {n} ({i}/{total}): {p.label()}", flush=True),
        trial_finished=finished,
        message=lambda m: print(m, flush=True),
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.study_dir or tmp)
        cfg = throwaway(config, d, f"{config.study_name}-bench")
        default_cfg = with_point(cfg, default)
        if default_cfg is not cfg:
            note = "model, prompts and accuracy items through a copy of the config whose space holds it"
            print(f"the default {default.label()} is outside the example's space: it is measured on the same {note}")
        study, _ = run_search(cfg, events)  # resumes a study kept in --study-dir; a spent one runs nothing
        found = [m for m in measured_trials(study) if is_feasible(cfg, m.record) and METRIC in m.record.metrics]
        if not found:
            raise SystemExit("the search measured no feasible trial with correct tokens per joule")
        top = max(found, key=lambda m: m.record.metrics[METRIC])
        best = top.record.point
        print(f"search: {len(measured_trials(study))} trials measured; best {best.label()} "
              f"{top.record.metrics[METRIC]:.3g} correct tok/J (trial {top.number})", flush=True)  # fmt: skip
        sides: dict[str, list[TrialRecord]] = {"found": [], "default": []}
        for r in range(args.repeats):
            for name, point in (("found", best), ("default", default)):
                side_cfg = default_cfg if name == "default" else cfg
                # An hour: the default's first run dequantizes a GGUF and runs lm-eval in fp32 (Qwen 1.5B: ~20 min).
                rec = measure(side_cfg, point, d / "logs", study, tuple(sides["default"]), timeout_s=3600)
                sides[name].append(rec)
                m = rec.metrics
                print(f"repeat {r + 1} {name} {point.label()}: {m['tokens_per_s']:.1f} tok/s, "
                      f"acc {m['accuracy']:.3f}, {m[METRIC]:.3g} correct tok/J", flush=True)  # fmt: skip

    def paired(metric: str) -> list[float]:
        return [f.metrics[metric] / g.metrics[metric] for f, g in zip(sides["found"], sides["default"], strict=True)]

    gain, speed = paired(METRIC), paired("tokens_per_s")
    f0 = sides["found"][0]
    print(f"\n{args.config}: {config.search.trials}-trial {config.search.sampler} search; {machine()}; {today()}; "
          f"energy {f0.provenance.energy_source}")  # fmt: skip
    print("| | configuration | accuracy | tokens/s (median) | correct tokens/J (median) |")
    print("|---|---|---|---|---|")
    for name, point in (("found", best), ("default", default)):
        recs = sides[name]
        acc = recs[0].metrics["accuracy"]
        tps = statistics.median(r.metrics["tokens_per_s"] for r in recs)
        ctj = statistics.median(r.metrics[METRIC] for r in recs)
        print(f"| {name} | {point.label()} | {acc:.3f} | {tps:.1f} | {ctj:.3g} |")
    if args.json:
        out = {
            "config": args.config,
            "date": today(),
            "machine": machine(),
            "energy_source": f0.provenance.energy_source,
            "found": best.as_dict(),
            "default": default.as_dict(),
            "gain": gain,
            "speed": speed,
            "found_metrics": [r.metrics for r in sides["found"]],
            "default_metrics": [r.metrics for r in sides["default"]],
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(
        f"\nfound vs default: {statistics.median(gain):.2f}x correct tokens/J [{min(gain):.2f}, {max(gain):.2f}], "
        f"{statistics.median(speed):.2f}x tokens/s [{min(speed):.2f}, {max(speed):.2f}], "
        f"{args.repeats} paired repeats"
    )


if __name__ == "__main__":
    main()
