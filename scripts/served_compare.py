"""Served against offline on SmolLM2: read the three grid studies (scripts/grids/smollm2-served*.yaml)
and write what they measured and what each frontier picks.

    python scripts/served_compare.py [--out scripts/results/served_smollm2]

Questions answered, from the stored trials only (nothing is measured here):
- which configuration each served load point picks (most correct tokens per joule at the SLO), and
  which the offline study picks (most correct tokens per joule over static batches);
- how the offline pick does when served: its goodput and SLO attainment at each rate, and its
  correct tokens per joule against the served pick's;
- what the search cost: server starts per study and the wall time per measured second.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoinfer.config import load_config
from autoinfer.record import record_of, stage_seconds_of

GRIDS = Path(__file__).parent / "grids"
STUDIES = {"served": "smollm2-served.yaml", "offline": "smollm2-served-offline.yaml",
           "concurrency": "smollm2-served-concurrency.yaml"}  # fmt: skip
SERVED_COLS = ("goodput_rps", "slo_attainment", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s",
               "tokens_per_s", "tokens_per_s_per_user", "j_per_token", "correct_tokens_per_j",
               "other_cpu_pct")  # fmt: skip
OFFLINE_COLS = ("tokens_per_s", "ttft_p50_s", "latency_p95_s", "j_per_token", "accuracy", "correct_tokens_per_j",
                "other_cpu_pct")  # fmt: skip


def machine() -> str:
    """The CPU, as the trials' own records describe machines: model name and the units that matter."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    import os

    return f"{model}, {os.cpu_count()} cores, {' '.join(units)}"


def setup() -> str:
    """The served grid's load and SLO, in words (every served study here shares them)."""
    cfg = load_config(GRIDS / STUDIES["served"])
    s, wl = cfg.workload.served, cfg.workload
    assert s is not None
    return (f"each load point: {s.requests} requests after {s.warmup_requests} warm-up, {wl.max_new_tokens} tokens "
            f"each (ignore_eos), the builtin:chat prompts through the chat route; SLO ttft_s {s.slo.ttft_s} "
            f"tpot_s {s.slo.tpot_s}; servers on cpu:1, the load generator on the other core")  # fmt: skip


def rows(config_file: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    cfg = load_config(GRIDS / config_file)
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.search.storage)
    out, wall, measured, starts = [], 0.0, 0.0, 0
    done = study.get_trials(states=(TrialState.COMPLETE,))
    times = [t.datetime_start for t in done if t.datetime_start] + [
        t.datetime_complete for t in done if t.datetime_complete
    ]
    for t in done:
        rec = record_of(t)
        if rec is None:
            continue
        served = rec.provenance.served
        starts += 1 if served and not served.get("server_reused") else 0
        stages = stage_seconds_of(t)
        wall += sum(stages.values())
        measured += sum(v for k, v in stages.items() if k in ("served load", "throughput+energy", "accuracy"))
        p = rec.point
        out.append({"trial": t.number, "engine": p.engine, "level": p.quantization, "slots": p.batch_size,
                    "load": served.get("load", ""), "reused": served.get("server_reused"),
                    **{k: v for k, v in rec.metrics.items()}})  # fmt: skip
    span = f"{min(times):%Y-%m-%d %H:%M}-{max(times):%H:%M}" if times else "?"
    cost: dict[str, Any] = {
        "measured_at": span, "trials": float(len(out)), "server_starts": float(starts), "wall_s": wall,
        "measured_s": measured, "overhead": wall / measured if measured else float("nan"),
    }  # fmt: skip
    return out, cost


def best(rs: list[dict[str, Any]], key: str = "correct_tokens_per_j") -> dict[str, Any] | None:
    ok = [r for r in rs if r.get(key) is not None]
    return max(ok, key=lambda r: r[key]) if ok else None


def name(r: dict[str, Any]) -> str:
    return f"{r['engine']} {r['level']} {r['slots']} slots"


def table(rs: list[dict[str, Any]], cols: tuple[str, ...]) -> list[str]:
    head = ["configuration", "load", *cols]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in sorted(rs, key=lambda r: (r["engine"], r["slots"], r["load"])):
        cells = [name(r), str(r["load"]), *(f"{r[c]:.3g}" if isinstance(r.get(c), float) else "-" for c in cols)]
        lines.append(" | ".join(cells))
    return lines


def compare(served: list[dict[str, Any]], offline: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    pick = best(offline)
    lines, out = [], {"offline_pick": pick and name(pick), "by_load": {}}
    if pick is None:
        return ["no offline trial with correct_tokens_per_j"], out
    lines.append(f"offline pick (most correct tok/J over static batches): {name(pick)}, "
                 f"{pick['correct_tokens_per_j']:.3g} correct tok/J, {pick['tokens_per_s']:.3g} tok/s")  # fmt: skip
    for load in sorted({r["load"] for r in served}, key=lambda s: float(s.split()[0])):
        at = [r for r in served if r["load"] == load]
        top = best(at)
        same = [r for r in at if name(r) == name(pick)]
        if top is None or not same:
            continue
        mine = same[0]
        ratio = mine["correct_tokens_per_j"] / top["correct_tokens_per_j"] if top["correct_tokens_per_j"] else None
        t, m = top, mine
        lines.append(
            f"at {load}: served pick {name(t)} ({t['correct_tokens_per_j']:.3g} correct tok/J at the SLO, goodput "
            f"{t['goodput_rps']:.3g} req/s, SLO attainment {t['slo_attainment']:.2f}); the offline pick served: "
            f"goodput {m['goodput_rps']:.3g} req/s, SLO attainment {m['slo_attainment']:.2f}, TTFT p95 "
            f"{m['ttft_p95_s']:.3g} s, {m['correct_tokens_per_j']:.3g} correct tok/J"
            + (f" ({ratio:.2f}x the served pick's)" if ratio is not None else "")
        )
        out["by_load"][load] = {"served_pick": name(top), "served_pick_row": top, "offline_pick_served": mine,
                                "ratio": ratio, "same_pick": name(top) == name(pick)}  # fmt: skip
    return lines, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("scripts/results/served_smollm2"))
    args = ap.parse_args()
    data = {k: rows(v) for k, v in STUDIES.items()}
    served, offline, conc = data["served"][0], data["offline"][0], data["concurrency"][0]
    lines = [f"# Served vs offline, SmolLM2-135M Q4_1 source; written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
             f"{machine()} ({platform.machine()}), python {sys.version.split()[0]}",
             "# from the studies of scripts/grids/smollm2-served*.yaml; one run each (no repeats): read ratios "
             "under 1.3x as noise on this VM", f"# {setup()}", ""]  # fmt: skip
    for k, (_, cost) in data.items():
        lines.append(
            f"{k} ({cost['measured_at']}, the study storage's clock): {int(cost['trials'])} trials, "
            f"{int(cost['server_starts'])} server starts, wall {cost['wall_s']:.0f} s for {cost['measured_s']:.0f} s "
            f"measured + accuracy (overhead {cost['overhead']:.2f}x)"
        )
    summary, picks = compare(served, offline)
    lines += ["", "## Picks", *summary, "", "## Served (Poisson arrivals)", *table(served, SERVED_COLS),
              "", "## Served (fixed concurrency)", *table(conc, SERVED_COLS),
              "", "## Offline (static batches)", *table(offline, OFFLINE_COLS)]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    record = {"served": served, "offline": offline, "concurrency": conc, "picks": picks,
              "cost": {k: v[1] for k, v in data.items()}}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
