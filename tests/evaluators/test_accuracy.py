from __future__ import annotations

from pathlib import Path

import pytest

from autoinfer.config import parse_config
from autoinfer.errors import TrialError
from autoinfer.evaluators.accuracy import evaluate_accuracy, task_spec
from tests.conftest import ARC_DIR


def cfg(tasks: list[object], **acc: object):  # type: ignore[no-untyped-def]
    return parse_config({"model": {"source": "m"}, "accuracy": {"tasks": tasks, **acc}})


def test_registered_task_is_repointed_at_local_files() -> None:
    from lm_eval.tasks import TaskManager

    c = cfg([{"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}])
    spec = task_spec(c.accuracy.tasks[0], c, TaskManager())
    assert isinstance(spec, dict)
    assert spec["task"] == "arc_easy" and spec["dataset_path"] == "json"
    assert spec["dataset_kwargs"]["data_files"]["test"].endswith("test.jsonl")
    # lm-eval's own arc_easy prompt and target survive
    assert spec["doc_to_text"].startswith("Question:") and "answerKey" in spec["doc_to_target"]
    assert spec["training_split"] is None and spec["validation_split"] is None and spec["test_split"] == "test"


def test_unknown_task_has_a_suggestion() -> None:
    from lm_eval.tasks import TaskManager

    c = cfg(["arc_eazy"])
    with pytest.raises(TrialError, match="did you mean 'arc_easy'"):
        task_spec(c.accuracy.tasks[0], c, TaskManager())


def test_tiny_model_on_real_arc_items(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = cfg([{"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}], limit=8, batch_size=8)
    lm = HFLM(
        pretrained=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
        batch_size=8,
    )
    r = evaluate_accuracy(lm, c)
    assert r.samples == 8
    assert r.accuracy in {i / 8 for i in range(9)}  # a mean over 8 scored items
    assert r.stderr > 0
    assert r.per_task["arc_easy"]["samples"] == 8
    # Item scores in doc order, consistent with the aggregate lm-eval reported.
    assert len(r.items["arc_easy"]) == 8 and set(r.items["arc_easy"]) <= {0.0, 1.0}
    assert sum(r.items["arc_easy"]) / 8 == pytest.approx(r.accuracy)
