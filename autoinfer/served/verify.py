"""Export and verify of a served trial: the load point ships with the server command, and
`autoinfer verify` replays it against the shipped server and holds the result to the trial's.

The deployment config's `served` block holds what the load generator needs to send the same load
again (the prompts, the arrival process, the request count, max_tokens, the route) and the SLO the
trial was ranked under. Verify starts the exported server on loopback with an API key, warms it up
as the trial did, sends the load, and compares goodput, SLO attainment, tokens/s and the p95
latencies with the trial's inside a two-sided band (`--tolerance`, `--max-ratio`: for a latency the
band applies to trial / served, so slower is below 1 either way). Outputs are not compared: the
load generator keeps timings and token counts, not texts (an offline trial's export is where
verify compares outputs token for token).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from pathlib import Path
from typing import Any

from autoinfer.config import Config
from autoinfer.errors import ConfigError
from autoinfer.export.verify import (
    DEFAULT_MAX_RATIO,
    DEFAULT_TOLERANCE,
    Report,
    check_band,
    check_files,
    read_deploy,
    server_argv,
)
from autoinfer.record import TrialRecord
from autoinfer.served.loadgen import Load
from autoinfer.served.settings import LoadPoint
from autoinfer.served.slo import Slo, summarize
from autoinfer.served.trial import ENDPOINT, RENAMED

# A p95 over the few tens of requests a load point has moves more between runs than a mean: a
# replay of the SmolLM2 llama-server trial (16 requests at 2 req/s) served its TTFT p95 at 0.73x
# the trial's while goodput and tok/s were within 3 %. Latencies therefore pass within a factor of
# LATENCY_BAND either way; throughputs within verify's tolerance band.
LATENCY_BAND = 2.0
# What verify compares, and which way is better: a latency's ratio is taken as trial / served.
COMPARED = {
    "goodput_rps": "max",
    "slo_attainment": "max",
    "tokens_per_s": "max",
    "ttft_p95_s": "min",
    "tpot_p95_s": "min",
    "e2el_p95_s": "min",
}


def with_served_block(data: dict[str, Any], config: Config, rec: TrialRecord | None) -> dict[str, Any]:
    """A deployment config with the `served` block of a served trial (before `measured`); any other
    trial's as it is."""
    if rec is None or not rec.provenance.served:
        return data
    out = {k: v for k, v in data.items() if k != "measured"}
    return {**out, "served": served_block(config, rec), "measured": data["measured"]}


def served_block(config: Config, rec: TrialRecord) -> dict[str, Any]:
    """The deployment config's `served` block of a served trial (export)."""
    from autoinfer.evaluators.workload import load_prompts, prompt_set

    served, wl = config.workload.served, config.workload
    if served is None:
        raise ConfigError("workload.mode", "the study is offline now, but this trial was served", "")
    prov = rec.provenance.served
    prompts = prompt_set(load_prompts(wl.prompts, Path(config.base_dir)), wl.prompt_count)
    lp = LoadPoint.parse(rec.point.load or served.loads()[0])
    return {
        "load": {
            "requests": served.requests,
            "warmup_requests": served.warmup_requests,
            "request_rate": "inf" if math.isinf(lp.rate) else lp.rate,
            "concurrency": lp.concurrency,
            "burstiness": served.burstiness,
            "max_tokens": wl.max_new_tokens,
            "endpoint": prov.get("endpoint", ENDPOINT),
            "model": str(config.model.source),
        },
        "slo": dict(served.slo.model_dump()),
        "prompts": prompts,
    }


def verify_served(
    path: Path,
    tolerance: float = DEFAULT_TOLERANCE,
    startup_s: float = 300.0,
    max_ratio: float = DEFAULT_MAX_RATIO,
    api_key: str | None = None,
    latency_band: float = LATENCY_BAND,
) -> Report:
    """Replay the served trial's load against the shipped server; the report compares the two."""
    from autoinfer.export.server import started_server
    from autoinfer.served.loadgen import run_load

    check_band(tolerance, max_ratio)
    where = str(path)
    data = _read(path)
    runtime, block, measured = data["runtime"], data["served"], data["measured"]
    check_files(runtime, where)
    argv = server_argv(runtime, where)
    key_env = runtime.get("api_key_env")
    key = (api_key or secrets.token_urlsafe(24)) if key_env else None
    env = {str(key_env): key} if key_env and key else None
    log = path.parent / f"{path.stem}.verify-server.log"
    with started_server(argv, log, path.parent.resolve(), startup_s, env) as server:
        load = _load(block, server.port, key)
        if block["load"].get("warmup_requests"):
            warm = int(block["load"]["warmup_requests"])
            run_load(dataclasses.replace(load, num_requests=warm, request_rate=math.inf, max_concurrency=None))
        result = run_load(load)
    got = {RENAMED.get(k, k): float(v) for k, v in summarize(result, Slo(**block["slo"])).flat().items()}
    trial = {k: float(v) for k, v in measured["metrics"].items()}
    names = [n for n in COMPARED if n in trial and n in got]
    report = Report(
        trial=int(measured["trial"]), served={n: got[n] for n in names}, measured={n: trial[n] for n in names},
        identical=0, prompts=0, command=" ".join(argv), mlflow_run_id=measured.get("mlflow_run_id"),
        mlflow_tracking_uri=measured.get("mlflow_tracking_uri"), tolerance=tolerance, max_ratio=max_ratio,
    )  # fmt: skip
    for n in names:
        low, high = (1 / latency_band, latency_band) if COMPARED[n] == "min" else (tolerance, max_ratio)
        if failure := band_failure(n, got[n], trial[n], low, high):
            report.failures.append(failure)
    return report


def band_failure(name: str, served: float, trial: float, tolerance: float, max_ratio: float) -> str:
    """Why `served` is outside the band around the trial's figure ('' when inside)."""
    if trial == 0 or served == 0:
        return "" if served == trial else f"{name}: served {served:.3g}, trial {trial:.3g}"
    ratio = served / trial if COMPARED[name] == "max" else trial / served
    if ratio < tolerance:
        return f"{name}: served {served:.3g} against the trial's {trial:.3g} (ratio {ratio:.2f} < {tolerance:.2f})"
    if ratio > max_ratio:
        return (f"{name}: served {served:.3g} against the trial's {trial:.3g} (ratio {ratio:.2f} > {max_ratio:.2f}): "
                "the trial's own figure is off (measured on a busy machine?); re-measure it")  # fmt: skip
    return ""


def is_served_deployment(path: Path) -> bool:
    """Whether `path` is the deployment config of a served trial (it has a `served` block)."""
    try:
        return "served" in _read(path)
    except ConfigError:
        return False


def _read(path: Path) -> dict[str, Any]:
    data = read_deploy(path)
    if "served" in data and not isinstance(data["served"], dict):
        raise ConfigError("served", "not a mapping", str(path))
    return data


def _load(block: dict[str, Any], port: int, key: str | None) -> Load:
    load = block["load"]
    rate = load.get("request_rate")
    return Load(
        base_url=f"http://127.0.0.1:{port}", model=str(load["model"]), num_requests=int(load["requests"]),
        endpoint=load.get("endpoint", ENDPOINT), prompts=tuple(block["prompts"]), output_len=int(load["max_tokens"]),
        request_rate=math.inf if rate in (None, "inf") else float(rate), burstiness=float(load.get("burstiness", 1.0)),
        max_concurrency=load.get("concurrency"), ignore_eos=True, api_key=key,
    )  # fmt: skip
