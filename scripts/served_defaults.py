"""Served picks against practitioners' defaults: the same model, load and SLO, one run.

For each engine, two servers answer the same Poisson request streams:
- the served study's pick (the exported command of the point the served search chose), and
- the engine's server as a practitioner starts it: the model and nothing else (llama-server
  `-m model.gguf`; vLLM's OpenAI server with `--model`), each knob at the server's own default
  (threads, slots or max_num_seqs, context, batch sizes, prefix caching, compilation).
Loopback, a fresh API key and a free port are added to both, as every served trial does. The
defaults use every core they find (2 here) where the picks were measured on `cpu:1`, so the
CPU-time energy estimate bills each server's own process tree and the static share of the cores
it was given: 1 for the picks, all of them for the defaults.

Each server runs every rate, and the whole sweep is repeated (`--repeats`) on the same running
server, rates in the same order; the figures are per repeat, and the table gives their mean and
range. Accuracy is the served study's (the same weights at the same level), read from its trials.

    python scripts/served_defaults.py [--rates 1 2 4] [--requests 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from served_compare import machine

from autoinfer.config import Config, load_config
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import VerifyFailed
from autoinfer.record import record_of
from autoinfer.served.command import ServerCommand, server_command
from autoinfer.served.trial import Serving, measure_load_point, prefix_cached
from autoinfer.trial import load_guard, prepare_served

GRIDS = Path(__file__).parent / "grids"
# The served study's picks (scripts/results/served_smollm2.txt): llama.cpp at 1-2 req/s, vLLM at 4.
PICKS = {"llama.cpp": TrialPoint("llama.cpp", "Q4_1", "none", 4, "cpu:1"),
         "vllm": TrialPoint("vllm", "bf16", "none", 16, "cpu:1", compile_mode="eager")}  # fmt: skip
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
COLS = ("goodput_rps", "slo_attainment", "ttft_p95_s", "tpot_p95_s", "tokens_per_s", "energy_j", "good_per_kj",
        "correct_tokens_per_j")  # fmt: skip


def default_command(engine: str, info: dict[str, Any], model: str, memory: float | None = None) -> ServerCommand:
    """The engine's server with the model and its own defaults for everything else; for vLLM,
    `memory` sets --gpu-memory-utilization (on CPU the fraction of RAM it reserves)."""
    if engine == "llama.cpp":
        from autoinfer.export.runtime import llama_server

        argv = [llama_server(), "-m", str(info["gguf_path"])]
        key_env = "LLAMA_API_KEY"
    else:
        from autoinfer.engines.vllm.export import SERVER_MODULE

        ckpt = str(info["checkpoint"])
        argv = [sys.executable, "-m", SERVER_MODULE, "--model", ckpt, "--tokenizer", str(info.get("tokenizer") or ckpt),
                "--served-model-name", model]  # fmt: skip
        argv += ["--gpu-memory-utilization", str(memory)] if memory is not None else []
        key_env = "VLLM_API_KEY"
    return ServerCommand(argv, key_env, model, True, Path("/dev/null"), " ".join(argv))


def accuracy_of(config: Config, point: TrialPoint) -> float | None:
    """The served study's accuracy for this engine and level (any trial of it: same weights)."""
    study = optuna.load_study(study_name=config.study_name, storage=config.search.storage)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        rec = record_of(t)
        if rec and rec.point.engine == point.engine and rec.point.quantization == point.quantization:
            return rec.metrics.get("accuracy")
    return None


def sweep(config: Config, point: TrialPoint, cmd: ServerCommand, prompts: list[str], args: Any) -> list[dict[str, Any]]:
    """Start `cmd`, run every rate `args.repeats` times on it, stop it; one row per measurement."""
    from autoinfer.export.server import started_server

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="served-defaults-") as tmp, ExitStack() as stack:
        key = secrets.token_urlsafe(24)
        log = Path(tempfile.gettempdir()) / f"served-defaults-{point.engine}-{point.hardware}.log"  # kept
        start = time.perf_counter()
        env = {str(cmd.key_env): key}
        if prefix_cached(point):  # emptied between load points (POST /reset_prefix_cache), as a served trial does
            env["VLLM_SERVER_DEV_MODE"] = "1"
        try:
            server = stack.enter_context(started_server(cmd.argv, log, Path(tmp), 900, env))
        except VerifyFailed as e:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln][-3:]
            raise VerifyFailed(f"{e} ({' | '.join(tail)}; whole log: {log})") from None
        s = Serving(cmd, server.port, server.pid, key, time.perf_counter() - start, log)
        print(f"  started in {s.started_s:.0f} s: {cmd.line[:160]}", flush=True)
        for rep in range(args.repeats):
            for rate in args.rates:
                at = replace(point, load=f"rate:{rate:g}")
                m = measure_load_point(config, at, s, prompts, load_guard(config, at), lambda _: None,
                                       reused=bool(rows))  # fmt: skip
                row = {"rate": rate, "repeat": rep, **m.metrics, "energy_j": m.energy.energy_j,
                       "energy_source": m.energy.source, "good_tokens": m.good_tokens}  # fmt: skip
                rows.append(row)
                print(f"  {rate:g} req/s #{rep}: goodput {row['goodput_rps']:.2f}, {row['energy_j']:.0f} J",
                      flush=True)  # fmt: skip
        rows[0]["server_start_s"] = s.started_s
    return rows


def summarize(rows: list[dict[str, Any]], accuracy: float | None) -> dict[str, dict[str, Any]]:
    """Per rate: each column's mean and range over repeats."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        r["good_per_kj"] = 1000 * r["good_requests"] / r["energy_j"]
        r["correct_tokens_per_j"] = accuracy * r["good_tokens"] / r["energy_j"] if accuracy is not None else None
    for rate in sorted({r["rate"] for r in rows}):
        at = [r for r in rows if r["rate"] == rate]
        out[f"{rate:g}"] = {
            c: (sum(v) / len(v), min(v), max(v)) if (v := [r[c] for r in at if r.get(c) is not None]) else None
            for c in COLS
        }
    return out


def fmt(cell: tuple[float, float, float] | None) -> str:
    if cell is None:
        return "-"
    mean, lo, hi = cell
    return f"{mean:.3g} [{lo:.3g}-{hi:.3g}]" if hi > lo else f"{mean:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(GRIDS / "smollm2-served.yaml"))
    ap.add_argument("--engines", nargs="+", default=list(PICKS))
    ap.add_argument("--rates", nargs="+", type=float, default=[1.0, 2.0, 4.0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="scripts/results/served_defaults")
    # vLLM's default CPU server reserves 0.92 of RAM and will not start where less is free (beside
    # the measuring process it never is); its error names this fix, e.g. 0.5.
    ap.add_argument("--vllm-memory-fraction", type=float, help="vLLM defaults plus --gpu-memory-utilization F")
    args = ap.parse_args()
    base = load_config(args.config)
    served = base.workload.served
    assert served is not None
    config = base.model_copy(update={"workload": base.workload.model_copy(
        update={"served": served.model_copy(update={"requests": args.requests})})})  # fmt: skip
    model = str(config.model.source)
    results: dict[str, Any] = {}
    for engine in args.engines:
        pick = PICKS[engine]
        env = dict(os.environ)
        unscored = config.model_copy(update={"accuracy": config.accuracy.model_copy(update={"tasks": []})})
        prep = prepare_served(unscored, pick, "", {}, lambda _: None)  # the engine's record, as a trial loads it
        os.environ.clear()
        os.environ.update(env)  # loading set the pick's thread counts: the defaults must not inherit them
        accuracy = accuracy_of(config, pick)
        with tempfile.TemporaryDirectory() as tmp:
            tuned = server_command(config, pick, prep.info, Path(tmp))
            # vLLM's default keeps a prefix cache: said in the point, so it is emptied between load
            # points as the picks' servers start each point without one.
            knobs = "prefix_caching=on" if engine == "vllm" else ""
            every_core = replace(pick, hardware=f"cpu:{os.cpu_count()}", server_knobs=knobs)
            for name, point, cmd in (
                ("pick", pick, tuned),
                ("defaults", every_core, default_command(engine, prep.info, model, args.vllm_memory_fraction)),
            ):
                print(f"{engine} {name}:", flush=True)
                entry: dict[str, Any] = {"command": cmd.line, "hardware": point.hardware, "accuracy": accuracy}
                try:
                    rows = sweep(config, point, cmd, prep.prompts, args)
                except VerifyFailed as e:  # kept as a result: what a practitioner starting it would see
                    entry.update(rows=[], summary={}, failed=str(e))
                else:
                    entry.update(rows=rows, summary=summarize(rows, accuracy))
                results[f"{engine} {name}"] = entry
                write(results, config, args)  # after every server: a crash keeps what was measured


def write(results: dict[str, Any], config: Config, args: Any) -> None:
    s = config.workload.served
    assert s is not None
    head = [
        f"# Served picks vs server defaults, SmolLM2-135M; written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"on {machine()}",
        f"# python scripts/served_defaults.py --rates {' '.join(f'{r:g}' for r in args.rates)} --requests "
        f"{args.requests} --repeats {args.repeats} --engines {' '.join(args.engines)} --out {args.out}"
        + (f" --vllm-memory-fraction {args.vllm_memory_fraction:g}" if args.vllm_memory_fraction is not None else "")
        + f"; SLO ttft_s {s.slo.ttft_s} tpot_s {s.slo.tpot_s}; "
        f"{config.workload.max_new_tokens} tokens per request (ignore_eos), builtin:chat prompts, Poisson arrivals",
        "# each cell: mean over repeats [min-max]; energy: CPU-time estimate of the server's process tree "
        "(10 W per busy core + the static share of the cores the server was given)",
        "# good_per_kj: requests within the SLO per kJ; correct_tokens_per_j: accuracy (the served study's) x "
        "good requests' tokens / J",
    ]
    lines = [*head, ""]
    for name, r in results.items():
        lines.append(f"## {name} ({r['hardware']}): {r['command']}")
        if r.get("failed"):
            lines += [f"did not start: {r['failed']}", ""]
            continue
        lines.append(" | ".join(["req/s", *COLS]))
        lines.append(" | ".join("---" for _ in range(len(COLS) + 1)))
        for rate, cells in r["summary"].items():
            lines.append(" | ".join([rate, *(fmt(cells[c]) for c in COLS)]))
        lines.append("")
    lines += ratios(results)
    Path(f"{args.out}.txt").write_text("\n".join(lines) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print("\n".join(lines))


def ratios(results: dict[str, Any]) -> list[str]:
    """Per engine and rate: the pick's good requests per kJ over the defaults' (means; the range
    is the ratio of the extremes, worst case both ways)."""
    out = ["## pick / defaults, good requests per kJ at the SLO (mean ratio [lowest-highest over repeats])"]
    for engine in sorted({k.rsplit(" ", 1)[0] for k in results}):
        pick, dflt = results.get(f"{engine} pick"), results.get(f"{engine} defaults")
        if not pick or not dflt:
            continue
        for rate, cells in pick["summary"].items():
            a, b = cells["good_per_kj"], dflt["summary"].get(rate, {}).get("good_per_kj")
            if a is None or b is None:
                continue
            if b[0] == 0:
                ratio = "the defaults had no good request"
            else:
                high = f"{a[2] / b[1]:.2f}" if b[1] > 0 else "unbounded (a repeat of the defaults had none)"
                ratio = f"{a[0] / b[0]:.2f}x [{a[1] / b[2]:.2f}-{high}]"
            out.append(f"{engine} at {rate} req/s: {a[0]:.3g} vs {b[0]:.3g} good req/kJ: {ratio}")
    return out


if __name__ == "__main__":
    main()
