"""lm-eval task definitions of autoinfer's own, read from local files: pass TASKS_DIR to lm-eval's
TaskManager as include_path (`TaskManager(include_path=str(TASKS_DIR))`).

- mbpp/mbpp_autoinfer.yaml: MBPP's test split (task ids 11-510) in lm-eval's own `mbpp` prompt,
  scored pass@1 by running each item's tests on the generated program (code_exec.py, opt-in),
  instead of lm-eval's `mbpp`, whose metric loads `code_eval` from the Hugging Face hub on import.

GSM8K needs nothing here: lm-eval's own `gsm8k_cot` (8 worked examples in its YAML, no train split)
runs on data/gsm8k/test.jsonl through `data_files`, with lm-eval's local exact_match under its two
filters (strict-match, flexible-extract).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
