"""Frontier table and plots: what a reviewer opens first in the MLflow UI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna

from autoinfer.config import Config
from autoinfer.search.pareto import (
    AccuracyDelta,
    Measured,
    deltas_vs_most_accurate,
    is_feasible,
    measured_trials,
    pareto_front,
)

COLUMNS = [
    "trial", "engine", "quantization", "compile_mode", "draft", "draft_tokens", "batch_size", "hardware", "load",
    "server_knobs", "correct_tokens_per_j", "accuracy", "accuracy_stderr",
    "accuracy_vs_best", "accuracy_vs_best_se", "accuracy_best_trial", "tokens_per_s", "ttft_p50_s",
    "latency_p50_s", "peak_memory_gb", "j_per_token", "energy_source", "acceptance_rate", "draft_lossless",
    "draft_divergence", "roofline_pct", "goodput_rps", "slo_attainment", "ttft_p95_s", "tpot_p95_s",
    "tokens_per_s_per_user", "usd_per_mtok", "usd_per_correct_mtok", "feasible", "pareto", "duration_s", "accuracy_s",
]  # fmt: skip


def trial_row(m: Measured, pareto: bool, feasible: bool, delta: AccuracyDelta | None = None) -> dict[str, Any]:
    """One measured trial as a table row (a CSV row: the keys are COLUMNS)."""
    rec = m.record
    row: dict[str, Any] = {"trial": m.number, **rec.point.as_dict(), "label": rec.point.label()}
    for k in COLUMNS:
        if k in rec.metrics:
            row[k] = rec.metrics[k]
    if delta is not None:
        row["accuracy_vs_best"], row["accuracy_vs_best_se"] = delta.delta, delta.stderr
        row["accuracy_best_trial"] = delta.reference
    row["energy_source"] = rec.provenance.energy_source
    row["draft_lossless"] = "" if rec.provenance.draft_lossless is None else rec.provenance.draft_lossless
    row["feasible"] = feasible
    row["pareto"] = pareto
    row["duration_s"] = "" if m.duration_s is None else round(m.duration_s, 1)
    row["accuracy_s"] = "" if m.accuracy_s is None else round(m.accuracy_s, 1)
    return row


def study_rows(config: Config, study: optuna.Study) -> list[dict[str, Any]]:
    """Every measured trial of the study as a row, ranked under the current config."""
    trials = measured_trials(study)
    front = {m.number for m in pareto_front(config, trials)}
    deltas = deltas_vs_most_accurate(trials)
    return [trial_row(m, m.number in front, is_feasible(config, m.record), deltas.get(m.number)) for m in trials]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    write_csv(rows, out / "trials.csv")
    front = [r for r in rows if r["pareto"]]
    with open(out / "frontier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(front)
    (out / "frontier.json").write_text(json.dumps(front, indent=1, default=str))


def frontier_markdown(rows: list[dict[str, Any]], study: str) -> str:
    """The frontier as a Markdown table: the parent run's description in the MLflow UI."""

    def f(r: dict[str, Any], key: str, spec: str = ".3g") -> str:
        v = r.get(key)
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"

    front = sorted((r for r in rows if r["pareto"]), key=lambda r: -float(r.get("correct_tokens_per_j") or 0))
    sources = sorted({str(r["energy_source"]) for r in front})
    lines = [
        f"**Pareto frontier of {study}**: {len(front)} of {len(rows)} measured trials "
        f"(energy: {', '.join(sources) or '-'}). Every trial is a child run; `pareto/` holds the plots.",
        "",
        "| trial | configuration | correct tok/J | accuracy | tok/s | TTFT p50 s |",
        "|---|---|---|---|---|---|",
    ]
    for r in front:
        acc = f"{f(r, 'accuracy')} ± {f(r, 'accuracy_stderr', '.2f')}"
        lines.append(
            f"| {r['trial']} | {r['label']} | {f(r, 'correct_tokens_per_j')} | {acc} | "
            f"{f(r, 'tokens_per_s', '.1f')} | {f(r, 'ttft_p50_s')} |"
        )
    return "\n".join(lines)


def _label(r: dict[str, Any]) -> str:
    return f"#{r['trial']} {r['label']}"


def write_plots(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    """accuracy vs tokens/s, colour = correct tokens/J, frontier ringed; PNG and interactive HTML."""
    rows = [r for r in rows if "tokens_per_s" in r and "accuracy" in r]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    xs = [r["tokens_per_s"] for r in rows]
    ys = [r["accuracy"] for r in rows]
    cs = [r.get("correct_tokens_per_j", 0.0) for r in rows]
    sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=60, zorder=3)
    errs = [r.get("accuracy_stderr", 0.0) or 0.0 for r in rows]
    ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor="0.7", zorder=2)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["tokens_per_s"])
    for k, r in enumerate(front):
        ax.scatter([r["tokens_per_s"]], [r["accuracy"]], s=180, facecolors="none", edgecolors="red", zorder=4)
        # stagger labels vertically: frontier points often share an accuracy value
        ax.annotate(_label(r), (r["tokens_per_s"], r["accuracy"]), fontsize=7, xytext=(4, 4 + 9 * (k % 3)),
                    textcoords="offset points")  # fmt: skip
    source = sorted({str(r.get("energy_source")) for r in rows})
    fig.colorbar(sc, ax=ax, label=f"correct tokens / J  ({', '.join(source)})")
    ax.set_xlabel("generated tokens / s")
    ax.set_ylabel("accuracy (± stderr)")
    ax.set_title(f"{title}: red rings = Pareto frontier")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png")
    plt.close(fig)

    import plotly.graph_objects as go

    hover = [
        f"{_label(r)}<br>tok/s {r['tokens_per_s']:.1f}<br>acc {r['accuracy']:.3f}"
        f" ± {r.get('accuracy_stderr', 0):.3f}<br>correct tok/J {r.get('correct_tokens_per_j', 0):.3g}"
        f"<br>energy {r.get('energy_source')}"
        for r in rows
    ]
    fig2 = go.Figure(
        go.Scatter3d(
            x=xs, y=ys, z=cs, mode="markers", text=hover, hoverinfo="text",
            marker={"size": [9 if r["pareto"] else 5 for r in rows], "color": cs, "colorscale": "Viridis",
                    "line": {"color": ["red" if r["pareto"] else "white" for r in rows], "width": 2}},
        )
    )  # fmt: skip
    fig2.update_layout(
        title=f"{title} (large markers = Pareto frontier)",
        scene={"xaxis_title": "tokens/s", "yaxis_title": "accuracy", "zaxis_title": "correct tokens/J"},
    )
    # Inline plotly.js so the page opens offline.
    fig2.write_html(out / "pareto.html", include_plotlyjs=True)


def write_served_plot(rows: list[dict[str, Any]], out: Path, title: str, tpot_s: float | None) -> None:
    """Served trials: tokens/s of the machine against tokens/s each user saw, one colour per engine,
    the frontier ringed, and the per-user speed a TPOT limit asks for drawn; beside it, with prices
    set, $ per million tokens against the same per-user speed (the price of fast answers)."""
    rows = [r for r in rows if "tokens_per_s_per_user" in r and "tokens_per_s" in r]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = [r for r in rows if "usd_per_mtok" in r]
    fig, axes = plt.subplots(1, 2 if priced else 1, figsize=(13 if priced else 8, 5.5), dpi=110, squeeze=False)
    panels = [("tokens_per_s", "tokens / s (the whole server)")] + ([("usd_per_mtok", "$ / Mtok")] if priced else [])
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for n, engine in enumerate(sorted({str(r["engine"]) for r in rows})):
            mine = [r for r in rows if r["engine"] == engine and key in r]
            ax.scatter([r["tokens_per_s_per_user"] for r in mine], [r[key] for r in mine], s=50, zorder=3,
                       color=f"C{n}", label=engine)  # fmt: skip
        for r in (r for r in rows if r["pareto"] and key in r):
            ax.scatter([r["tokens_per_s_per_user"]], [r[key]], s=170, facecolors="none", edgecolors="red", zorder=4)
            ax.annotate(_label(r), (r["tokens_per_s_per_user"], r[key]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
        if tpot_s:  # a good request streams at least this fast after its first token
            ax.axvline(1 / tpot_s, color="0.4", linestyle="--", label=f"TPOT limit {tpot_s:g} s = {1 / tpot_s:g} tok/s")
        ax.set_xlabel("tokens / s per user (output tokens / end-to-end latency, mean)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: served trials, red rings = Pareto frontier")
    fig.tight_layout()
    fig.savefig(out / "served.png")
    plt.close(fig)
