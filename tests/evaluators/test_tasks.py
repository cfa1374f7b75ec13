"""GSM8K and MBPP run by lm-eval from the files in data/, with nothing fetched: the tasks are built
the way autoinfer builds them (TaskManager with autoinfer's include_path, task_spec re-pointing a
task at local files) while every socket connection fails, and scored through lm-eval's own
evaluator on canned answers (no model): the references score 1, wrong answers 0."""

from __future__ import annotations

import ast
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import TaskConfig
from autoinfer.evaluators.accuracy import task_spec
from autoinfer.evaluators.code_exec import ALLOW_ENV, CodeExecutionNotAllowed
from autoinfer.evaluators.tasks import TASKS_DIR
from autoinfer.evaluators.tasks.mbpp import utils as mbpp_utils
from tests.evaluators.test_accuracy import canned

REPO = Path(__file__).resolve().parents[2]
GSM8K = REPO / "data" / "gsm8k" / "test.jsonl"
MBPP = REPO / "data" / "mbpp" / "mbpp.jsonl"
MBPP_SHA256 = "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class _Paths:
    """The one thing task_spec asks of a Config: resolving a data_files path."""

    def resolve(self, p: str) -> Path:
        return Path(p)


def _no_network(*args: object, **kwargs: object) -> None:
    raise OSError("network use in an offline test")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        yield


@pytest.fixture(scope="module")
def manager(offline: None) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def _spec(manager: Any, name: str, path: Path) -> Any:
    return task_spec(TaskConfig(name=name, data_files={"test": str(path)}), _Paths(), manager)  # type: ignore[arg-type]


def _evaluate(manager: Any, specs: list[Any], answer: Any, limit: int = 3) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=canned(answer),
        tasks=specs,
        task_manager=manager,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        confirm_run_unsafe_code=True,
    )
    assert out is not None
    return out


def test_shipped_files() -> None:
    gsm8k = _rows(GSM8K)
    assert len(gsm8k) == 1319 and all(set(r) == {"question", "answer"} and "#### " in r["answer"] for r in gsm8k)
    assert "MIT License" in (GSM8K.parent / "LICENSE").read_text()
    assert hashlib.sha256(MBPP.read_bytes()).hexdigest() == MBPP_SHA256
    mbpp = _rows(MBPP)
    assert [r["task_id"] for r in mbpp] == list(range(1, 975))
    for readme in (GSM8K.parent / "README.md", MBPP.parent / "README.md"):
        assert "Licence" in readme.read_text()
    assert MBPP_SHA256 in (MBPP.parent / "README.md").read_text()


def test_gsm8k_from_local_files_both_filters(manager: Any) -> None:
    from lm_eval.api.registry import get_metric

    spec = _spec(manager, "gsm8k_cot", GSM8K)
    assert spec["dataset_path"] == "json" and spec["test_split"] == "test"
    assert spec["fewshot_config"]["samples"] and spec["num_fewshot"] == 8  # shots in the YAML, no train split
    # lm-eval's exact_match is its own local function, not evaluate.load("exact_match") from the hub.
    assert get_metric("exact_match").__module__ == "lm_eval.api.metrics"

    def final(doc: dict[str, Any]) -> str:
        return doc["answer"].split("####")[-1].strip()

    right = _evaluate(manager, [spec], lambda d: f"Some steps. The answer is {final(d)}.")["results"]["gsm8k_cot"]
    assert right["exact_match,strict-match"] == 1.0 and right["exact_match,flexible-extract"] == 1.0
    wrong = _evaluate(manager, [spec], lambda d: f"The answer is {int(final(d).replace(',', '')) + 1}.")
    assert wrong["results"]["gsm8k_cot"]["exact_match,strict-match"] == 0.0
    # strict-match wants "The answer is N."; flexible-extract takes the last number in the text.
    loose = _evaluate(manager, [spec], lambda d: f"So it is {final(d)}")["results"]["gsm8k_cot"]
    assert loose["exact_match,strict-match"] == 0.0 and loose["exact_match,flexible-extract"] == 1.0


def test_mbpp_from_local_files_pass_at_1(manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "1")
    entry = manager.task_index["mbpp_autoinfer"]
    assert Path(entry.yaml_path).parent == TASKS_DIR / "mbpp"
    spec = _spec(manager, "mbpp_autoinfer", MBPP)
    right = _evaluate(manager, [spec], lambda d: d["code"])
    assert right["results"]["mbpp_autoinfer"]["pass_at_1,none"] == 1.0
    assert [s["doc"]["task_id"] for s in right["samples"]["mbpp_autoinfer"]] == [11, 12, 13]
    prompt, gen_kwargs = right["samples"]["mbpp_autoinfer"][0]["arguments"][0]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: Write a function to find")
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3 and prompt.endswith("[BEGIN]\n")
    assert "remove first and last occurrence of a given character" in prompt  # task 11, after the 3 shots
    assert gen_kwargs == {"until": ["[DONE]"], "do_sample": False, "max_gen_toks": 256}
    wrong = _evaluate(manager, [spec], lambda d: "def nothing():\n    pass\n")
    assert wrong["results"]["mbpp_autoinfer"]["pass_at_1,none"] == 0.0


def test_mbpp_task_367_runs_its_setup_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "1")
    doc = next(r for r in _rows(MBPP) if r["task_id"] == 367)
    assert doc["test_setup_code"]
    assert mbpp_utils.process_results(doc, [doc["code"]]) == {"pass_at_1": 1.0}


def test_mbpp_refuses_without_the_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    doc = _rows(MBPP)[10]
    with pytest.raises(CodeExecutionNotAllowed, match="allow_code_execution"):
        mbpp_utils.execute_all([[doc["code"]]], [doc])
    with pytest.raises(CodeExecutionNotAllowed):
        mbpp_utils.process_results(doc, [doc["code"]])


def test_mbpp_prompt_is_lm_evals_own() -> None:
    """Same template, stops, shots and split as lm-eval's `mbpp`; the shots are MBPP rows 2-4."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    theirs_dir = Path(lm_eval.__file__).parent / "tasks" / "mbpp"
    theirs = load_yaml(theirs_dir / "mbpp.yaml", resolve_func=False)
    ours = load_yaml(TASKS_DIR / "mbpp" / "mbpp_autoinfer.yaml", resolve_func=False)
    for key in ("doc_to_text", "doc_to_target", "target_delimiter", "num_fewshot", "test_split", "output_type"):
        assert ours[key] == theirs[key], key
    assert ours["generation_kwargs"]["until"] == theirs["generation_kwargs"]["until"] == ["[DONE]"]
    assert ours["generation_kwargs"]["do_sample"] is False
    assert ours["fewshot_config"]["sampler"] == theirs["fewshot_config"]["sampler"] == "first_n"
    # lm-eval's shots, read from its utils.py without importing it (that import loads from the hub).
    tree = ast.parse((theirs_dir / "utils.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    assert ret.value is not None
    assert mbpp_utils.fewshot_samples() == ast.literal_eval(ret.value)
    rows = {r["task_id"]: r for r in _rows(MBPP)}
    for shot in mbpp_utils.fewshot_samples():
        row = rows[shot["task_id"]]
        assert (shot["text"], shot["code"], shot["test_list"]) == (row["text"], row["code"], row["test_list"])


def test_task_name_is_not_lm_evals() -> None:
    import lm_eval

    builtin = Path(lm_eval.__file__).parent / "tasks"
    assert not any("mbpp_autoinfer" in p.read_text(errors="replace") for p in builtin.rglob("*.yaml"))
