"""What one trial does, inside its own process: load, measure speed, memory and energy, check a
draft against plain decoding, score accuracy, and return one typed record.

Runs in a spawned child (see `search.isolation`), so thread counts are set before torch loads and
a segfault or OOM kill takes down this process only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoinfer.config import Config
from autoinfer.engines import ENGINES, Engine, TrialPoint
from autoinfer.errors import TrialError
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.evaluators.lossless import DraftCheck, check_lossless, draft_refusal
from autoinfer.evaluators.machine_load import LoadGuard
from autoinfer.hardware import machine_of_trial
from autoinfer.identity import scored_as_generated, scored_key
from autoinfer.record import Generations, Provenance, TrialRecord

if TYPE_CHECKING:
    from autoinfer.evaluators.memory import MemoryReading
    from autoinfer.evaluators.throughput import ThroughputResult
    from autoinfer.served.trial import ServedMeasurement


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


@dataclass(frozen=True)
class Measurement:
    """What the measured window gave: speed and energy, memory, and the draft check."""

    tp: ThroughputResult
    memory: MemoryReading  # peak while generating
    loaded: MemoryReading  # peak until the end of loading
    meter_reason: str
    draft: DraftCheck | None  # drafted trials only


def _load(config: Config, point: TrialPoint, stage: Callable[[str], None]) -> tuple[Engine, Any]:
    """The loaded engine, and the NVML handle a GPU llama.cpp trial reads its memory through."""
    hw = point.hardware_spec
    if point.engine == "transformers":
        import torch

        torch.set_num_threads(hw.threads)
    gpu_handle = None
    if hw.kind == "cuda" and point.engine != "transformers":
        from autoinfer.gpu import nvml_handle

        gpu_handle, _ = nvml_handle(hw.index or 0)
    stage("load")
    engine = ENGINES.get(point.engine).load_class()(config, point)
    engine.on_stage = stage
    engine.load()
    return engine, gpu_handle


def _measure(
    config: Config, engine: Engine, prompts: list[str], gpu_handle: Any, stage: Callable[[str], None]
) -> Measurement:
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.evaluators.memory import generation_window, load_peak, release_freed
    from autoinfer.evaluators.throughput import measure_throughput

    point, hw, wl, en = engine.point, engine.point.hardware_spec, config.workload, config.energy
    loaded = load_peak(hw.kind, point.engine, hw.torch_device, gpu_handle)
    release_freed()
    meter, meter_reason = meter_for(hw, en.cpu_watts_per_core, en.cpu_static_watts_per_core)
    stage("throughput+energy")
    with generation_window(hw.kind, point.engine, hw.torch_device, gpu_handle) as mem:
        tp = measure_throughput(
            engine, prompts, point.batch_size, wl.max_new_tokens, wl.repeats, wl.warmup, meter, wl.ignore_eos,
            load_guard(config, point),
        )  # fmt: skip
    assert mem.reading is not None
    check = None
    if point.draft_spec.kind != "none":
        stage("lossless check")
        check = check_lossless(engine, prompts, tp.outputs)
        refusal = draft_refusal(check, scored_as_generated(config, point))
        if refusal:  # nothing would judge the tokens it produced (the trial's child ends with it)
            raise TrialError(refusal)
    return Measurement(tp, mem.reading, loaded, meter_reason, check)


def _metrics(m: Measurement) -> dict[str, float]:
    tp, e = m.tp, m.tp.energy
    metrics: dict[str, float] = {
        "tokens_per_s": tp.tokens_per_s,
        "tokens_per_s_cv": tp.tokens_per_s_cv,
        "ttft_p50_s": tp.ttft_p50_s,
        "tpot_p50_s": tp.tpot_p50_s,
        "latency_p50_s": tp.latency_p50_s,
        "latency_p95_s": tp.latency_p95_s,
        "generated_tokens": float(tp.generated_tokens),
        "wall_s": tp.wall_s,
        "peak_memory_gb": m.memory.peak_gb,
        "load_peak_memory_gb": m.loaded.peak_gb,
        "energy_j": e.energy_j,
        "mean_power_w": e.mean_power_w,
        "j_per_token": e.energy_j / tp.generated_tokens if tp.generated_tokens else math.inf,
        "busy_remeasures": float(tp.busy_remeasures),
    }
    if tp.load is not None:
        metrics.update(other_cpu_pct=tp.load.other_cpu_pct, steal_pct=tp.load.steal_pct)
    if m.draft is not None:
        metrics["acceptance_rate"] = tp.acceptance_rate or 0.0
        metrics["draft_proposed"] = float(tp.draft_proposed)
        metrics["draft_accepted"] = float(tp.draft_accepted)
        metrics["draft_tied_prompts"] = float(m.draft.tied_prompts)
        metrics["draft_tie_margin"] = m.draft.max_tie_margin
        if m.draft.self_divergence is not None:
            metrics["greedy_self_divergence"] = m.draft.self_divergence
    # 0 for an undrafted trial, so that `draft_divergence <= 0` (lossless drafts only) keeps it.
    metrics["draft_divergence"] = m.draft.divergence if m.draft is not None else 0.0
    return metrics


def _roofline(engine: Engine, tp: ThroughputResult) -> tuple[dict[str, float], str]:
    """What decoding streamed (target weights once per forward pass, draft weights once per draft
    step) per second of decoding, against the measured bandwidth; and how that was measured."""
    from autoinfer.evaluators.bandwidth import cached_bandwidth_gbs

    hw = engine.point.hardware_spec
    target_bytes, draft_bytes = engine.weight_bytes(), engine.draft_weight_bytes()
    bw, bw_how = cached_bandwidth_gbs(hw.torch_device, hw.threads)
    out = {"weight_bytes": float(target_bytes), "draft_weight_bytes": float(draft_bytes), "bandwidth_gbs": bw}
    if tp.decode_s > 0 and tp.target_passes > 0:
        streamed = tp.target_passes * target_bytes + tp.draft_steps * draft_bytes
        out["roofline_pct"] = 100.0 * streamed / tp.decode_s / (bw * 1e9)
    return out, f"{bw_how}: sum over a 256 MB fp32 buffer, {hw.threads} threads"


def _score(
    config: Config, engine: Engine, accuracy_key: str, known: dict[str, AccuracyResult], stage: Callable[[str], None]
) -> AccuracyResult:
    """Accuracy of the loaded engine, or an earlier trial's run whose full key matches."""
    key = scored_key(accuracy_key, engine.score_facts())
    accuracy = known.get(key)
    if accuracy is None:
        stage("accuracy")
        from autoinfer.evaluators.accuracy import evaluate_accuracy
        from autoinfer.evaluators.energy import meter_for

        # The eval's own cost, by the meter the trial's measurement uses (generative evals cost
        # minutes of generation a level): recorded, never part of the trial's tokens per joule.
        hw, en = engine.point.hardware_spec, config.energy
        meter, _ = meter_for(hw, en.cpu_watts_per_core, en.cpu_static_watts_per_core)
        t0, result = time.perf_counter(), None
        try:
            with meter.measure() as box:
                result = evaluate_accuracy(engine.lm_eval_model(), config)
        except TrialError:  # the meter read nothing over a short eval: its time still counts
            if result is None:
                raise
        e = box.reading
        accuracy = dataclasses.replace(
            result, key=key, eval_s=time.perf_counter() - t0, eval_energy_j=e.energy_j if e else None,
            eval_energy_source=e.source if e else "",
        )  # fmt: skip
    return accuracy


def accuracy_metrics(accuracy: AccuracyResult, ran_here: bool) -> dict[str, float]:
    """A trial's accuracy as metrics, and where this trial ran the eval (`ran_here`), the eval's
    own time and energy (energy where the meter read it)."""
    out = {"accuracy": accuracy.accuracy, "accuracy_stderr": accuracy.stderr,
           "accuracy_samples": float(accuracy.samples)}  # fmt: skip
    if ran_here and accuracy.eval_s:
        out["accuracy_eval_s"] = accuracy.eval_s
    if ran_here and accuracy.eval_energy_j is not None:
        out["accuracy_energy_j"] = accuracy.eval_energy_j
    return out


def run_trial(
    config: Config,
    point: TrialPoint,
    identity: str,
    accuracy_key: str,
    known_accuracy: dict[str, AccuracyResult],
    stage: Callable[[str], None],
) -> TrialRecord:
    from autoinfer.evaluators.workload import load_prompts, prompt_set

    if config.workload.mode == "served":  # the point's server under one load point (autoinfer.served)
        from autoinfer.served.trial import measure_served

        prep = prepare_served(config, point, accuracy_key, known_accuracy, stage)
        served = measure_served(config, point, prep.info, prep.prompts, load_guard(config, point), stage)
        return served_record(config, point, identity, prep, served)
    threads = set_threads(point)
    engine, gpu_handle = _load(config, point, stage)
    wl = config.workload
    prompts = prompt_set(load_prompts(wl.prompts, Path(config.base_dir)), wl.prompt_count)
    m = _measure(config, engine, prompts, gpu_handle, stage)
    tp, e = m.tp, m.tp.energy
    metrics = _metrics(m)
    roofline, bw_how = _roofline(engine, tp)
    metrics.update(roofline)
    accuracy = _score(config, engine, accuracy_key, known_accuracy, stage) if config.accuracy.tasks else None
    if accuracy is not None:
        metrics.update(accuracy_metrics(accuracy, ran_here=accuracy.reused_from_trial is None))
        # Correct tokens per joule: tokens the model would get right, per joule spent making them.
        metrics["correct_tokens_per_j"] = accuracy.accuracy * tp.generated_tokens / e.energy_j
    add_cost(config, metrics, accuracy.accuracy * tp.generated_tokens if accuracy is not None else None)
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
        energy_meter_reason=m.meter_reason,
        energy_inputs=dict(e.inputs),
        machine_load=tp.load.detail() if tp.load is not None else "not read (no /proc/stat)",
        memory_source=m.memory.source,
        threads=threads,
        prompts=tp.prompts,
        repeats=tp.repeats,
        warmup=wl.warmup,
        sequences=tp.sequences,
        bandwidth_source=bw_how,
        draft_lossless=m.draft.lossless if m.draft is not None else None,
        draft_check=m.draft.detail if m.draft is not None else "",
        engine=dict(engine.info),
        machine=machine_of_trial(),
    )
    return TrialRecord(point, metrics, provenance, accuracy, generations)


@dataclass(frozen=True)
class Prepared:
    """What a served trial takes from the engine loaded in its own process: what the engine
    recorded (files, context, settings: the server command is built from it), the accuracy scored
    on it, and the prompt set."""

    info: dict[str, Any]
    accuracy: AccuracyResult | None
    threads: int
    prompts: list[str]


def prepare_served(
    config: Config, point: TrialPoint, accuracy_key: str, known_accuracy: dict[str, AccuracyResult],
    stage: Callable[[str], None],
) -> Prepared:  # fmt: skip
    """Load the point's engine here, score it (or reuse a score by key), and close it again, so
    the server started next has the memory."""
    from autoinfer.evaluators.workload import load_prompts, prompt_set

    threads = set_threads(point)
    engine, _ = _load(config, point.server(), stage)
    wl = config.workload
    prompts = prompt_set(load_prompts(wl.prompts, Path(config.base_dir)), wl.prompt_count)
    accuracy = _score(config, engine, accuracy_key, known_accuracy, stage) if config.accuracy.tasks else None
    info = dict(engine.info)
    engine.close()
    return Prepared(info, accuracy, threads, prompts)


def served_record(
    config: Config, point: TrialPoint, identity: str, prep: Prepared, m: ServedMeasurement
) -> TrialRecord:
    """A served trial's record: the load point's metrics, energy, accuracy and provenance."""
    e, accuracy = m.energy, prep.accuracy
    metrics = dict(m.metrics)
    if point.draft == "none":  # as offline: `draft_divergence <= 0` keeps undrafted trials
        metrics["draft_divergence"] = 0.0
    metrics.update(energy_j=e.energy_j, mean_power_w=e.mean_power_w, peak_memory_gb=m.memory.peak_gb)
    tokens = metrics["generated_tokens"]
    metrics["j_per_token"] = e.energy_j / tokens if tokens else math.inf
    if m.load is not None:
        metrics.update(other_cpu_pct=m.load.other_cpu_pct, steal_pct=m.load.steal_pct)
    if accuracy is not None:
        # The eval ran where its score is not reused: on a server's first load point only.
        ran_here = accuracy.reused_from_trial is None and not m.provenance.get("server_reused")
        metrics.update(accuracy_metrics(accuracy, ran_here))
        # Only requests that met the SLO count: a correct answer that came too late was not served.
        metrics["correct_tokens_per_j"] = accuracy.accuracy * m.good_tokens / e.energy_j if e.energy_j else 0.0
    add_cost(config, metrics, accuracy.accuracy * m.good_tokens if accuracy is not None else None)
    served = config.workload.served
    assert served is not None
    provenance = Provenance(
        identity=identity, energy_source=e.source, energy_detail=e.detail,
        energy_meter_reason="the server's process tree" + (" (CPU-time estimate)" if e.inputs else ""),
        energy_inputs=dict(e.inputs), machine_load=m.load.detail() if m.load is not None else "not read",
        memory_source=m.memory.source, threads=prep.threads, prompts=len(prep.prompts), repeats=1,
        warmup=served.warmup_requests, sequences=int(metrics["requests_sent"]), bandwidth_source="",
        engine=prep.info, machine=machine_of_trial(), served=m.provenance,
    )  # fmt: skip
    return TrialRecord(point, metrics, provenance, accuracy, None)


def prepare_payload(payload: dict[str, Any], stage: Callable[[str], None]) -> Prepared:
    """Child-process entry point of a served trial's preparation (`prepare_served`)."""
    config = Config.model_validate(payload["config"])
    point = TrialPoint(**payload["point"])
    return prepare_served(config, point, payload["accuracy_key"], payload["known_accuracy"], stage)


def add_cost(config: Config, metrics: dict[str, float], correct_tokens: float | None) -> None:
    """$ per million tokens (and per million correct tokens) at the user's prices: the machine's
    hours over the measured window plus the energy it drew. Nothing without `cost`."""
    c = config.cost
    if c is None or not metrics.get("generated_tokens"):
        return
    usd = metrics["wall_s"] / 3600 * c.usd_per_hour + metrics["energy_j"] / 3.6e6 * c.usd_per_kwh
    metrics["usd_per_mtok"] = usd / metrics["generated_tokens"] * 1e6
    if correct_tokens is not None:
        metrics["usd_per_correct_mtok"] = usd / correct_tokens * 1e6 if correct_tokens > 0 else math.inf


def run_payload(payload: dict[str, Any], stage: Callable[[str], None]) -> TrialRecord:
    """Child-process entry point: rebuild the config and point from plain data, run the trial."""
    config = Config.model_validate(payload["config"])
    point = TrialPoint(**payload["point"])
    return run_trial(config, point, payload["identity"], payload["accuracy_key"], payload["known_accuracy"], stage)
