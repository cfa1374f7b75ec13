"""Found vs default, and each grid's best point, under the energy estimate with its static share.

The figures in scripts/results/bench_gain_*.json and the grids' trials CSVs were measured under the
estimate that charged only busy CPU seconds (10 W per busy core). The estimate now also charges the
target's cores a static share over wall time (energy.cpu_static_watts_per_core, 5 W by default):

    E' = E + wall_s x cores x static W/core        (per trial; the CPU-seconds term is unchanged)

This recomputes from what each trial stored; nothing is measured again:
- bench_gain: each repeat's energy_j and wall_s (the wall time of the measured batches, which the
  meter's window holds plus a few milliseconds between batches), and the target's cores;
- grids: j_per_token and tokens_per_s (wall_s / tokens = 1 / tokens_per_s), so the static share per
  token is cores x W / tokens_per_s.
Transformers and llama.cpp run in the trial's own process, so the stored CPU seconds were already
the whole tree's. Usage: python scripts/recompute_static_energy.py [--static-w 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GAINS = {"SmolLM2-135M": "bench_gain_smollm2.json", "Gemma-3-270M": "bench_gain_gemma3.json",
         "Qwen2.5-Coder-1.5B": "bench_gain_qwen.json"}  # fmt: skip
GRIDS = {"SmolLM2-135M": "smollm2-cpu-grid-trials.csv", "Gemma-3-270M": "gemma3-270m-cpu-grid-trials.csv",
         "Qwen2.5-Coder-1.5B": "qwen2.5-coder-1.5b-cpu-grid-trials.csv"}  # fmt: skip
CORES_HERE = 2  # `cpu` on the 2-core VM the figures were measured on


def cores(hardware: str) -> int:
    return int(hardware.split(":")[1]) if ":" in hardware else CORES_HERE


def ctpj(m: dict[str, float], n_cores: int, static_w: float) -> float:
    return m["accuracy"] * m["generated_tokens"] / (m["energy_j"] + m["wall_s"] * n_cores * static_w)


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def gain(name: str, static_w: float) -> dict[str, object]:
    d = json.loads((RESULTS / GAINS[name]).read_text())
    fc, dc = cores(d["found"]["hardware"]), cores(d["default"]["hardware"])
    pairs = list(zip(d["found_metrics"], d["default_metrics"], strict=True))
    new = [ctpj(f, fc, static_w) / ctpj(g, dc, static_w) for f, g in pairs]
    return {"measured": d["date"], "machine": d["machine"], "found": d["found"], "default": d["default"],
            "old_gain": spread(d["gain"]), "new_gain": spread(new), "speed": spread(d["speed"]),
            "found_ctpj": spread([ctpj(f, fc, static_w) for f, _ in pairs]),
            "default_ctpj": spread([ctpj(g, dc, static_w) for _, g in pairs])}  # fmt: skip


def label(row: dict[str, str]) -> str:
    draft = "" if row["draft"] == "none" else f" {row['draft']}"
    return f"{row['engine']} {row['quantization']}{draft} b{row['batch_size']} {row['hardware']}"


def grid(name: str, static_w: float) -> dict[str, object]:
    rows = [r for r in csv.DictReader((RESULTS / GRIDS[name]).open()) if r["correct_tokens_per_j"]]
    ranked = []
    for r in rows:
        jpt = float(r["j_per_token"]) + cores(r["hardware"]) * static_w / float(r["tokens_per_s"])
        ranked.append((float(r["accuracy"]) / jpt, float(r["correct_tokens_per_j"]), label(r)))
    new_order = sorted(ranked, reverse=True)
    old_best = max(ranked, key=lambda x: x[1])
    return {"points": len(rows), "old_best": old_best[2], "old_best_old_ctpj": old_best[1],
            "new_best": new_order[0][2], "new_top3": [(lab, round(v, 4)) for v, _, lab in new_order[:3]],
            "old_best_new_rank": 1 + [lab for _, _, lab in new_order].index(old_best[2])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--static-w", type=float, default=5.0, help="static watts per core of the target")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    out: dict[str, object] = {"static_w_per_core": args.static_w, "busy_w_per_core": 10.0, "how": "recomputed"}
    print(f"Static share {args.static_w:g} W per target core over wall time, on top of 10 W per busy core.")
    print("Recomputed from stored CPU and wall seconds; nothing re-measured.\n")
    for name in GAINS:
        g, r = gain(name, args.static_w), grid(name, args.static_w)
        out[name] = {"gain": g, "grid": r}
        og, ng, sp = g["old_gain"], g["new_gain"], g["speed"]
        assert isinstance(og, dict) and isinstance(ng, dict) and isinstance(sp, dict)
        print(f"{name} (measured {g['measured']}, {g['machine']}):")
        print(f"  found vs default: {ng['median']:.1f}x [{ng['min']:.1f}, {ng['max']:.1f}] correct tok/J "
              f"(busy-only estimate: {og['median']:.1f}x; tok/s {sp['median']:.1f}x)")  # fmt: skip
        print(f"  grid of {r['points']} points: best was {r['old_best']}; now {r['new_best']} "
              f"(the old best ranks #{r['old_best_new_rank']}); top 3 now {r['new_top3']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
