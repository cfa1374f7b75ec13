"""What one trial does, inside its own process: load, measure speed, memory and energy, check a
draft against plain decoding, score accuracy, and return one typed record.

Runs in a spawned child (see `search.isolation`), so thread counts are set before torch loads and
a segfault or OOM kill takes down this process only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoinfer.config import Config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.evaluators.lossless import check_lossless
from autoinfer.evaluators.machine_load import LoadGuard
from autoinfer.hardware import machine_of_trial
from autoinfer.identity import scored_key
from autoinfer.record import Generations, Provenance, TrialRecord


def set_threads(point: TrialPoint) -> int:
    """Pin intra-op threads before torch or llama.cpp start their pools."""
    n = point.hardware_spec.threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def load_guard(config: Config, point: TrialPoint) -> LoadGuard:
    """When the trial's measured window counts as its own (search.max_other_cpu_pct and friends)."""
    hw = point.hardware_spec
    s = config.search
    cores = hw.threads if hw.kind == "cpu" else 1  # a GPU trial's host thread
    return LoadGuard(cores, s.max_other_cpu_pct, s.max_steal_pct, s.busy_retries, s.busy_wait_s)


def run_trial(
    config: Config,
    point: TrialPoint,
    identity: str,
    accuracy_key: str,
    known_accuracy: dict[str, AccuracyResult],
    stage: Callable[[str], None],
) -> TrialRecord:
    threads = set_threads(point)
    hw = point.hardware_spec
    if point.engine == "transformers":
        import torch

        torch.set_num_threads(threads)
    from autoinfer.evaluators.bandwidth import cached_bandwidth_gbs
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.evaluators.memory import generation_window, load_peak, release_freed
    from autoinfer.evaluators.throughput import measure_throughput
    from autoinfer.evaluators.workload import load_prompts, prompt_set

    gpu_handle = None
    if hw.kind == "cuda" and point.engine != "transformers":
        from autoinfer.gpu import nvml_handle

        gpu_handle, _ = nvml_handle(hw.index or 0)

    stage("load")
    engine = ENGINES.get(point.engine).load_class()(config, point)
    engine.on_stage = stage
    engine.load()
    loaded = load_peak(hw.kind, point.engine, hw.torch_device, gpu_handle)
    release_freed()
    wl = config.workload
    prompts = prompt_set(load_prompts(wl.prompts, Path(config.base_dir)), wl.prompt_count)
    meter, meter_reason = meter_for(hw, config.energy.cpu_watts_per_core, config.energy.cpu_static_watts_per_core)
    stage("throughput+energy")
    with generation_window(hw.kind, point.engine, hw.torch_device, gpu_handle) as mem:
        tp = measure_throughput(
            engine, prompts, point.batch_size, wl.max_new_tokens, wl.repeats, wl.warmup, meter, wl.ignore_eos,
            load_guard(config, point),
        )  # fmt: skip
    assert mem.reading is not None
    drafted = point.draft_spec.kind != "none"
    lossless: bool | None = None
    draft_check = ""
    if drafted:
        stage("lossless check")
        check = check_lossless(engine, prompts, tp.outputs)
        lossless, draft_check = check.lossless, check.detail

    e = tp.energy
    metrics: dict[str, float] = {
        "tokens_per_s": tp.tokens_per_s,
        "tokens_per_s_cv": tp.tokens_per_s_cv,
        "ttft_p50_s": tp.ttft_p50_s,
        "tpot_p50_s": tp.tpot_p50_s,
        "latency_p50_s": tp.latency_p50_s,
        "latency_p95_s": tp.latency_p95_s,
        "generated_tokens": float(tp.generated_tokens),
        "wall_s": tp.wall_s,
        "peak_memory_gb": mem.reading.peak_gb,
        "load_peak_memory_gb": loaded.peak_gb,
        "energy_j": e.energy_j,
        "mean_power_w": e.mean_power_w,
        "j_per_token": e.energy_j / tp.generated_tokens if tp.generated_tokens else math.inf,
        "busy_remeasures": float(tp.busy_remeasures),
    }
    if tp.load is not None:
        metrics.update(other_cpu_pct=tp.load.other_cpu_pct, steal_pct=tp.load.steal_pct)
    if drafted:
        metrics["acceptance_rate"] = tp.acceptance_rate or 0.0
        metrics["draft_proposed"] = float(tp.draft_proposed)
        metrics["draft_accepted"] = float(tp.draft_accepted)
        metrics["draft_tied_prompts"] = float(check.tied_prompts)
        metrics["draft_tie_margin"] = check.max_tie_margin

    # Roofline: what decoding streamed (target weights once per forward pass, draft weights once
    # per draft step) per second of decoding, against the measured bandwidth.
    target_bytes, draft_bytes = engine.weight_bytes(), engine.draft_weight_bytes()
    bw, bw_how = cached_bandwidth_gbs(hw.torch_device, threads)
    metrics.update(weight_bytes=float(target_bytes), draft_weight_bytes=float(draft_bytes), bandwidth_gbs=bw)
    if tp.decode_s > 0 and tp.target_passes > 0:
        streamed = tp.target_passes * target_bytes + tp.draft_steps * draft_bytes
        metrics["roofline_pct"] = 100.0 * streamed / tp.decode_s / (bw * 1e9)

    accuracy: AccuracyResult | None = None
    if config.accuracy.tasks:
        key = scored_key(accuracy_key, engine.score_facts())
        accuracy = known_accuracy.get(key)
        if accuracy is None:
            stage("accuracy")
            from autoinfer.evaluators.accuracy import evaluate_accuracy

            accuracy = dataclasses.replace(evaluate_accuracy(engine.lm_eval_model(), config), key=key)
        metrics["accuracy"] = accuracy.accuracy
        metrics["accuracy_stderr"] = accuracy.stderr
        metrics["accuracy_samples"] = float(accuracy.samples)
        # Correct tokens per joule: tokens the model would get right, per joule spent making them.
        metrics["correct_tokens_per_j"] = accuracy.accuracy * tp.generated_tokens / e.energy_j
    generations = Generations(
        prompt_ids=tuple(tuple(engine.prompt_ids(p)) for p in prompts),
        output_ids=tp.outputs,
        texts=tuple(engine.text(ids) for ids in tp.outputs),
    )
    engine.close()
    provenance = Provenance(
        identity=identity,
        energy_source=e.source,
        energy_detail=e.detail,
        energy_meter_reason=meter_reason,
        energy_inputs=dict(e.inputs),
        machine_load=tp.load.detail() if tp.load is not None else "not read (no /proc/stat)",
        memory_source=mem.reading.source,
        threads=threads,
        prompts=tp.prompts,
        repeats=tp.repeats,
        warmup=wl.warmup,
        sequences=tp.sequences,
        bandwidth_source=f"{bw_how}: sum over a 256 MB fp32 buffer, {threads} threads",
        draft_lossless=lossless,
        draft_check=draft_check,
        engine=dict(engine.info),
        machine=machine_of_trial(),
    )
    return TrialRecord(point, metrics, provenance, accuracy, generations)


def run_payload(payload: dict[str, Any], stage: Callable[[str], None]) -> TrialRecord:
    """Child-process entry point: rebuild the config and point from plain data, run the trial."""
    config = Config.model_validate(payload["config"])
    point = TrialPoint(**payload["point"])
    return run_trial(config, point, payload["identity"], payload["accuracy_key"], payload["known_accuracy"], stage)
