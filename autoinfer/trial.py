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
from autoinfer.engines import ENGINES, Engine, TrialPoint
from autoinfer.errors import TrialError
from autoinfer.evaluators.accuracy import AccuracyResult
from autoinfer.hardware import machine_of_trial
from autoinfer.identity import scored_key
from autoinfer.record import Generations, Provenance, TrialRecord


def set_threads(point: TrialPoint) -> int:
    """Pin intra-op threads before torch or llama.cpp start their pools."""
    n = point.hardware_spec.threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def first_divergence(
    drafted: tuple[tuple[int, ...], ...], plain: tuple[tuple[int, ...], ...]
) -> tuple[int, int] | None:
    """(prompt index, token index) where drafted output first differs from plain, None if identical."""
    for i, (a, b) in enumerate(zip(drafted, plain, strict=True)):
        if a != b:
            j = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            return i, j
    return None


def check_lossless(engine: Engine, prompts: list[str], drafted: tuple[tuple[int, ...], ...]) -> tuple[bool, str]:
    """Greedy speculative decoding must produce what plain greedy decoding of the same target
    produces, token for token and to full length. Returns (identical, what was found).

    Where they differ, the target's own logits at the first difference decide what it is: if the
    two tokens are closer than batch shape alone moves the target's logits there (a verification
    evaluates several tokens in one pass, plain decoding one, and some kernels round those
    differently), it is a floating-point tie, recorded as such. Anything else is a broken draft
    path, and the trial fails.
    """
    from autoinfer.evaluators.throughput import generate_set, outputs_of

    wl = engine.config.workload
    plain = outputs_of(generate_set(engine, prompts, engine.point.batch_size, wl.max_new_tokens, wl.ignore_eos, False))
    where = first_divergence(drafted, plain)
    if where is None:
        return True, f"{len(plain)} prompts, {sum(map(len, plain))} tokens identical to plain greedy decoding"
    i, j = where
    got, want = drafted[i][j] if j < len(drafted[i]) else None, plain[i][j] if j < len(plain[i]) else None
    what = f"prompt {i} differs from plain greedy decoding at token {j} (drafted {got}, plain {want})"
    width = engine.draft_width + 1  # tokens of each sequence a verification evaluates in one pass
    batch = engine.point.batch_size

    def logits(w: int, b: int = batch) -> Any:
        return engine.next_token_logits(prompts[i], plain[i][:j], w, b)

    single = logits(1) if got is not None and want is not None else None
    if single is None:
        raise TrialError(f"draft is not lossless: {what}")
    # How far pass shape alone moves the target's logits here: a verification's shape, the whole
    # sequence in one pass (assisted generation's first pass also takes the prompt), and passes of
    # one sequence. The last matter at batch > 1: a drafted batch's passes hold any number of
    # tokens, and some kernels take a different path for the tokens past a multiple of 4 (Gemma-3
    # Q4_K_M repacked, batch 8, AVX2: a 9-token pass moved a logit by 1.2 from the 8-token pass,
    # while passes of 8, 32 and 8 x prompt tokens agreed exactly).
    shapes = {(width, batch), (0, batch), (1, 1), (width, 1)} - {(1, batch)}
    shift = max(float(abs(single - logits(w, b)).max()) for w, b in shapes)
    margin = float(single[want] - single[got])
    # A tie: the target's best token is one of the two, and they are closer than pass shape moves
    # its logits. Which one a one-token pass prefers is itself down to rounding (at batch > 1 it
    # may pick the drafted token while plain decoding, with other rows beside it, picked the other).
    if int(single.argmax()) not in (want, got) or abs(margin) > 2 * shift:
        raise TrialError(f"draft is not lossless: {what}; the target's logits there: {want} {margin:+.3g} over "
                         f"{got}, beyond what pass shape moves them ({shift:.3g})")  # fmt: skip
    return False, (
        f"floating-point tie: {what}, where the target's two tokens are {margin:.3g} apart in logits and "
        f"changing how many tokens a pass evaluates moves its logits there by up to {shift:.3g}"
    )


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
    meter, meter_reason = meter_for(hw, config.energy.cpu_watts_per_core)
    stage("throughput+energy")
    with generation_window(hw.kind, point.engine, hw.torch_device, gpu_handle) as mem:
        tp = measure_throughput(
            engine, prompts, point.batch_size, wl.max_new_tokens, wl.repeats, wl.warmup, meter, wl.ignore_eos
        )
    assert mem.reading is not None
    drafted = point.draft_spec.kind != "none"
    lossless: bool | None = None
    draft_check = ""
    if drafted:
        stage("lossless check")
        lossless, draft_check = check_lossless(engine, prompts, tp.outputs)

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
    }
    if drafted:
        metrics["acceptance_rate"] = tp.acceptance_rate or 0.0
        metrics["draft_proposed"] = float(tp.draft_proposed)
        metrics["draft_accepted"] = float(tp.draft_accepted)

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
