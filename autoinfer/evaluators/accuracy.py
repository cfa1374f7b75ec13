"""Accuracy through lm-evaluation-harness, on the engine's own loaded (quantized) model.

Which result of a task feeds `accuracy` (`ranked_metric`): the task's own `metric`, else
accuracy.metric, else the task's default: `acc` where the task reports it (multiple choice, as
before), else its first higher-is-better metric, under its first filter (gsm8k_cot:
exact_match,strict-match; mbpp_autoinfer: pass_at_1,none). Every other result of the task is kept
beside it (both GSM8K filters), and for generative tasks each item's generated text.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoinfer.config import AccuracyConfig, Config, TaskConfig, code_task_refusal
from autoinfer.errors import TrialError
from autoinfer.registry import did_you_mean

# Metrics lm-eval reports where lower is better (its registry's higher_is_better False).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"})


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: float  # mean over tasks of each task's ranked metric
    stderr: float
    samples: int  # items scored, summed over tasks
    # Per task: value, stderr and samples of the ranked metric, and every numeric result lm-eval
    # reported under its own name ("exact_match,flexible-extract", its "_stderr" beside it).
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per task, each item's score in doc order: lets two trials be compared on the same items.
    items: dict[str, list[float]] = field(default_factory=dict)
    key: str = ""  # everything the score depends on (autoinfer.identity.accuracy_key)
    reused_from_trial: int | None = None  # set when this trial reused another trial's evaluation
    # Per task, the lm-eval result that fed `accuracy` ("exact_match,strict-match").
    metrics: dict[str, str] = field(default_factory=dict)
    # Generative tasks: per task, per item in doc order, what the model generated and how it scored
    # (doc_id, text, tokens, score, and per filter the extracted answer and its scores).
    generations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # What the evaluation itself cost, where it ran (a reusing trial carries the original's): wall
    # seconds, and energy by the trial's meter (energy_source label beside it; None: not measured).
    eval_s: float = 0.0
    eval_energy_j: float | None = None
    eval_energy_source: str = ""


def task_facts(cfg: Mapping[str, Any] | None, kind: str = "TASK") -> dict[str, Any]:
    """What autoinfer reads of a task's definition (lm-eval's TaskManager entry config, includes
    resolved): the metrics it reports (None where its YAML does not say), those where higher is
    better, its filters, its own num_fewshot, whether it runs code, whether it generates."""
    cfg = cfg or {}
    key = {"TASK": "metric_list", "GROUP": "aggregate_metric_list"}.get(kind)
    metrics: list[str] | None = None
    higher: list[str] = []
    if key is not None and (kind != "TASK" or key in cfg):
        items = cfg.get(key) or []
        items = [items] if isinstance(items, Mapping) else items
        names = [m.get("metric") if isinstance(m, Mapping) else None for m in items]
        if all(isinstance(n, str) and n.isidentifier() for n in names):  # a !function metric: not known here
            metrics = [str(n) for n in names]
            higher = [str(m["metric"]) for m in items if m.get("higher_is_better", m["metric"] not in LOWER_IS_BETTER)]
    filters = [str(f["name"]) for f in cfg.get("filter_list") or [] if isinstance(f, Mapping) and "name" in f]
    shots = cfg.get("num_fewshot")
    return {
        "metrics": metrics,
        "higher": higher,
        "filters": filters or ["none"],
        "fewshot": shots if isinstance(shots, int) else None,
        "unsafe": bool(cfg.get("unsafe_code", False)),
        "generative": cfg.get("output_type") == "generate_until",
    }


def entry_facts(entry: Any) -> dict[str, Any]:
    """task_facts of an lm-eval TaskManager index entry."""
    kind = getattr(getattr(entry, "kind", None), "name", "UNKNOWN")  # lm_eval.tasks._index.Kind
    return task_facts(getattr(entry, "cfg", None), kind)


def ranked_metric(task: TaskConfig, acc: AccuracyConfig, facts: Mapping[str, Any] | None) -> str:
    """The lm-eval result ("metric,filter") that feeds accuracy for this task."""
    f = facts or task_facts(None)
    name = task.metric or acc.metric
    if name is None:
        reported = f["metrics"]
        if reported is None or "acc" in reported or not f["higher"]:
            name = "acc"  # what accuracy.metric meant before it could be per task
        else:
            name = f["higher"][0]
    return name if "," in name else f"{name},{f['filters'][0]}"


def effective_shots(acc: AccuracyConfig, facts: Mapping[str, Any] | None) -> int:
    """Few-shot examples per item as lm-eval will run them: the task's own where accuracy.num_fewshot
    is unset (none: 0); lm-eval keeps a task that sets num_fewshot: 0 itself at 0 whatever it is asked."""
    own = (facts or {}).get("fewshot")
    if acc.num_fewshot is None:
        return own or 0
    return 0 if own == 0 else acc.num_fewshot


def short(metric: str) -> str:
    """A result name as written before results had filters: acc,none -> acc."""
    return metric.removesuffix(",none")


def task_spec(task: TaskConfig, config: Config, manager: Any) -> str | dict[str, Any]:
    """A registered lm-eval task, re-pointed at local JSONL files when `data_files` is given.

    The task keeps its own prompt, target and metric definitions (read from its registered YAML);
    only where the rows come from changes: the `json` builder on local files instead of the hub,
    and, with `max_gen_toks`, how many tokens each item may generate.
    """
    entry = manager.task_index.get(task.name)
    if entry is None:
        raise TrialError(f"accuracy.tasks: lm-eval task {did_you_mean(task.name, manager.all_tasks)}")
    if not task.data_files and task.max_gen_toks is None:
        return task.name
    if not entry.yaml_path:
        raise TrialError(f"accuracy.tasks: {task.name} is not defined by a YAML file; data_files cannot apply")
    # lm-eval >= 0.4.10 keeps its include-resolving YAML loader here.
    from lm_eval.tasks._yaml_loader import load_yaml

    spec: dict[str, Any] = load_yaml(entry.yaml_path, resolve_func=True)
    for key in ("tag", "group"):
        spec.pop(key, None)
    if task.data_files:
        files = {split: str(config.resolve(p).resolve()) for split, p in task.data_files.items()}
        spec.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
        for key, split in (("training_split", "train"), ("validation_split", "validation"), ("test_split", "test")):
            if spec.get(key) and split not in files:
                spec[key] = None  # that split is not among the local files
    if task.max_gen_toks is not None:
        spec["generation_kwargs"] = {**(spec.get("generation_kwargs") or {}), "max_gen_toks": task.max_gen_toks}
    return spec


@contextlib.contextmanager
def code_execution(allowed: bool) -> Iterator[None]:
    """AUTOINFER_ALLOW_CODE_EXECUTION=1 while a code task is scored (this process and the programs'
    launchers read it), where the config allows it; the previous value afterwards."""
    from autoinfer.evaluators.code_exec import ALLOW_ENV

    before = os.environ.get(ALLOW_ENV)
    if allowed:
        os.environ[ALLOW_ENV] = "1"
    try:
        yield
    finally:
        if allowed:
            if before is None:
                os.environ.pop(ALLOW_ENV, None)
            else:
                os.environ[ALLOW_ENV] = before


def evaluate_accuracy(lm: Any, config: Config) -> AccuracyResult:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from autoinfer.evaluators.tasks import TASKS_DIR

    acc = config.accuracy
    manager = TaskManager(include_path=str(TASKS_DIR))  # lm-eval's tasks and autoinfer's own (mbpp_autoinfer)
    specs = [task_spec(t, config, manager) for t in acc.tasks]
    facts = {
        t.name: task_facts(manager.task_index[t.name].cfg, manager.task_index[t.name].kind.name) for t in acc.tasks
    }
    for t in acc.tasks:
        if facts[t.name]["unsafe"] and not acc.allow_code_execution:
            raise TrialError(f"accuracy: {code_task_refusal(t.name)}")
    ranked = {t.name: ranked_metric(t, acc, facts[t.name]) for t in acc.tasks}
    with code_execution(acc.allow_code_execution):
        out = simple_evaluate(
            model=lm,
            tasks=specs,
            task_manager=manager,
            num_fewshot=acc.num_fewshot,  # None: each task's own shots
            limit=acc.limit,
            log_samples=True,  # per-item scores, for paired comparisons between trials
            bootstrap_iters=1000,
            confirm_run_unsafe_code=acc.allow_code_execution,
        )
    if not out or "results" not in out:
        raise TrialError("lm-eval returned no results")
    return read_results(out, acc.tasks, ranked, lm)


def read_results(out: Mapping[str, Any], tasks: list[TaskConfig], ranked: Mapping[str, str], lm: Any) -> AccuracyResult:
    """The AccuracyResult of simple_evaluate's output (log_samples=True)."""
    per_task: dict[str, dict[str, float]] = {}
    items: dict[str, list[float]] = {}
    generations: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        key = ranked[t.name]
        metric, filt = key.split(",", 1)
        res = out["results"].get(t.name) or {}
        if key not in res:
            has = sorted(k for k in res if "," in k and "_stderr," not in k)
            raise TrialError(f"lm-eval result for {t.name} has no {key!r} (has {', '.join(has) or 'nothing'})")
        se = res.get(f"{metric}_stderr,{filt}")
        n = out.get("n-samples", {}).get(t.name, {}).get("effective", 0)
        every = {k: float(v) for k, v in res.items() if "," in k and _number(v)}
        per_task[t.name] = {
            **every,
            "value": float(res[key]),
            "stderr": float(se) if isinstance(se, (int, float)) else float("nan"),
            "samples": int(n),
        }
        rows = sorted(out.get("samples", {}).get(t.name, []), key=lambda r: r["doc_id"])
        # A task with several filters logs each item once per filter: the ranked filter's rows score it.
        mine = [r for r in rows if r.get("filter", "none") == filt]
        items[t.name] = [float(r[metric]) for r in mine if _number(r.get(metric))]
        if any(isinstance(_generated(r), str) for r in mine):
            generations[t.name] = _generations(rows, mine, metric, lm)
    values = [v["value"] for v in per_task.values()]
    ses = [v["stderr"] for v in per_task.values()]
    k = len(values)
    return AccuracyResult(
        accuracy=sum(values) / k,
        stderr=math.sqrt(sum(s * s for s in ses)) / k,  # tasks are independent samples
        samples=int(sum(v["samples"] for v in per_task.values())),
        per_task=per_task,
        items=items,
        metrics=dict(ranked),
        generations=generations,
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _generated(row: Mapping[str, Any]) -> Any:
    """The text a generate_until request produced (`resps`: per request, per repeat)."""
    resps = row.get("resps") or [[None]]
    first = resps[0]
    return first[0] if isinstance(first, list) and first else first


def _generations(rows: list[dict[str, Any]], mine: list[dict[str, Any]], metric: str, lm: Any) -> list[dict[str, Any]]:
    by_doc: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    out = []
    for r in mine:
        text = _generated(r)
        text = text if isinstance(text, str) else ""
        filters: dict[str, dict[str, Any]] = {}
        for f in by_doc[r["doc_id"]]:
            answer = f.get("filtered_resps") or [None]
            filters[str(f.get("filter", "none"))] = {
                "answer": answer[0] if isinstance(answer, list) and answer else answer,
                **{m: float(f[m]) for m in f.get("metrics", []) if _number(f.get(m))},
            }
        out.append(
            {
                "doc_id": r["doc_id"],
                "text": text,
                "tokens": _tokens(lm, text),
                "score": float(r[metric]) if _number(r.get(metric)) else None,
                "filters": filters,
            }
        )
    return out


def _tokens(lm: Any, text: str) -> int | None:
    """The generated text's length in the model's tokens (re-encoded: the stop string, cut off, is not in it)."""
    try:
        return len(lm.tok_encode(text, add_special_tokens=False))
    except (AttributeError, TypeError, NotImplementedError):  # an LM without its own tokenizer
        return None
