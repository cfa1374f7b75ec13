"""Hooks of the mbpp_autoinfer lm-eval task (mbpp_autoinfer.yaml beside this file).

pass@1 of one greedy generation per item: the generated program, the item's test_setup_code and its
three asserts run in one confined process (autoinfer.evaluators.code_exec); the item scores 1.0 if
that process runs to its end, 0.0 otherwise (an assert fails, an error, a timeout). Nothing runs
unless AUTOINFER_ALLOW_CODE_EXECUTION=1: both hooks that execute raise CodeExecutionNotAllowed.

lm-eval loads this file by its path (`!function utils.x`), as a module of its own.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from autoinfer.evaluators.code_exec import (
    ExecResult,
    program_with_tests,
    require_code_execution_allowed,
    run_program,
    run_programs,
)

log = logging.getLogger(__name__)

# The published split (Austin et al. 2021): test 11-510; 1-10 for prompts (the shots are 2, 3, 4).
FIRST_TEST_ID, LAST_TEST_ID = 11, 510

# Results of the programs execute_all ran, by source, taken by process_results one item at a time.
_done: dict[str, ExecResult] = {}
_done_lock = threading.Lock()


def mbpp_test_split(dataset: Any) -> Any:
    """process_docs: the rows of the test split (task ids 11-510) of a file holding all of MBPP."""
    return dataset.filter(lambda row: FIRST_TEST_ID <= int(row["task_id"]) <= LAST_TEST_ID)


def item_source(doc: dict[str, Any], program: str) -> str:
    """What runs for one item: the program, then the item's setup code, then its asserts."""
    return program_with_tests(program, doc["test_list"], doc.get("test_setup_code") or "")


def execute_all(resps: Sequence[Sequence[str]], docs: Sequence[dict[str, Any]]) -> Sequence[Sequence[str]]:
    """Custom filter: run every item's program in parallel ahead of scoring; responses pass unchanged."""
    require_code_execution_allowed()
    sources = list(dict.fromkeys(item_source(doc, r) for doc, rs in zip(docs, resps, strict=True) for r in rs))
    results = run_programs(sources)
    with _done_lock:
        _done.update(zip(sources, results, strict=True))
    if results:
        reasons = Counter(r.reason if not r.reason.startswith("error") else "error" for r in results)
        guards = sorted(set.intersection(*(set(r.guards) for r in results)))
        log.info("mbpp_autoinfer: ran %d programs: %s; confinement: %s", len(results), dict(reasons), guards)
    return resps


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """pass@1 of the item: 1.0 if its program and tests ran to the end, else 0.0."""
    require_code_execution_allowed()
    source = item_source(doc, results[0])
    with _done_lock:
        outcome = _done.pop(source, None)
    if outcome is None:  # not run ahead (another filter, a direct call): run it now
        outcome = run_program(source)
    return {"pass_at_1": 1.0 if outcome.passed else 0.0}


def fewshot_samples() -> list[dict[str, Any]]:
    """The 3 shots of lm-eval's own mbpp task (its utils.list_fewshot_samples), verbatim: MBPP task
    ids 2, 3 and 4 as in data/mbpp/mbpp.jsonl (a test checks that they match the file)."""
    return [
        {
            "task_id": 2,
            "text": "Write a function to find the similar elements from the given two tuple lists.",
            "code": (
                "def similar_elements(test_tup1, test_tup2):\r\n"
                "  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
                "  return (res) "
            ),
            "test_list": [
                "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
            ],
            "is_fewshot": True,
        },
        {
            "task_id": 3,
            "text": "Write a python function to identify non-prime numbers.",
            "code": (
                "import math\r\n"
                "def is_not_prime(n):\r\n"
                "    result = False\r\n"
                "    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
                "        if n % i == 0:\r\n"
                "            result = True\r\n"
                "    return result"
            ),
            "test_list": [
                "assert is_not_prime(2) == False",
                "assert is_not_prime(10) == True",
                "assert is_not_prime(35) == True",
            ],
            "is_fewshot": True,
        },
        {
            "task_id": 4,
            "text": (
                "Write a function to find the largest integers from a given list of numbers using heap queue algorithm."
            ),
            "code": (
                "import heapq as hq\r\n"
                "def heap_queue_largest(nums,n):\r\n"
                "  largest_nums = hq.nlargest(n, nums)\r\n"
                "  return largest_nums"
            ),
            "test_list": [
                "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
                "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
                "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
            ],
            "is_fewshot": True,
        },
    ]
