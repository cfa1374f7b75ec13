"""The prompts a throughput run sends: a built-in mixed set, or the user's JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

from autoinfer.errors import TrialError
from autoinfer.evaluators.code_prompts import BUILTIN_CODE

# Short, varied requests: questions, rewriting, code and lists, so prompt lookup and drafts see
# both copy-heavy and open-ended text.
BUILTIN_CHAT = [
    "Explain in two sentences why the sky looks blue.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List five fruits that are rich in vitamin C.",
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "Rewrite this sentence in the passive voice: The cat chased the mouse across the yard.",
    "What is the difference between weather and climate?",
    "Give me a short recipe for pancakes.",
    "Translate to French: Where is the train station?",
    "What are the three states of matter? Describe each briefly.",
    "Write a haiku about autumn leaves.",
    "How does a refrigerator keep food cold?",
    "Name the planets of the solar system in order from the Sun.",
    "Correct the grammar: me and him goes to the store yesterday.",
    "What does a CPU cache do, in simple terms?",
    "Write a SQL query that counts the rows of a table named orders.",
    "Give three tips for sleeping better.",
]


BUILTIN_SETS: dict[str, list[str]] = {"builtin:chat": BUILTIN_CHAT, "builtin:code": BUILTIN_CODE}


def builtin_size(spec: str) -> int | None:
    """How many prompts a built-in set holds (None for a file, whose size preflight reads)."""
    return len(BUILTIN_SETS[spec]) if spec in BUILTIN_SETS else None


def load_prompts(spec: str, base_dir: Path) -> list[str]:
    if spec in BUILTIN_SETS:
        return list(BUILTIN_SETS[spec])
    if spec.startswith("builtin:"):
        raise TrialError(f"workload.prompts: unknown built-in set {spec!r} (known: {', '.join(BUILTIN_SETS)})")
    path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
    prompts = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    prompts.append(str(json.loads(line)["prompt"]))
                except (ValueError, KeyError, TypeError):
                    raise TrialError(f"{path}:{i}: expected a JSON object with a 'prompt' key") from None
    if not prompts:
        raise TrialError(f"{path}: no prompts")
    return prompts


def prompt_set(prompts: list[str], count: int | None) -> list[str]:
    """The fixed set every trial generates: the first `count` prompts (all when None)."""
    if count is not None and count > len(prompts):
        raise TrialError(f"workload.prompt_count is {count} but the prompt source holds {len(prompts)}")
    return prompts[:count] if count is not None else list(prompts)


def batches(prompts: list[str], batch_size: int) -> list[list[str]]:
    """The set in consecutive batches of B (the last one shorter when B does not divide it)."""
    return [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
