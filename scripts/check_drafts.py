"""Run every drafted point of the given example configs as a real trial and report whether its
output equals plain greedy decoding (draft_lossless) and its per-pass roofline.

Each config's space is narrowed to its drafted points (batch 1, the drafts other than `none`),
accuracy is left out (it does not depend on the draft), and the points run as a grid study in a
scratch directory, through the same trial code `autoinfer search` uses.

    python scripts/check_drafts.py examples/smollm2-cpu-engines.yaml examples/gemma3-270m-cpu.yaml
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from autoinfer.config import load_config
from autoinfer.record import record_of
from autoinfer.search.study import Events, run_search
from autoinfer.spaces import enumerate_points


def drafted_only(config_path: str, work: Path) -> object:
    cfg = load_config(config_path)
    space = cfg.space.model_copy(update={"draft": [d for d in cfg.space.draft if d != "none"], "batch_size": [1]})
    n = len(enumerate_points(cfg.model_copy(update={"space": space})))
    search = cfg.search.model_copy(update={
        "sampler": "grid", "trials": n, "storage": f"sqlite:///{work}/optuna.db",
        "study_name": Path(config_path).stem + "-drafts",
    })  # fmt: skip
    mlflow = cfg.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{work}/mlflow.db",
                                           "artifact_location": str(work / "artifacts")})  # fmt: skip
    accuracy = cfg.accuracy.model_copy(update={"tasks": []})
    objectives = [o.model_copy(update={"name": "tokens_per_s", "direction": "maximize"}) for o in cfg.objectives[:1]]
    return cfg.model_copy(update={"space": space, "search": search, "mlflow": mlflow, "accuracy": accuracy,
                                  "objectives": objectives, "constraints": []})  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}: drafted points of {', '.join(args.configs)}")
    print(f"{'point':48s} {'tok/s':>7s} {'accept':>7s} {'roofline':>9s} {'peak GB':>8s}  lossless / reason")
    failures = 0
    for path in args.configs:
        with tempfile.TemporaryDirectory() as d:
            cfg = drafted_only(path, Path(d))
            events = Events(trial_started=lambda n, p, i, total: print(f"  ... {p.label()}", file=sys.stderr))
            study, _ = run_search(cfg, events)  # type: ignore[arg-type]
            for t in study.trials:
                rec = record_of(t)
                label = t.user_attrs.get("point", {})
                if rec is None:
                    failures += 1
                    name = " ".join(str(v) for v in label.values())
                    reason = t.user_attrs.get("fail_reason")
                    print(f"{name:48s} {'-':>7s} {'-':>7s} {'-':>9s} {'-':>8s}  FAIL: {reason}")
                    continue
                m = rec.metrics
                print(f"{rec.point.label():48s} {m['tokens_per_s']:7.1f} {m['acceptance_rate']:7.0%} "
                      f"{m.get('roofline_pct', float('nan')):8.1f}% {m['peak_memory_gb']:8.2f}  "
                      f"{rec.provenance.draft_lossless}: {rec.provenance.draft_check}")  # fmt: skip
                failures += rec.provenance.draft_lossless is not True
    print(f"{failures} drafted point(s) not shown lossless")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
