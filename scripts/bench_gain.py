"""What the search is worth: the best configuration the default search finds against what runs
without one, measured in the same run. Two kinds of baseline:
- the naive default: transformers, fp32, batch 1, no draft, every core;
- each engine of the space at the defaults a practitioner starts from: llama.cpp Q4_K_M with one
  slot, vLLM bf16 with its compiled graphs and every prompt in flight.

1. The example's search, as `autoinfer search` runs it (its budget, its sampler, a fresh
   throw-away study; the user's caches as they are).
2. Its best feasible point by correct tokens per joule, and each baseline, each measured again
   `--repeats` times, alternating (so drift on a noisy machine hits all alike); accuracy is
   measured once per weights and reused, as in the search.

Printed last: for each baseline, the median of the paired ratios (found / baseline) of correct
tokens per joule, with their range, and the same for tokens/s.

    python scripts/bench_gain.py examples/smollm2-cpu.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from benchkit import machine, measure, throwaway, today

from autoinfer.config import Config, load_config
from autoinfer.engines import TrialPoint
from autoinfer.evaluators.workload import builtin_size
from autoinfer.record import TrialRecord
from autoinfer.search.pareto import is_feasible, measured_trials
from autoinfer.search.study import Events, run_search

METRIC = "correct_tokens_per_j"


def with_point(config: Config, point: TrialPoint) -> Config:
    """`config` itself when its space holds `point`'s engine, level, compile mode and batch; otherwise a copy whose
    space also lists them (Qwen's example searches llama.cpp only, yet the naive default is
    transformers fp32). Model, prompts, token budget and accuracy items are untouched, so every side
    does the same work; the copy's study identity differs, so no accuracy is borrowed across them."""
    space = config.space
    update: dict[str, list[Any]] = {}
    wanted: dict[str, Any] = {
        "engine": point.engine,
        "quantization": point.quantization,
        "batch_size": point.batch_size,
    }
    if point.compile_mode:
        wanted["compile_mode"] = point.compile_mode
    for key, value in wanted.items():
        if value not in getattr(space, key):
            update[key] = [*getattr(space, key), value]
    if not update:
        return config
    return config.model_copy(update={"space": space.model_copy(update=update)})


@dataclass(frozen=True)
class Side:
    """One configuration measured in the paired repeats: its point and the config it runs under."""

    name: str
    point: TrialPoint
    config: Config


def baselines(config: Config) -> list[Side]:
    """What runs without a search: the naive default (transformers fp32, batch 1, every core), and
    each installed engine of the space at its own defaults: llama.cpp Q4_K_M with one slot (what
    llama-server serves one client with), vLLM bf16 with its default compiled graphs and every
    prompt in flight (its default max_num_seqs, 256, exceeds any prompt set here)."""
    cores = f"cpu:{os.cpu_count()}"
    sides = [Side("naive", TrialPoint("transformers", "fp32", "none", 1, cores), config)]
    if "llama.cpp" in config.space.engine:
        sides.append(Side("llama.cpp default", TrialPoint("llama.cpp", "Q4_K_M", "none", 1, cores), config))
    if "vllm" in config.space.engine:
        in_flight = min(256, builtin_size(config.workload.prompts) or max(config.space.batch_size))
        point = TrialPoint("vllm", "bf16", "none", in_flight, cores, compile_mode="compiled")
        sides.append(Side("vllm default", point, config))
    return [Side(s.name, s.point, with_point(s.config, s.point)) for s in sides]


def search(cfg: Config) -> TrialPoint:
    """Run (or resume) the config's own search and return its best feasible point by METRIC."""

    def finished(t: optuna.trial.FrozenTrial) -> None:
        if t.state == optuna.trial.TrialState.FAIL:  # kept in the log: a lost point may be the best one
            print(f"search trial {t.number} FAILED: {t.user_attrs.get('fail_reason')}", flush=True)

    events = Events(
        trial_started=lambda n, p, i, total: print(f"search trial {n} ({i}/{total}): {p.label()}", flush=True),
        trial_finished=finished,
        message=lambda m: print(m, flush=True),
    )
    study, _ = run_search(cfg, events)  # resumes a study kept in --study-dir; a spent one runs nothing
    found = [m for m in measured_trials(study) if is_feasible(cfg, m.record) and METRIC in m.record.metrics]
    if not found:
        raise SystemExit("the search measured no feasible trial with correct tokens per joule")
    top = max(found, key=lambda m: m.record.metrics[METRIC])
    print(f"search: {len(measured_trials(study))} trials measured; best {top.record.point.label()} "
          f"{top.record.metrics[METRIC]:.3g} correct tok/J (trial {top.number})", flush=True)  # fmt: skip
    return top.record.point


def remeasure(sides: list[Side], repeats: int, logs: Path) -> dict[str, list[TrialRecord]]:
    """Each side measured `repeats` times, the sides alternating within a repeat, so drift on a
    noisy machine hits them alike; accuracy is measured once per weights and reused."""
    recs: dict[str, list[TrialRecord]] = {s.name: [] for s in sides}
    for r in range(repeats):
        for s in sides:
            done = tuple(x for xs in recs.values() for x in xs)
            # An hour: a first run may dequantize a GGUF and run lm-eval in fp32 (Qwen 1.5B: ~20 min).
            rec = measure(s.config, s.point, logs, None, done, timeout_s=3600)
            recs[s.name].append(rec)
            m = rec.metrics
            print(f"repeat {r + 1} {s.name} {s.point.label()}: {m['tokens_per_s']:.1f} tok/s, "
                  f"acc {m['accuracy']:.3f}, {m[METRIC]:.3g} correct tok/J", flush=True)  # fmt: skip
    return recs


def paired(recs: dict[str, list[TrialRecord]], name: str, metric: str) -> list[float]:
    """Repeat by repeat, the found point's `metric` over side `name`'s."""
    pairs = zip(recs["found"], recs[name], strict=True)
    return [f.metrics[metric] / g.metrics[metric] for f, g in pairs]


def report(args: argparse.Namespace, config: Config, sides: list[Side], recs: dict[str, list[TrialRecord]]) -> None:
    f0 = recs["found"][0]
    print(f"\n{args.config}: {config.search.trials}-trial {config.search.sampler} search; {machine()}; {today()}; "
          f"energy {f0.provenance.energy_source}")  # fmt: skip
    print("| | configuration | accuracy | tokens/s (median) | correct tokens/J (median) |")
    print("|---|---|---|---|---|")
    for s in sides:
        r = recs[s.name]
        tps = statistics.median(x.metrics["tokens_per_s"] for x in r)
        ctj = statistics.median(x.metrics[METRIC] for x in r)
        print(f"| {s.name} | {s.point.label()} | {r[0].metrics['accuracy']:.3f} | {tps:.1f} | {ctj:.3g} |")
    print()
    for s in sides[1:]:
        gain, speed = paired(recs, s.name, METRIC), paired(recs, s.name, "tokens_per_s")
        print(f"found vs {s.name}: {statistics.median(gain):.2f}x correct tokens/J [{min(gain):.2f}, {max(gain):.2f}], "
              f"{statistics.median(speed):.2f}x tokens/s [{min(speed):.2f}, {max(speed):.2f}], "
              f"{args.repeats} paired repeats")  # fmt: skip
    if args.json:
        out = {
            "config": args.config,
            "date": today(),
            "machine": machine(),
            "energy_source": f0.provenance.energy_source,
            "sides": {s.name: s.point.as_dict() for s in sides},
            "gain": {s.name: paired(recs, s.name, METRIC) for s in sides[1:]},
            "speed": {s.name: paired(recs, s.name, "tokens_per_s") for s in sides[1:]},
            "metrics": {name: [x.metrics for x in r] for name, r in recs.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))


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
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.study_dir or tmp)
        cfg = throwaway(config, d, f"{config.study_name}-bench")
        sides = [Side("found", search(cfg), cfg), *baselines(cfg)]
        for s in sides[1:]:
            if s.config is not cfg:
                print(f"{s.name} {s.point.label()} is outside the example's space: it is measured on the same model, "
                      "prompts and accuracy items through a copy of the config whose space holds it")  # fmt: skip
        recs = remeasure(sides, args.repeats, d / "logs")
    report(args, config, sides, recs)


if __name__ == "__main__":
    main()
