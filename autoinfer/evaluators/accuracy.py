"""Accuracy through lm-evaluation-harness, on the engine's own loaded (quantized) model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from autoinfer.config import Config, TaskConfig
from autoinfer.errors import TrialError
from autoinfer.registry import did_you_mean


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: float  # mean over tasks of the configured metric (acc by default)
    stderr: float
    samples: int  # items scored, summed over tasks
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per task, each item's score in doc order: lets two trials be compared on the same items.
    items: dict[str, list[float]] = field(default_factory=dict)
    key: str = ""  # everything the score depends on (autoinfer.identity.accuracy_key)
    reused_from_trial: int | None = None  # set when this trial reused another trial's evaluation


def task_spec(task: TaskConfig, config: Config, manager: Any) -> str | dict[str, Any]:
    """A registered lm-eval task, re-pointed at local JSONL files when `data_files` is given.

    The task keeps its own prompt, target and metric definitions (read from its registered YAML);
    only where the rows come from changes: the `json` builder on local files instead of the hub.
    """
    entry = manager.task_index.get(task.name)
    if entry is None:
        raise TrialError(f"accuracy.tasks: lm-eval task {did_you_mean(task.name, manager.all_tasks)}")
    if not task.data_files:
        return task.name
    if not entry.yaml_path:
        raise TrialError(f"accuracy.tasks: {task.name} is not defined by a YAML file; data_files cannot apply")
    # lm-eval >= 0.4.10 keeps its include-resolving YAML loader here.
    from lm_eval.tasks._yaml_loader import load_yaml

    spec: dict[str, Any] = load_yaml(entry.yaml_path, resolve_func=True)
    for key in ("tag", "group"):
        spec.pop(key, None)
    files = {split: str(config.resolve(p).resolve()) for split, p in task.data_files.items()}
    spec.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    for key, split in (("training_split", "train"), ("validation_split", "validation"), ("test_split", "test")):
        if spec.get(key) and split not in files:
            spec[key] = None  # that split is not among the local files
    return spec


def evaluate_accuracy(lm: Any, config: Config) -> AccuracyResult:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from autoinfer.evaluators.tasks import TASKS_DIR

    acc = config.accuracy
    manager = TaskManager(include_path=str(TASKS_DIR))  # lm-eval's tasks and autoinfer's own (mbpp_autoinfer)
    specs = [task_spec(t, config, manager) for t in acc.tasks]
    out = simple_evaluate(
        model=lm,
        tasks=specs,
        task_manager=manager,
        num_fewshot=acc.num_fewshot,
        limit=acc.limit,
        log_samples=True,  # per-item scores, for paired comparisons between trials
        bootstrap_iters=1000,
    )
    if not out or "results" not in out:
        raise TrialError("lm-eval returned no results")
    per_task: dict[str, dict[str, float]] = {}
    key = f"{acc.metric},none"
    for t in acc.tasks:
        res = out["results"].get(t.name)
        if res is None or key not in res:
            raise TrialError(f"lm-eval result for {t.name} has no {acc.metric!r} (has {sorted(res or {})})")
        se = res.get(f"{acc.metric}_stderr,none")
        n = out.get("n-samples", {}).get(t.name, {}).get("effective", 0)
        per_task[t.name] = {
            "value": float(res[key]),
            "stderr": float(se) if isinstance(se, (int, float)) else float("nan"),
            "samples": int(n),
        }
    items = {}
    for t in acc.tasks:
        rows = sorted(out.get("samples", {}).get(t.name, []), key=lambda r: r["doc_id"])
        items[t.name] = [float(r[acc.metric]) for r in rows if isinstance(r.get(acc.metric), (int, float))]
    values = [v["value"] for v in per_task.values()]
    ses = [v["stderr"] for v in per_task.values()]
    k = len(values)
    return AccuracyResult(
        accuracy=sum(values) / k,
        stderr=math.sqrt(sum(s * s for s in ses)) / k,  # tasks are independent samples
        samples=int(sum(v["samples"] for v in per_task.values())),
        per_task=per_task,
        items=items,
    )
