"""What a study's numbers depend on, so numbers from different setups are never ranked together.

A study records its identity: the weights' digest, the workload (prompt content included), engine
and energy settings, the accuracy setup (data-file content included), library versions and the
machine. A re-run whose identity differs is refused with the first field that changed. Extending
the space is not a change: engines and drafts add their own fields (`engine.*`, `draft.*`) when
they join, and a field only one side has is not compared.

The accuracy key is the part of that which decides a score, plus the point's weights-side
dimensions; trials with equal keys share one lm-eval run.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from autoinfer.cache import file_digest, tree_digest
from autoinfer.config import Config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.spaces.dimensions import DraftSpec

# Bump when what a measurement means changes, so older studies are not mixed with newer numbers.
# 2: the fixed prompt set for every batch size, per-pass roofline, generation-window peak memory.
# 3: the CPU-time estimate counts the whole process tree and adds a static share over wall time;
#    busy windows are measured again (search.max_other_cpu_pct).
MEASUREMENT_VERSION = "3"
# Fields that appear when the space grows, or per hardware target: a study spread over machines
# holds each target's machine, and each worker compares only the targets it measures.
EXTENSIBLE = ("engine.", "draft.", "machine.")
# Engines whose lm-eval generation runs at the trial's own batch size (vLLM's scheduler keeps up to
# max_num_seqs = the trial's batch running), not at accuracy.batch_size.
GENERATES_AT_TRIAL_BATCH = frozenset({"vllm"})
# Engines whose lm-eval generation runs the trial's draft (vLLM's drafted LLM; transformers'
# assisted generation, one sequence at a time): a drafted trial's generative score is of the drafted
# output. llama.cpp's eval generates with the target alone.
GENERATES_WITH_DRAFT = frozenset({"vllm", "transformers"})


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_identity(config: Config, source: str, gguf_file: str | None = None) -> str:
    """Content digest of a model source: a GGUF file, a local checkpoint, or a hub id at a revision."""
    from autoinfer.engines.sources import resolve_source

    resolved = resolve_source(config, source)
    path = Path(resolved)
    if source.startswith("chunks:"):
        from autoinfer.engines.sources import CHUNKS_GGUF

        gguf_file = gguf_file or CHUNKS_GGUF
    if gguf_file:
        return "sha256:" + file_digest(path / gguf_file)
    if path.is_file():
        return "sha256:" + file_digest(path)
    if path.is_dir():
        return "tree-sha256:" + tree_digest(path)
    # Not on disk: a hub id. Pin model.revision to a commit for an exact identity.
    return f"hub:{source}@{config.model.revision or 'main'}"


def _data_identity(config: Config) -> str:
    tasks = []
    for t in config.accuracy.tasks:
        files = {split: "sha256:" + file_digest(config.resolve(path)) for split, path in (t.data_files or {}).items()}
        # max_gen_toks only where set: identities written before it existed stay as they were.
        tasks.append({"name": t.name, "data": files, **({"max_gen_toks": t.max_gen_toks} if t.max_gen_toks else {})})
    return json.dumps(tasks, sort_keys=True)


def generative(config: Config) -> bool:
    """Whether any accuracy task scores generated text (generate_until)."""
    return any(f and f.get("generative") for f in _task_facts(config).values())


def scored_as_generated(config: Config, point: TrialPoint) -> bool:
    """Whether a drafted point's accuracy is scored on what the drafted engine generates: every
    task generative (a log-likelihood task in the mean never sees the drafted output)."""
    facts = _task_facts(config).values()
    every = bool(facts) and all(f and f.get("generative") for f in facts)
    return point.draft != "none" and point.engine in GENERATES_WITH_DRAFT and every


def _task_facts(config: Config) -> dict[str, dict[str, Any] | None]:
    """Each accuracy task's definition as autoinfer reads it (evaluators.accuracy.task_facts; None
    for a task lm-eval does not know, which preflight refuses before a study starts)."""
    if not config.accuracy.tasks:
        return {}
    from autoinfer.preflight import task_index

    index = task_index()
    return {t.name: index.get(t.name) for t in config.accuracy.tasks}


def _per_task(values: dict[str, str]) -> str:
    """One value when every task has it (as written before values were per task), else each task's."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return json.dumps(values, sort_keys=True)


def _eval_identity(config: Config) -> dict[str, str]:
    """accuracy.num_fewshot and accuracy.metric as lm-eval will run them: each task's own shots and
    ranked result where the config leaves them unset. An ARC study from before either could be unset
    (num_fewshot 0, metric acc) reads "0" and "acc" as it did, and stays resumable."""
    from autoinfer.evaluators.accuracy import effective_shots, ranked_metric, short

    acc = config.accuracy
    facts = _task_facts(config)
    shots = {t.name: str(effective_shots(acc, facts.get(t.name))) for t in acc.tasks}
    metrics = {t.name: short(ranked_metric(t, acc, facts.get(t.name))) for t in acc.tasks}
    empty = str(acc.num_fewshot if acc.num_fewshot is not None else 0), short(acc.metric or "acc")
    return {
        "accuracy.num_fewshot": _per_task(shots) if shots else empty[0],
        "accuracy.metric": _per_task(metrics) if metrics else empty[1],
    }


def _prompts_identity(config: Config) -> str:
    from autoinfer.evaluators.workload import load_prompts, prompt_set

    wl = config.workload
    prompts = prompt_set(load_prompts(wl.prompts, Path(config.base_dir)), wl.prompt_count)
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
    return f"{wl.prompts} ({len(prompts)} prompts, sha256 {digest})"


def _machine(config: Config) -> dict[str, str]:
    """The machine behind each target this worker measures (`machine.<target>.<field>`): a target's
    numbers always come from one kind of machine, whichever worker measures it."""
    from autoinfer.hardware import cpu_model, gpus

    here = {"cpu": cpu_model(), "cpu_count": str(os.cpu_count()), "gpus": ", ".join(gpus())}
    targets = config.search.hardware or config.space.hardware
    out = {f"machine.{t}.{k}": v for t in targets for k, v in here.items()}
    # The meter behind each target: joules from RAPL and joules estimated from CPU time are not
    # the same quantity, so a target that changes meter changes what its numbers mean.
    out.update({f"machine.{t}.energy_meter": _meter_source(config, t) for t in targets})
    return out


def _meter_source(config: Config, target: str) -> str:
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.spaces.dimensions import HardwareSpec

    e = config.energy
    return meter_for(HardwareSpec.parse(target), e.cpu_watts_per_core, e.cpu_static_watts_per_core)[0].source


def upgrade(stored: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """A stored identity from before machines were recorded per target (`machine.cpu`, ...):
    read as that machine behind every target the current worker measures."""
    if "machine.cpu" not in stored:
        return stored
    old = {k: v for k, v in stored.items() if k.count(".") == 1 and k.startswith("machine.")}
    out = {k: v for k, v in stored.items() if k not in old}
    targets = {k.split(".")[1] for k in current if k.startswith("machine.")}
    out.update({f"machine.{t}.{k.split('.')[1]}": v for t in targets for k, v in old.items()})
    return out


def study_identity(config: Config) -> dict[str, str]:
    """Every field that changes a measurement, as display strings keyed by where they come from."""
    m, wl, acc = config.model, config.workload, config.accuracy
    ident: dict[str, str] = {
        "autoinfer.measurement": MEASUREMENT_VERSION,
        "model.weights": source_identity(config, m.source, m.gguf_file),
        "model.tokenizer": source_identity(config, m.tokenizer) if m.tokenizer else "the model's",
        "model.chat_template": str(m.chat_template),
        "model.trust_remote_code": str(m.trust_remote_code),
        "workload.prompts": _prompts_identity(config),
        "workload.max_new_tokens": str(wl.max_new_tokens),
        "workload.repeats": str(wl.repeats),
        "workload.warmup": str(wl.warmup),
        "workload.ignore_eos": str(wl.ignore_eos),
        "transformers.int_backend": config.transformers.int_backend,
        "energy.cpu_watts_per_core": f"{config.energy.cpu_watts_per_core:g}",
        "energy.cpu_static_watts_per_core": f"{config.energy.cpu_static_watts_per_core:g}",
        "accuracy.tasks": _data_identity(config),
        "accuracy.limit": str(acc.limit),
        **_eval_identity(config),
        "accuracy.batch_size": str(acc.batch_size),
        "lib.lm_eval": _version("lm_eval"),
        **_machine(config),
    }
    if config.cost is not None:  # priced studies only: $/Mtok is computed by each trial
        ident["cost"] = json.dumps(config.cost.model_dump(mode="json"), sort_keys=True)
    if wl.served is not None:  # served studies only: offline studies' identities stay as they were
        ident["workload.mode"] = wl.mode
        ident["workload.served"] = json.dumps(wl.served.model_dump(mode="json"), sort_keys=True)
    for name in config.space.engine:
        engine = ENGINES.get(name)
        for package in engine.version_packages:
            ident[f"engine.{name}.{package}"] = _version(package)
        ident.update({f"engine.{name}.{k}": v for k, v in engine.identity_settings(config).items()})
    for d in config.space.draft:
        spec = DraftSpec.parse(d)
        if spec.kind == "model" and not _is_level(spec.model):
            ident[f"draft.{spec.model}"] = source_identity(config, spec.model)
    return ident


def _is_level(name: str) -> bool:
    from autoinfer.spaces.dimensions import LLAMACPP_LEVELS

    return name in LLAMACPP_LEVELS


def identity_hash(identity: dict[str, str], engine: str | None = None, hardware: str | None = None) -> str:
    """Short hash of the fields every trial of a study shares (extensible fields left out); with
    `engine` and `hardware`, also that engine's own fields (its library versions) and the machine
    behind that target: a trial's fingerprint."""
    mine = tuple(p for p in (f"engine.{engine}." if engine else "", f"machine.{hardware}." if hardware else "") if p)
    core = {k: v for k, v in identity.items() if not k.startswith(EXTENSIBLE) or (mine and k.startswith(mine))}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:10]


def first_difference(stored: dict[str, str], current: dict[str, str]) -> tuple[str, str, str] | None:
    """(field, stored value, current value) of the first field that changed, in `current`'s order."""
    for key, value in current.items():
        if key in stored and stored[key] != value:
            return key, stored[key], value
        if key not in stored and not key.startswith(EXTENSIBLE):
            return key, "(not recorded)", value
    for key, value in stored.items():
        if key not in current and not key.startswith(EXTENSIBLE):
            return key, value, "(not recorded)"
    return None


def accuracy_key(identity: dict[str, str], config: Config, point: TrialPoint) -> str:
    """What a score depends on that is known before loading: the weights and how they are
    quantized and run, and the eval itself. The trial adds what it decides at load time
    (`scored_key`), e.g. whether llama.cpp repacked the weights.

    Log-likelihood tasks: draft, batch size and CPU thread count do not change what is scored, so
    they are not in it. Generative tasks: greedy text parts at near-ties when the shape of the
    passes or the thread count changes (llama.cpp, SmolLM2 Q4_1, 8 GSM8K items: 5 texts differed
    between 1 and 8 sequences per pass, 1 between 1 and 2 threads, each at a top-two logit margin of
    0.01-0.13; docs/metrics.md), so the key also holds the trial's thread count and, for engines
    whose generation runs at the trial's batch (vLLM: max_num_seqs), its batch size. llama.cpp and
    transformers generate at accuracy.batch_size, which is in the key. Per engine on MBPP (Qwen
    0.5B, scripts/results/accuracy_key_generative.txt) nothing left out changed a generated program,
    and vLLM's batch and threads did. A drafted trial on an engine
    whose eval generates with the draft (GENERATES_WITH_DRAFT) is scored on its drafted output, so
    its draft is in the key too.
    """
    spec = ENGINES.get(point.engine)
    parts: dict[str, Any] = {
        "weights": identity["model.weights"],
        "tokenizer": identity["model.tokenizer"],
        "engine": point.engine,
        "engine_versions": {p: _version(p) for p in spec.version_packages},
        "engine_settings": spec.accuracy_settings(config, point),
        "quantization": point.quantization,
        "device": point.hardware_spec.kind,
        # Kernels differ between machines (AVX2 or AVX-512 paths, GPU models), and so may scores.
        "machine": _machine_of(identity, point.hardware),
        "lm_eval": identity["lib.lm_eval"],
        "tasks": identity["accuracy.tasks"],
        **{k: identity[f"accuracy.{k}"] for k in ("limit", "num_fewshot", "metric", "batch_size")},
    }
    if generative(config):
        parts["threads"] = point.hardware_spec.threads
        if point.engine in GENERATES_AT_TRIAL_BATCH:
            parts["batch_size"] = point.batch_size
        if scored_as_generated(config, point):  # the drafted output is what is scored
            parts["draft"] = [point.draft, point.draft_tokens]
    return json.dumps(parts, sort_keys=True)


def _machine_of(identity: dict[str, str], target: str) -> dict[str, str]:
    """The machine fields of one target. Every target of one identity is this worker's machine, so
    a point outside them (seen only in tests) takes the first target's."""
    targets = [k.split(".")[1] for k in identity if k.startswith("machine.") and k.count(".") == 2]
    if not targets:
        return {}
    use = target if target in targets else targets[0]
    # The energy meter does not change a score: two targets of one machine share their accuracy.
    fields = {k.rsplit(".", 1)[1]: v for k, v in identity.items() if k.startswith(f"machine.{use}.")}
    return {k: v for k, v in fields.items() if k != "energy_meter"}


def scored_key(base: str, runtime: dict[str, Any]) -> str:
    """The full accuracy key: `accuracy_key` plus the engine's load-time choices that change logits."""
    return json.dumps({"base": json.loads(base), "runtime": runtime}, sort_keys=True)


def base_of(key: str) -> str:
    """The `accuracy_key` part of a full key."""
    return json.dumps(json.loads(key)["base"], sort_keys=True)
