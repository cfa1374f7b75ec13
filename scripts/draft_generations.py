"""Drafted trials against their plain twins, judged by what each generated: read a study whose
space holds each engine and level with and without a draft, and a generative accuracy task.

For every (engine, level, batch) with a plain trial and drafted ones: the lossless check's verdict
on the workload's prompts (identical, ties, or partings beyond a tie, with plain greedy's own
parting at another batch size), then the eval: each trial's accuracy from its own generations,
how many items' generated texts differ from the plain twin's, and the paired difference of the
per-item scores (McNemar's discordant counts).

    python scripts/draft_generations.py scripts/grids/qwen2.5-coder-0.5b-drafts-mbpp.yaml \
        [--out scripts/results/qwen2.5-coder-0.5b-drafts-mbpp.txt]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoinfer.config import load_config
from autoinfer.record import TrialRecord, record_of


def texts(rec: TrialRecord) -> dict[str, list[str]]:
    gens = rec.accuracy.generations if rec.accuracy else {}
    return {task: [str(g.get("text", "")) for g in rows] for task, rows in gens.items()}


def compare(plain: TrialRecord, drafted: TrialRecord) -> list[str]:
    m = drafted.metrics
    self_part = m.get("greedy_self_divergence", "not measured")
    lines = [f"{drafted.point.label()} (trial vs its plain twin {plain.point.label()})"]
    lines.append(f"  lossless check, {drafted.provenance.prompts} workload prompts: draft_lossless "
                 f"{drafted.provenance.draft_lossless}; draft_divergence {m.get('draft_divergence', 0):.3g}; "
                 f"tied prompts {m.get('draft_tied_prompts', 0):.0f} (largest margin "
                 f"{m.get('draft_tie_margin', 0):.3g} logits); greedy_self_divergence {self_part}; "
                 f"acceptance {m.get('acceptance_rate', 0):.3f}")  # fmt: skip
    a, b = texts(drafted), texts(plain)
    for task in sorted(set(a) & set(b)):
        differ = sum(x != y for x, y in zip(a[task], b[task], strict=True))
        da = drafted.accuracy.items.get(task, []) if drafted.accuracy else []
        pa = plain.accuracy.items.get(task, []) if plain.accuracy else []
        up = sum(1 for x, y in zip(da, pa, strict=True) if x > y)
        down = sum(1 for x, y in zip(da, pa, strict=True) if x < y)
        acc_d = sum(da) / len(da) if da else float("nan")
        acc_p = sum(pa) / len(pa) if pa else float("nan")
        lines.append(f"  {task}: {len(a[task])} items; generated text differs from plain on {differ}; "
                     f"accuracy drafted {acc_d:.3f} vs plain {acc_p:.3f}; items only drafted got right {up}, "
                     f"only plain {down}")  # fmt: skip
    key_has_draft = drafted.accuracy is not None and '"draft"' in drafted.accuracy.key
    lines.append(f"  accuracy key holds the draft: {key_has_draft} (its score is of its own generations)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = load_config(args.config)
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.search.storage)
    recs = [r for t in study.get_trials(states=(TrialState.COMPLETE,)) if (r := record_of(t))]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    lines = [f"# python scripts/draft_generations.py {args.config}",
             f"# study {cfg.study_name}: {len(recs)} complete trials, {len(failed)} failed; "
             f"{os.cpu_count()}-core {_cpu()}"]  # fmt: skip
    lines += [f"# failed trial {t.number}: {t.user_attrs.get('fail_reason', '')}" for t in failed]
    busy = ", ".join(f"#{i} {r.metrics.get('other_cpu_pct', float('nan')):.0f} %" for i, r in enumerate(recs))
    lines.append(f"# other processes' share of the target's CPU time in each measured window: {busy} (where it is "
                 "high, their speed and energy are not figures to compare; divergence and accuracy are)")  # fmt: skip
    plain: dict[Any, TrialRecord] = {}
    for r in recs:
        if r.point.draft == "none":
            plain[(r.point.engine, r.point.quantization, r.point.batch_size)] = r
    for r in recs:
        twin = plain.get((r.point.engine, r.point.quantization, r.point.batch_size))
        if r.point.draft != "none" and twin is not None:
            lines += ["", *compare(twin, r)]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


def _cpu() -> str:
    from autoinfer.hardware import cpu_model

    return cpu_model()


if __name__ == "__main__":
    main()
