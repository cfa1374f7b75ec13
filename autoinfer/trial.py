"""What one trial does, inside its own process: load, measure throughput+energy, accuracy, derive.

Runs in a spawned child (see `search.isolation`), so thread counts are set before torch loads and
a segfault or OOM kill takes down this process only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autoinfer.config import Config
from autoinfer.engines import ENGINES, TrialPoint


def accuracy_key(config: Config, point: TrialPoint) -> str:
    """What accuracy depends on: weights, quantization, engine, device kind and the eval itself.

    Draft and batch size do not change greedy logits, nor does the CPU thread count.
    """
    acc = config.accuracy
    parts = {
        "model": [config.model.source, config.model.gguf_file, config.model.revision],
        "engine": point.engine,
        "quantization": point.quantization,
        "device": point.hardware_spec.kind,
        "tasks": [t.model_dump() for t in acc.tasks],
        "limit": acc.limit,
        "num_fewshot": acc.num_fewshot,
        "metric": acc.metric,
    }
    return json.dumps(parts, sort_keys=True)


def set_threads(point: TrialPoint) -> int:
    """Pin intra-op threads before torch or llama.cpp start their pools."""
    n = point.hardware_spec.threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def run_trial(
    config: Config,
    point: TrialPoint,
    reused_accuracy: dict[str, Any] | None,
    stage: Callable[[str], None],
) -> dict[str, Any]:
    threads = set_threads(point)
    spec = ENGINES.get(point.engine)
    if point.engine == "transformers":
        import torch

        torch.set_num_threads(threads)
    from autoinfer.evaluators.bandwidth import cached_bandwidth_gbs
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.evaluators.throughput import measure_throughput
    from autoinfer.evaluators.workload import load_prompts

    stage("load")
    engine = spec.load_class()(config, point)
    engine.load()
    wl = config.workload
    prompts = load_prompts(wl.prompts, Path(config.base_dir))
    meter, meter_reason = meter_for(point.hardware_spec, config.energy.cpu_watts_per_core)
    stage("throughput+energy")
    tp = measure_throughput(
        engine, prompts, point.batch_size, wl.max_new_tokens, wl.repeats, wl.warmup, meter, wl.ignore_eos
    )
    metrics: dict[str, float] = {
        k: float(v) for k, v in asdict(tp).items() if isinstance(v, (int, float)) and v is not None
    }
    e = tp.energy
    metrics["energy_j"] = e.energy_j
    metrics["mean_power_w"] = e.mean_power_w
    metrics["j_per_token"] = e.energy_j / tp.generated_tokens if tp.generated_tokens else math.inf
    info: dict[str, Any] = dict(engine.info)
    info.update(
        energy_source=e.source,
        energy_detail=e.detail,
        energy_meter_reason=meter_reason,
        measured_repeats=tp.repeats,
        measured_sequences=tp.sequences,
        warmup=wl.warmup,
        threads=threads,
    )

    bytes_per_step = engine.weight_bytes()
    bw, bw_how = cached_bandwidth_gbs(point.hardware_spec.torch_device, threads)
    metrics["weight_bytes"] = float(bytes_per_step)
    metrics["bandwidth_gbs"] = bw
    if tp.tpot_p50_s > 0 and not math.isnan(tp.tpot_p50_s):
        # One decode step streams every weight once; at the bandwidth limit it takes bytes / bw.
        metrics["roofline_pct"] = 100.0 * (bytes_per_step / tp.tpot_p50_s) / (bw * 1e9)
    info["bandwidth_source"] = f"{bw_how}: sum over a 256 MB fp32 buffer, {threads} threads"

    items: dict[str, list[float]] = {}  # per task, each item's score (paired comparisons)
    if config.accuracy.tasks:
        if reused_accuracy is not None:
            acc = reused_accuracy
            info["accuracy_reused_from_trial"] = acc["trial"]
        else:
            stage("accuracy")
            from autoinfer.evaluators.accuracy import evaluate_accuracy

            res = evaluate_accuracy(engine.lm_eval_model(), config)
            acc = {
                "accuracy": res.accuracy,
                "stderr": res.stderr,
                "samples": res.samples,
                "per_task": res.per_task,
                "items": res.items,
            }
        items = acc.get("items") or {}
        metrics["accuracy"] = acc["accuracy"]
        metrics["accuracy_stderr"] = acc["stderr"]
        metrics["accuracy_samples"] = float(acc["samples"])
        info["accuracy_per_task"] = acc["per_task"]
        # Correct tokens per joule: tokens the model would get right, per joule spent making them.
        metrics["correct_tokens_per_j"] = acc["accuracy"] * tp.generated_tokens / e.energy_j if e.energy_j else 0.0
    engine.close()
    return {"metrics": metrics, "info": info, "accuracy_items": items}


def run_payload(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    """Child-process entry point: rebuild the config and point from plain data, run the trial."""
    config = Config.model_validate(payload["config"])
    point = TrialPoint(**payload["point"])
    return run_trial(config, point, payload.get("reused_accuracy"), stage)
