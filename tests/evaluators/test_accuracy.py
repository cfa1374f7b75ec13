from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


# --- generative tasks: GSM8K's two filters, MBPP's opt-in, shots, the ranked metric ----------------

REPO = Path(__file__).resolve().parents[2]
GSM8K = {"name": "gsm8k_cot", "data_files": {"test": str(REPO / "data" / "gsm8k" / "test.jsonl")}}
MBPP = {"name": "mbpp_autoinfer", "data_files": {"test": str(REPO / "data" / "mbpp" / "mbpp.jsonl")}}


def _no_network(*args: object, **kwargs: object) -> None:
    raise OSError("network use in an offline test")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)


def canned(answer: Any, seen: list[Any] | None = None) -> Any:
    """An lm-eval LM that answers each generate_until request with answer(doc), and records them."""
    from lm_eval.api.model import LM

    class Canned(LM):  # type: ignore[misc]
        def loglikelihood(self, requests: Any) -> Any:
            raise NotImplementedError

        def loglikelihood_rolling(self, requests: Any) -> Any:
            raise NotImplementedError

        def generate_until(self, requests: Any) -> list[str]:
            if seen is not None:
                seen.extend(requests)
            return [answer(r.doc) for r in requests]

        def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[str]:
            return text.split()

    return Canned()


def final(doc: dict[str, Any]) -> str:
    return str(doc["answer"].split("####")[-1].strip())


def test_gsm8k_records_both_filters_and_ranks_strict_match(offline: None) -> None:
    # Right, but not in the task's "The answer is N." form: flexible-extract credits it, strict-match does not.
    seen: list[Any] = []
    lm = canned(lambda d: f"Adding up, we get {final(d)}", seen)
    r = evaluate_accuracy(lm, cfg([GSM8K], limit=3))
    assert r.metrics == {"gsm8k_cot": "exact_match,strict-match"}
    t = r.per_task["gsm8k_cot"]
    assert r.accuracy == t["value"] == t["exact_match,strict-match"] == 0.0
    assert t["exact_match,flexible-extract"] == 1.0 and "exact_match_stderr,flexible-extract" in t
    assert r.items == {"gsm8k_cot": [0.0, 0.0, 0.0]}  # the ranked filter's rows only, one per item
    gens = r.generations["gsm8k_cot"]
    assert [g["doc_id"] for g in gens] == [0, 1, 2]
    assert gens[0]["text"] == "Adding up, we get 18" and gens[0]["tokens"] == 5 and gens[0]["score"] == 0.0
    assert gens[0]["filters"]["flexible-extract"] == {"answer": "18", "exact_match": 1.0}
    assert gens[0]["filters"]["strict-match"]["exact_match"] == 0.0
    # num_fewshot unset: the task's own 8 shots, not 0; greedy, with the YAML's stop strings.
    context, gen_kwargs = seen[0].args
    assert context.count("Q: ") == 9 and gen_kwargs["until"] == ["Q:", "</s>", "<|im_end|>"]
    assert gen_kwargs["do_sample"] is False


def test_a_task_can_rank_by_another_result_and_shots_can_be_set(offline: None) -> None:
    seen: list[Any] = []
    lm = canned(lambda d: f"Adding up, we get {final(d)}", seen)
    task = {**GSM8K, "metric": "exact_match,flexible-extract", "max_gen_toks": 32}
    r = evaluate_accuracy(lm, cfg([task], limit=2, num_fewshot=2))
    assert r.metrics == {"gsm8k_cot": "exact_match,flexible-extract"} and r.accuracy == 1.0
    assert r.items == {"gsm8k_cot": [1.0, 1.0]} and r.per_task["gsm8k_cot"]["exact_match,strict-match"] == 0.0
    context, gen_kwargs = seen[0].args
    assert context.count("Q: ") == 3 and gen_kwargs["max_gen_toks"] == 32  # 2 shots, then the item


def test_ranked_metric_defaults() -> None:
    from autoinfer.evaluators.accuracy import effective_shots, ranked_metric
    from autoinfer.preflight import task_index

    index = task_index()
    c = cfg(["arc_easy", "gsm8k_cot", "mbpp_autoinfer", "lambada_openai"], allow_code_execution=True)
    got = {t.name: ranked_metric(t, c.accuracy, index[t.name]) for t in c.accuracy.tasks}
    assert got == {"arc_easy": "acc,none", "gsm8k_cot": "exact_match,strict-match",
                   "mbpp_autoinfer": "pass_at_1,none", "lambada_openai": "acc,none"}  # fmt: skip
    assert [effective_shots(c.accuracy, index[t.name]) for t in c.accuracy.tasks] == [0, 8, 3, 0]
    c = cfg(["arc_easy", "gsm8k_cot"], metric="exact_match", num_fewshot=2)
    assert ranked_metric(c.accuracy.tasks[1], c.accuracy, index["gsm8k_cot"]) == "exact_match,strict-match"
    assert [effective_shots(c.accuracy, index[t.name]) for t in c.accuracy.tasks] == [2, 2]


def test_mbpp_runs_only_with_the_opt_in(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoinfer.errors import ConfigError
    from autoinfer.evaluators.code_exec import ALLOW_ENV

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(ConfigError) as e:
        cfg([MBPP])
    assert e.value.where == "accuracy.tasks[0].name" and "accuracy.allow_code_execution: true" in e.value.message
    allowed = cfg([MBPP], limit=2, allow_code_execution=True)
    # A config that got past validation without the opt-in is still refused where the code would run.
    off = allowed.model_copy(update={"accuracy": allowed.accuracy.model_copy(update={"allow_code_execution": False})})
    with pytest.raises(TrialError, match="allow_code_execution"):
        evaluate_accuracy(canned(lambda d: d["code"]), off)
    r = evaluate_accuracy(canned(lambda d: d["code"]), allowed)
    assert (
        r.metrics == {"mbpp_autoinfer": "pass_at_1,none"}
        and r.accuracy == 1.0
        and r.items["mbpp_autoinfer"] == [1.0, 1.0]
    )
    assert r.generations["mbpp_autoinfer"][0]["text"].startswith("def remove_Occ")
    assert ALLOW_ENV not in os.environ  # set for the scoring only
