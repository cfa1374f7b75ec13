"""Command line: `autoinfer search | validate | init | hardware | pareto | export | serve | verify`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autoinfer.errors import AutoinferError, ConfigError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Find the LLM inference configuration with the most correct tokens per joule.",
)
# Output to a file or a pipe (`> log.txt`, CI logs, `| tee`) has no width to fit: give it room for
# any table, so every column reads whole (tables only take the width they need).
console = Console(width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="The search config (YAML).", show_default=False)]


def _load(path: Path, preflight: bool = True) -> Any:
    from autoinfer.config import load_config

    config = load_config(path)
    if preflight:
        _preflight(path, config)
    return config


def _preflight(path: Path, config: Any) -> None:
    from autoinfer.preflight import check

    check(config, str(path))


def _override(path: Path, config: Any, section: str, **values: Any) -> Any:
    """The config with command-line values in one section, validated as if the YAML had them."""
    from autoinfer.config import parse_config

    data = config.model_dump(mode="json")
    data[section] = {**data[section], **values}
    return parse_config(data, str(path), config.base_dir)


def _fmt(v: Any, spec: str = ".3g") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


TIED = "†"  # a frontier row whose drafted output parted from plain greedy decoding (at a tie or beyond)


def _tied(record: Any) -> bool:
    return record.provenance.draft_lossless is False  # drafted, kept, not identical


def _frontier_table(study: Any, config: Any, title: str) -> Table:
    from autoinfer.search.pareto import (
        deltas_vs_most_accurate,
        measured_busy,
        measured_trials,
        pareto_front,
        ranks_energy,
    )

    trials = measured_trials(study)
    deltas = deltas_vs_most_accurate(trials)
    front = sorted(
        pareto_front(config, trials),
        key=lambda m: (m.record.provenance.energy_source, -m.record.metrics.get("correct_tokens_per_j", 0)),
    )
    sources = sorted({m.record.provenance.energy_source for m in front})
    notes = [f"energy: {', '.join(sources)}"] if sources else []
    if len(sources) > 1 and ranks_energy(config):
        notes.append("one frontier per energy meter: a row is ranked only against trials of the same meter")
    busy = [m.number for m in trials if measured_busy(config, m.record)]
    if busy:
        notes.append(f"not ranked, measured on a busy machine: {', '.join(f'#{n}' for n in busy)}")
    if deltas:
        ref = next(iter(deltas.values())).reference
        notes.append(f"Δacc: paired over the same items, vs the most accurate trial #{ref}")
    if any(_tied(m.record) for m in front):
        notes.append(
            f"{TIED} drafted output parted from plain greedy decoding at floating-point ties, or beyond them "
            "(draft_divergence): not bit-exact"
        )
    table = Table(title=title, caption="\n".join(notes) or None)
    table.add_column("#", no_wrap=True)
    table.add_column("configuration")  # wraps between words
    shown = _shown_metrics(config)
    for name in shown:
        table.add_column(_header(name), justify="right")
        if name == "accuracy" and deltas:
            table.add_column("Δacc\n(1)", justify="right")
    for m in front:
        label = m.record.point.label() + (f" {TIED}" if _tied(m.record) else "")
        if len(sources) > 1:  # which frontier the row belongs to
            label += f" [{m.record.provenance.energy_source}]"
        cells = [str(m.number), label]
        for name in shown:
            cells.append(_cell(m.record.metrics, name))
            if name == "accuracy" and deltas:
                d = deltas.get(m.number)
                cells.append(f"{d.delta:+.3f}±{d.stderr:.3f}" if d else "-")
        table.add_row(*cells)
    return table


def _shown_metrics(config: Any) -> list[str]:
    """The frontier table's metric columns: every objective, then every constrained metric, then
    tokens/s for context; each once, in that order, so the reader sees what put a row there."""
    names = [o.name for o in config.objectives] + [c.metric for c in config.constraints] + ["tokens_per_s"]
    return list(dict.fromkeys(names))


def _header(name: str) -> str:
    from autoinfer.metrics import METRICS

    return f"{name}\n({METRICS[name].unit})"


def _cell(metrics: dict[str, float], name: str) -> str:
    v = metrics.get(name)
    if v is None:
        return "-"
    if name == "accuracy" and "accuracy_stderr" in metrics:
        return f"{_fmt(v)}±{_fmt(metrics['accuracy_stderr'], '.2f')}"
    return _fmt(v, ".1f" if name == "tokens_per_s" else ".3g")


def _describe(t: Any) -> str:
    from autoinfer.record import point_of

    point = point_of(t)
    return f"#{t.number} {point.label() if point else ''}".strip()


def _finished_line(t: Any) -> str:
    """One line for a finished trial on the progress display."""
    from autoinfer.record import record_of

    rec = record_of(t)
    if t.state.name != "COMPLETE" or rec is None:
        reason = f"{_describe(t)}: FAIL: {t.user_attrs.get('fail_reason', '?')}"
        return f"[red]✗[/] {escape(reason)}"
    m = rec.metrics
    parts = [f"{_fmt(m.get('tokens_per_s'), '.1f')} tok/s"]
    if "accuracy" in m:
        reuse = " (acc reused)" if rec.accuracy is not None and rec.accuracy.reused_from_trial is not None else ""
        parts.append(f"acc {_fmt(m.get('accuracy'))}±{_fmt(m.get('accuracy_stderr'), '.2f')}{reuse}")
    if "correct_tokens_per_j" in m:
        parts.append(f"{_fmt(m['correct_tokens_per_j'])} correct tok/J")
    else:
        parts.append(f"{_fmt(m.get('j_per_token'))} J/token")
    rate = m.get("acceptance_rate")
    acc_rate = f", accept {rate:.0%}" if rate is not None else ""
    line = f"{_describe(t)}: {', '.join(parts)} ({rec.provenance.energy_source}){acc_rate}"
    return f"[green]✓[/] {escape(line)}"


def _progress_events(progress: Any, task: Any) -> Any:
    """The search's callbacks, drawn on a rich progress bar: the running trial and its stage, a
    line per finished trial, and the loop's messages."""
    from autoinfer.search.study import Events

    current = {"label": ""}

    def started(n: int, point: Any, i: int, total: int) -> None:
        current["label"] = f"trial {n}: {point.label()}"
        progress.update(task, description=escape(f"{current['label']} · load"), completed=i - 1)

    def finished(t: Any) -> None:
        progress.console.print(_finished_line(t))
        progress.advance(task)

    return Events(
        trial_started=started,
        stage=lambda s: progress.update(task, description=escape(f"{current['label']} · {s}")),
        trial_finished=finished,
        message=lambda msg: progress.console.print(f"[yellow]{msg}"),
    )


@app.command()
def search(
    config: ConfigArg,
    trials: Annotated[int | None, typer.Option(help="Override search.trials.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Measure the points of failed trials again.")] = False,
    fresh: Annotated[
        bool, typer.Option(help="Start (or resume) a study of its own for this exact setup, named after its hash.")
    ] = False,
    hardware: Annotated[
        list[str] | None,
        typer.Option(
            "--hardware",
            help="Measure only these targets of space.hardware (repeat for several): one worker per machine, "
            "all on one study. Overrides search.hardware.",
        ),
    ] = None,
) -> None:
    """Run (or resume) the search a config describes; every trial is measured for real."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from autoinfer.search.storage import redact
    from autoinfer.search.study import run_search

    _quiet_libraries()
    cfg = _search_config(config, trials, hardware)
    progress = Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    events = _progress_events(progress, progress.add_task("starting", total=cfg.search.trials))

    # SIGTERM (a service manager, `kill`, a cluster scheduler) stops a search as Ctrl-C does: the
    # running trial's process is killed, the trial recorded as interrupted and its point re-queued.
    stopped_by = {"signal": int(signal.SIGINT)}

    def terminate(signum: int, frame: Any) -> None:
        stopped_by["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)  # the terminal went away: stop as cleanly as for SIGTERM
    try:
        with progress:
            study, tracker = run_search(cfg, events, retry_failed=retry_failed, fresh=fresh)
    except KeyboardInterrupt:
        err.print("\ninterrupted: finished trials are saved; run the same command again to resume.")
        raise typer.Exit(128 + stopped_by["signal"]) from None
    except ConfigError as e:
        raise ConfigError(e.where, e.message, e.source or str(config)) from None
    console.print(_frontier_table(study, cfg, f"Pareto frontier of {tracker.study_name}"))
    console.print(
        f"Review every trial: [bold]mlflow ui --backend-store-uri {escape(redact(cfg.mlflow.tracking_uri))}"
        " --workers 1[/]\n"
        f"Deployment config: [bold]autoinfer export {config}[/]"
    )


def _search_config(config: Path, trials: int | None, hardware: list[str] | None) -> Any:
    """The config with the command line's overrides, checked, its notes and a busy machine said."""
    from autoinfer.preflight import busy_now, notes

    cfg = _load(config, preflight=False)
    if hardware:
        cfg = _override(config, cfg, "search", hardware=hardware)
    _preflight(config, cfg)
    for note in notes(cfg):
        err.print(f"[yellow]note:[/] {escape(note)}")
    busy = busy_now(cfg)
    if busy:
        err.print(f"[yellow]warning:[/] machine busy now: {escape(busy)}; trials will wait and measure again")
    if trials is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"trials": trials})})
    return cfg


@app.command()
def validate(config: ConfigArg) -> None:
    """Check a config (schema, paths, hardware) without loading any model."""
    cfg = _load(config)
    from autoinfer.spaces import enumerate_points

    print(f"{config}: OK, {len(enumerate_points(cfg))} valid points in the space")


@app.command()
def init(
    source: Annotated[
        str,
        typer.Argument(
            help="The model: a .gguf file, a model directory, package:NAME, chunks:NAME{1..N}, or a hub id "
            "in the local Hugging Face cache.",
            metavar="SOURCE",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the config.")] = Path("model.yaml"),
    draft: Annotated[
        str | None, typer.Option(help="A draft model with the same tokenizer, searched as model:DRAFT.")
    ] = None,
    minutes: Annotated[str, typer.Option(metavar="N", help="Search budget; sets search.trials (estimated).")] = "30",
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """Write a commented search config for a model on this machine: what fits, and trials for --minutes."""
    from autoinfer.scaffold import run_init, summary

    for line in summary(run_init(source, out, draft, minutes, force)):
        print(line)


@app.command()
def hardware() -> None:
    """List the targets this machine offers and the energy meter each would use."""
    from autoinfer.config import EnergyConfig
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.hardware import available_targets, fingerprint
    from autoinfer.spaces import HardwareSpec

    fp = fingerprint()
    console.print(
        f"CPU: {fp['cpu']} ({fp['cpu_count']} cores), memory {fp['memory_gb']} GB, GPUs: {fp['gpus'] or 'none'}"
    )
    table = Table()
    for col in ("target", "energy meter", "why"):
        table.add_column(col)
    watts = EnergyConfig().cpu_watts_per_core
    for t in available_targets():
        meter, why = meter_for(HardwareSpec.parse(t), watts)
        table.add_row(t, meter.source, why)
    console.print(table)


def _study(cfg: Any) -> Any:
    import optuna

    from autoinfer.search.storage import ensure_sqlite_dir

    ensure_sqlite_dir(cfg.search.storage)
    try:
        return optuna.load_study(study_name=cfg.study_name, storage=cfg.search.storage)
    except KeyError:
        raise AutoinferError(
            f"no study {cfg.study_name!r} in {cfg.search.storage}; run autoinfer search first"
        ) from None


@app.command()
def pareto(
    config: ConfigArg,
    csv: Annotated[
        Path | None, typer.Option(help="Also write every measured trial here (the study run's trials.csv).")
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Also write the frontier plots (and served.png for served trials) here.")
    ] = None,
) -> None:
    """Print the Pareto frontier of a config's study from its storage."""
    from autoinfer.tracking.plots import study_rows, write_csv, write_plots, write_served_plot

    cfg = _load(config, preflight=False)
    study = _study(cfg)
    console.print(_frontier_table(study, cfg, f"Pareto frontier of {cfg.study_name} ({len(study.trials)} trials)"))
    rows = study_rows(cfg, study) if csv is not None or plots is not None else []
    if csv is not None:
        write_csv(rows, csv)
        err.print(f"{len(rows)} measured trials written to {csv}")
    if plots is not None:  # what MLflow holds under pareto/, for a study reviewed without MLflow
        plots.mkdir(parents=True, exist_ok=True)
        write_plots(rows, plots, cfg.study_name)
        served = cfg.workload.served
        write_served_plot(rows, plots, cfg.study_name, served.slo.tpot_s if served else None)
        err.print(f"plots written to {plots}: {', '.join(sorted(p.name for p in plots.glob('*.png')))}")


@app.command()
def export(
    config: ConfigArg,
    trial: Annotated[int | None, typer.Option(help="Trial number (default: best frontier trial).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write YAML here instead of stdout.")] = None,
    copy_files: Annotated[
        bool, typer.Option(help="Copy the measured model files (GGUF, vLLM checkpoint) next to --out, sha256-checked.")
    ] = False,
    host: Annotated[
        str, typer.Option(help="The address the exported server listens on (0.0.0.0 exposes it on every interface).")
    ] = "127.0.0.1",
) -> None:
    """Write the deployment config of a frontier trial, with the measurements behind it."""
    from autoinfer.export import deployment_config, to_yaml
    from autoinfer.export.runtime import copy_files as copy_runtime_files
    from autoinfer.record import record_of
    from autoinfer.served.verify import with_served_block

    cfg = _load(config, preflight=False)
    study = _study(cfg)
    data = deployment_config(cfg, study, trial, host=host)
    data = with_served_block(data, cfg, record_of(study.trials[data["measured"]["trial"]]))
    for warning in data["measured"]["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if copy_files:
        if out is None:
            raise ConfigError("--copy-files", "needs --out (the files go next to the deployment config)")
        out.parent.mkdir(parents=True, exist_ok=True)
        for f in copy_runtime_files(data["runtime"], out.parent):
            err.print(f"copied {f}")
    if out:
        from autoinfer.cache import file_digest
        from autoinfer.export.deploy import outputs_json
        from autoinfer.export.runtime import THIS_FILE

        # The trial's own outputs beside the config: what `autoinfer verify` holds a server to.
        gen = outputs_json(study, data["measured"]["trial"])
        if gen is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            side = out.with_name(out.stem + ".outputs.json")
            side.write_text(gen)
            data["measured"]["outputs_file"] = side.name
            data["measured"]["outputs_sha256"] = file_digest(side)
        if "serve" in data["runtime"]:
            data["runtime"]["serve"] = data["runtime"]["serve"].replace(THIS_FILE, out.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_yaml(data))
        err.print(f"wrote {out}")
    else:
        sys.stdout.write(to_yaml(data))


@app.command()
def serve(
    deploy: Annotated[Path, typer.Argument(help="A deployment config written by `autoinfer export`.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback only unless you name another).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    model_name: Annotated[
        str | None, typer.Option(help="The model id clients name (default: the deployment's model.source).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="AUTOINFER_API_KEY", show_default=False,
                     help="Require 'Authorization: Bearer KEY' on every route but /health (better from the "
                     "environment: AUTOINFER_API_KEY)."),
    ] = None,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for a batch before new ones get 429.")] = 64,
    max_tokens_limit: Annotated[int, typer.Option(help="The most new tokens one request may ask for.")] = 4096,
    max_body_bytes: Annotated[int, typer.Option(help="The largest request body accepted (413 past it).")] = 1 << 20,
) -> None:  # fmt: skip
    """Serve a measured configuration through its own engine (OpenAI-compatible /v1 API)."""
    from autoinfer.export.batcher import Limits
    from autoinfer.export.serve import serve as run_serve

    try:
        limits = Limits(max_tokens=max_tokens_limit, max_queue=max_queue, max_body_bytes=max_body_bytes)
    except ValueError as e:
        raise ConfigError("", str(e), "autoinfer serve") from None
    try:
        run_serve(deploy, host, port, model_name, limits=limits, api_key=api_key or None)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def verify(
    deploy: Annotated[Path, typer.Argument(help="A deployment config written by `autoinfer export --out`.")],
    tolerance: Annotated[
        float, typer.Option(help="Least served tokens/s, as a fraction of the trial's, that passes (below 1).")
    ] = 0.8,
    max_ratio: Annotated[
        float,
        typer.Option(
            help="Most served tokens/s, as a multiple of the trial's, that passes (above 1): beyond it the "
            "trial's own figure is off."
        ),
    ] = 1.5,
    startup_timeout: Annotated[float, typer.Option(help="Seconds the server may take to become healthy.")] = 300.0,
    log: Annotated[bool, typer.Option(help="Log the result to the trial's MLflow run.")] = True,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="AUTOINFER_API_KEY", show_default=False,
                     help="The key to start the server with and send (default: a fresh random one per run)."),
    ] = None,
) -> None:  # fmt: skip
    """Run the exported server, send it the trial's prompts, compare outputs and speed with the trial."""
    from autoinfer.export.verify import VerifyFailed, check_band, log_report
    from autoinfer.export.verify import verify as run_verify
    from autoinfer.served.verify import is_served_deployment, verify_served

    check_band(tolerance, max_ratio)
    served = is_served_deployment(deploy)
    err.print(
        f"starting the exported server for {deploy} on 127.0.0.1" + (", to replay its load..." if served else "...")
    )
    try:
        if served:
            report = verify_served(deploy, tolerance, startup_timeout, max_ratio, api_key)
        else:
            report = run_verify(deploy, tolerance, startup_timeout, max_ratio=max_ratio, api_key=api_key)
    except KeyboardInterrupt:
        err.print("\ninterrupted: the server was stopped.")
        raise typer.Exit(130) from None
    console.print(_verify_table(deploy, report, served))
    console.print(f"server: {escape(report.command)}")
    if log:
        where = log_report(report)
        if where:
            err.print(where)
    if not report.passed:
        raise VerifyFailed(f"{deploy}: " + "; ".join(report.failures))
    what = "'s load, replayed, was served within the band" if served else " served with identical outputs"
    console.print(f"[green]verified[/]: trial {report.trial}{what}")


LABELS = {"tokens_per_s": "tok/s", "ttft_p50_s": "TTFT p50 s", "latency_p50_s": "latency p50 s",
          "latency_p95_s": "latency p95 s", "goodput_rps": "goodput req/s", "slo_attainment": "SLO attainment",
          "ttft_p95_s": "TTFT p95 s", "tpot_p95_s": "TPOT p95 s", "e2el_p95_s": "E2EL p95 s"}  # fmt: skip


def _verify_table(deploy: Path, report: Any, served: bool) -> Table:
    """Served against measured, figure by figure (a latency's ratio is trial / served when served)."""
    from autoinfer.served.verify import COMPARED, LATENCY_BAND

    band = f"tok/s ratio passes in {report.tolerance:.2f}-{report.max_ratio:.2f}"
    if served:
        band = (f"throughput ratios pass in {report.tolerance:.2f}-{report.max_ratio:.2f}, latency ratios "
                f"(trial / served) in {1 / LATENCY_BAND:.2f}-{LATENCY_BAND:.2f}")  # fmt: skip
    table = Table(title=f"{deploy}: served vs trial {report.trial}", caption=band)
    for col in ("", "served", "trial", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    for key in report.served:
        a, b = report.served[key], report.measured[key]
        ratio = (b / a if a else None) if COMPARED.get(key) == "min" else (a / b if b else None)
        table.add_row(LABELS.get(key, key), _fmt(a, ".3g"), _fmt(b, ".3g"), _fmt(ratio, ".2f"))
    if not served:
        table.add_row("identical outputs", f"{report.identical}/{report.prompts}", "", "")
    return table


def _quiet() -> None:
    """Keep the terminal for our progress: library chatter goes to the trial logs or nowhere."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    for name in ("optuna", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_libraries() -> None:
    """Optuna and MLflow set their own loggers to INFO when first imported, after `_quiet` ran:
    set them again once they are loaded ("A new study created", "Creating initial ... tables")."""
    import logging

    import mlflow  # noqa: F401 - imported for its logger set-up, which this overrides
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    _quiet()
    # A shell starts background jobs with SIGINT ignored, and Python keeps that; `kill -INT` must
    # still stop a search or verify cleanly (trial re-queued, server stopped), as Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except AutoinferError as e:
        print(f"error: {e}", file=sys.stderr)  # one line, never wrapped
        sys.exit(e.exit_code)
