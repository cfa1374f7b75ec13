"""Does autoinfer measure what an independent timer measures? Fidelity of tokens/s, in one run.

For each configuration, alternately (`--runs` times): a real autoinfer trial (the search's own
path: a child process, `run_trial`, accuracy off), then a bare generation loop written directly
against the engine's library, fed the very token ids the trial fed (chat template applied) and
asked for the very number of tokens the trial generated per prompt, batch 1, same threads:

- llama.cpp: `llama_cpp.Llama` (the library's high-level API, not autoinfer's runtime), greedy;
  plus `llama-bench` (built by scripts/setup.sh from the same sources) for the decode rate, which
  is compared with the trial's 1 / TPOT p50.
- transformers: `model.generate` on the checkpoint the trial loaded, greedy, one prompt at a time.

Both sides count generated tokens over wall time with the prompt included, as trials report it.
Printed last: per configuration the median of the paired ratios (autoinfer / bare) with their
range, and each side's run-to-run CV.

    python scripts/bench_fidelity.py examples/smollm2-cpu-engines.yaml --runs 5

Status (2026-11-29): written, type-checked and linted, but not yet run; no figure from it is
quoted anywhere. Issue 11's note says what is left.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import machine, measure, today

from autoinfer.config import load_config
from autoinfer.engines import TrialPoint
from autoinfer.record import TrialRecord

CONFIGS = [
    TrialPoint("llama.cpp", "Q8_0", "none", 1, "cpu:2"),
    TrialPoint("llama.cpp", "Q4_0", "none", 1, "cpu:2"),
    TrialPoint("transformers", "fp32", "none", 1, "cpu:2"),
]


def bare_llamacpp(rec: TrialRecord, threads: int) -> float:
    """Tokens/s of the same prompts and output lengths through llama_cpp.Llama, greedy."""
    import llama_cpp

    eng = rec.provenance.engine
    gen = rec.generations
    assert gen is not None
    llm = llama_cpp.Llama(
        model_path=eng["gguf_path"], n_ctx=int(eng["n_ctx"]), n_threads=threads, n_threads_batch=threads,
        n_batch=512, verbose=False,
    )  # fmt: skip
    llm.reset()
    for i, _ in enumerate(llm.generate(list(gen.prompt_ids[0]), temp=0.0, top_k=1)):  # warm-up, unmeasured
        if i == 1:
            break
    tokens, wall = 0, 0.0
    for prompt, out in zip(gen.prompt_ids, gen.output_ids, strict=True):
        llm.reset()
        t0 = time.perf_counter()
        n = 0
        for _ in llm.generate(list(prompt), temp=0.0, top_k=1, reset=True):
            n += 1
            if n == len(out):
                break
        wall += time.perf_counter() - t0
        tokens += n
    del llm
    return tokens / wall


def bare_transformers(rec: TrialRecord, threads: int) -> float:
    """Tokens/s of the same prompts and output lengths through model.generate, greedy."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    gen = rec.generations
    assert gen is not None
    model = AutoModelForCausalLM.from_pretrained(rec.provenance.engine["checkpoint"], dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        model.generate(torch.tensor([gen.prompt_ids[0]]), max_new_tokens=2, do_sample=False)  # warm-up
        tokens, wall = 0, 0.0
        for prompt, out in zip(gen.prompt_ids, gen.output_ids, strict=True):
            ids = torch.tensor([prompt])
            t0 = time.perf_counter()
            res = model.generate(ids, max_new_tokens=len(out), min_new_tokens=len(out), do_sample=False)
            wall += time.perf_counter() - t0
            tokens += res.shape[1] - ids.shape[1]
    return tokens / wall


def llama_bench_tg(rec: TrialRecord, threads: int, n: int) -> float | None:
    """llama.cpp's own decode rate (tg) for the trial's GGUF, or None without llama-bench."""
    binary = shutil.which("llama-bench") or str(Path(sys.executable).parent / "llama-bench")
    if not Path(binary).is_file():
        return None
    argv = [binary, "-m", rec.provenance.engine["gguf_path"], "-t", str(threads), "-p", "0", "-n", str(n),
            "-r", "1", "-o", "json"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def cv(xs: list[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs) if len(xs) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="a config whose model, workload and engines to use (accuracy is turned off)")
    ap.add_argument("--runs", type=int, default=5, help="alternating runs per configuration")
    ap.add_argument("--only", nargs="*", help="engine names to keep (default: all of CONFIGS)")
    args = ap.parse_args()
    base = load_config(args.config)
    config = base.model_copy(update={"accuracy": base.accuracy.model_copy(update={"tasks": []})})
    threads = 2
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for point in [p for p in CONFIGS if not args.only or p.engine in args.only]:
            ours, bare, ratios, decode, bench = [], [], [], [], []
            for run in range(args.runs):
                rec = measure(config, point, Path(d))
                a = rec.metrics["tokens_per_s"]
                b = bare_llamacpp(rec, threads) if point.engine == "llama.cpp" else bare_transformers(rec, threads)
                ours.append(a)
                bare.append(b)
                ratios.append(a / b)
                if point.engine == "llama.cpp":
                    tg = llama_bench_tg(rec, threads, config.workload.max_new_tokens)
                    if tg:
                        decode.append(1.0 / rec.metrics["tpot_p50_s"])
                        bench.append(tg)
                print(f"{point.label()} run {run + 1}: autoinfer {a:.1f} tok/s, bare {b:.1f} tok/s, ratio {a / b:.3f}"
                      + (f"; decode {decode[-1]:.1f} vs llama-bench tg {bench[-1]:.1f}" if bench else ""),
                      flush=True)  # fmt: skip
            bench_ratio = [x / y for x, y in zip(decode, bench, strict=True)]
            rows.append((point.label(), ours, bare, ratios, bench_ratio))
    print(f"\nFidelity of tokens/s ({args.runs} alternating runs each; {machine()}, {today()}, {threads} threads; "
          f"{config.workload.prompts}, {config.workload.max_new_tokens} new tokens, batch 1)")  # fmt: skip
    print("| configuration | autoinfer tok/s (CV) | bare loop tok/s (CV) | ratio median [min, max] | "
          "decode / llama-bench tg median [min, max] |")  # fmt: skip
    print("|---|---|---|---|---|")
    for label, ours, bare, ratios, bench_ratio in rows:
        br = (f"{statistics.median(bench_ratio):.3f} [{min(bench_ratio):.3f}, {max(bench_ratio):.3f}]"
              if bench_ratio else "-")  # fmt: skip
        print(
            f"| {label} | {statistics.median(ours):.1f} ({cv(ours):.1%}) | {statistics.median(bare):.1f} "
            f"({cv(bare):.1%}) | {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] | {br} |"
        )


if __name__ == "__main__":
    main()
