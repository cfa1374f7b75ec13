"""The engines of a measured grid side by side, as the README and docs/engines.md show them: one
row per point (engine, level, draft, batch, hardware) with tokens/s, correct tokens per joule and accuracy, sorted
by batch and then correct tokens per joule; printed last, each batch size's best point per engine.

    python scripts/engine_table.py scripts/results/smollm2-three-engines-grid-trials.csv

Input: a trials.csv written by `autoinfer pareto --csv`. Energy is whatever the trials' meter was
(its `energy_source` column is printed with each row); rows of different meters are refused.
"""

from __future__ import annotations

import argparse
import csv


def level(row: dict[str, str]) -> str:
    """The weights' level, with vLLM's compile mode where the trial has one (eager or compiled)."""
    mode = row.get("compile_mode") or ""
    return f"{row['quantization']} {mode}" if mode else row["quantization"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    args = ap.parse_args()
    with open(args.csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("tokens_per_s") and r.get("correct_tokens_per_j")]
    meters = {r["energy_source"] for r in rows}
    if len(meters) > 1:
        raise SystemExit(f"{args.csv}: trials of different energy meters ({', '.join(sorted(meters))}) do not rank")
    rows.sort(key=lambda r: (int(r["batch_size"]), -float(r["correct_tokens_per_j"])))
    print("| batch | engine | level | draft | hardware | tokens/s | correct tokens/J | accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{float(r['accuracy']):.2f} ± {float(r['accuracy_stderr']):.2f}"
        point = " | ".join((r["batch_size"], r["engine"], level(r), r["draft"], r["hardware"]))
        print(f"| {point} | {float(r['tokens_per_s']):.1f} | {float(r['correct_tokens_per_j']):.3g} | {acc} |")
    print(f"\nenergy: {', '.join(meters)}; {len(rows)} points; best per batch size and engine (correct tokens/J):")
    for batch in sorted({int(r["batch_size"]) for r in rows}):
        best: dict[str, dict[str, str]] = {}
        for r in rows:
            if int(r["batch_size"]) == batch and r["engine"] not in best:
                best[r["engine"]] = r  # rows are sorted best first within a batch
        cells = [
            f"{e} {level(r)} {r['draft']} {r['hardware']} {float(r['correct_tokens_per_j']):.3g}"
            for e, r in best.items()
        ]
        print(f"  batch {batch}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
