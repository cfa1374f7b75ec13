"""Does autoinfer measure what an independent timer measures? Fidelity of tokens/s, in one run.

For each configuration, alternately (`--runs` times): a real autoinfer trial (the search's own
path: a child process, `run_trial`, accuracy off), then a bare generation loop written directly
against the engine's library, fed the very token ids the trial fed (chat template applied) and
asked for the very number of tokens the trial generated per prompt, batch 1, same threads:

- llama.cpp: a loop over llama.cpp's C API (`llama_decode` and its greedy sampler, written here,
  not autoinfer's runtime) is the reference; `llama_cpp.Llama.generate` (the binding's high-level
  loop) is shown beside it; and `llama-bench` (built by scripts/setup.sh from the same sources)
  gives the decode rate, compared with the trial's 1 / TPOT p50.
- transformers: `model.generate` on the checkpoint the trial loaded, greedy, one prompt at a time.

Both sides count generated tokens over wall time with the prompt included, as trials report it.
Printed last: per configuration the median of the paired ratios (autoinfer / bare) with their
range, and each side's run-to-run CV.

    python scripts/bench_fidelity.py examples/smollm2-cpu-engines.yaml --runs 5

Results: scripts/results/bench_fidelity.txt (and docs/benchmarks.md).
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


def bare_llamacpp_c(rec: TrialRecord, threads: int) -> float:
    """The same through llama.cpp's C API directly: one llama_decode for the prompt, then one per
    token with llama.cpp's own greedy sampler; no Python work per token beyond the two calls. The
    high-level loop above pays about 2-3 ms of Python per token, which is a third of a token's
    time for a 135M model, so this is the reference that times llama.cpp and nothing else."""
    import ctypes

    import llama_cpp as ll

    from autoinfer.engines.llamacpp.runtime import quiet_llama_logs

    gen = rec.generations
    assert gen is not None
    quiet_llama_logs()
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    model = ll.llama_model_load_from_file(rec.provenance.engine["gguf_path"].encode(), mp)
    cp = ll.llama_context_default_params()
    cp.n_ctx = int(rec.provenance.engine["n_ctx"])
    cp.n_batch = cp.n_ctx
    cp.n_threads = cp.n_threads_batch = threads
    ctx = ll.llama_init_from_model(model, cp)
    mem = ll.llama_get_memory(ctx)
    sampler = ll.llama_sampler_init_greedy()

    def run(prompt: tuple[int, ...], n_new: int) -> int:
        ll.llama_memory_clear(mem, True)
        ids = (ll.llama_token * len(prompt))(*prompt)
        ll.llama_decode(ctx, ll.llama_batch_get_one(ids, len(prompt)))
        one = (ll.llama_token * 1)()
        for i in range(n_new):
            one[0] = ll.llama_sampler_sample(sampler, ctx, -1)
            if i + 1 < n_new:  # the last token is sampled, not fed back (as the trial does)
                ll.llama_decode(ctx, ll.llama_batch_get_one(ctypes.cast(one, ctypes.POINTER(ll.llama_token)), 1))
        return n_new

    run(gen.prompt_ids[0], 2)  # warm-up, unmeasured
    tokens, wall = 0, 0.0
    for prompt, out in zip(gen.prompt_ids, gen.output_ids, strict=True):
        t0 = time.perf_counter()
        tokens += run(prompt, len(out))
        wall += time.perf_counter() - t0
    ll.llama_sampler_free(sampler)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
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
            ours, bare, ratios, high, decode, bench = [], [], [], [], [], []
            for run in range(args.runs):
                rec = measure(config, point, Path(d))
                a = rec.metrics["tokens_per_s"]
                b = bare_llamacpp_c(rec, threads) if point.engine == "llama.cpp" else bare_transformers(rec, threads)
                ours.append(a)
                bare.append(b)
                ratios.append(a / b)
                line = f"{point.label()} run {run + 1}: autoinfer {a:.1f} tok/s, bare {b:.1f} tok/s, ratio {a / b:.3f}"
                if point.engine == "llama.cpp":
                    high.append(bare_llamacpp(rec, threads))
                    line += f"; Llama.generate {high[-1]:.1f} tok/s"
                    tg = llama_bench_tg(rec, threads, config.workload.max_new_tokens)
                    if tg:
                        decode.append(1.0 / rec.metrics["tpot_p50_s"])
                        bench.append(tg)
                        line += f"; decode {decode[-1]:.1f} vs llama-bench tg {tg:.1f}"
                print(line, flush=True)
            bench_ratio = [x / y for x, y in zip(decode, bench, strict=True)]
            rows.append((point.label(), ours, bare, ratios, high, bench_ratio))
    print(f"\nFidelity of tokens/s ({args.runs} alternating runs each; {machine()}, {today()}, {threads} threads; "
          f"{config.workload.prompts}, {config.workload.max_new_tokens} new tokens, batch 1)")  # fmt: skip
    print("| configuration | autoinfer tok/s (CV) | bare loop tok/s (CV) | ratio median [min, max] | "
          "llama_cpp.Llama.generate tok/s (CV) | decode / llama-bench tg median [min, max] |")  # fmt: skip
    print("|---|---|---|---|---|---|")

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}]" if xs else "-"

    for label, ours, bare, ratios, high, bench_ratio in rows:
        hi = f"{statistics.median(high):.1f} ({cv(high):.1%})" if high else "-"
        print(
            f"| {label} | {statistics.median(ours):.1f} ({cv(ours):.1%}) | {statistics.median(bare):.1f} "
            f"({cv(bare):.1%}) | {spread(ratios)} | {hi} | {spread(bench_ratio)} |"
        )


if __name__ == "__main__":
    main()
