"""The measured window of a served trial: the point's exported server under one load point.

Called by `autoinfer.trial.run_trial` once the engine has been loaded in-process (for what it
records: the GGUF, the checkpoint, the context; and for accuracy, scored on that loaded model as
in offline trials) and closed again. Here the server `autoinfer export` would ship for the point is
started on loopback with a fresh API key, warmed up, and driven by vLLM's load generator
(`loadgen`) while the energy meter, the busy-machine guard and the memory window run; `slo`
turns the per-request arrays into goodput and percentiles, and the arrays are kept whole in the
trial's provenance so another SLO is recomputed from them, not re-measured.

Billing: the server is a child of the trial process, so the busy-machine guard counts it (and the
load generator, which runs in the trial process) as the trial's own work. A CPU-time energy
estimate bills the server's process tree only; the generator's CPU seconds are recorded beside
it (`client_cpu_s`), not added. A RAPL or NVML counter reads the whole package or device, so there
the generator's share is inside the figure, and `client_cpu_s` says how large it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoinfer.config import Config
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import TrialError, VerifyFailed
from autoinfer.evaluators.energy import EnergyReading
from autoinfer.evaluators.machine_load import LoadGuard, LoadReading
from autoinfer.evaluators.memory import MemoryReading
from autoinfer.served.command import ServerCommand, server_command
from autoinfer.served.loadgen import Endpoint, Load, LoadResult
from autoinfer.served.settings import LoadPoint, ServedConfig
from autoinfer.served.slo import Slo, is_good, summarize

# The summary's names as metrics: one name per quantity across modes (tokens_per_s, wall_s).
RENAMED = {"sent": "requests_sent", "completed": "completed_requests", "failed": "failed_requests",
           "good": "good_requests", "duration_s": "wall_s", "output_tokens_per_s": "tokens_per_s"}  # fmt: skip
LOG_TAIL_LINES = 15
# Chat, so each server renders the prompts through the model's chat template as offline trials do,
# and because it is the route whose usage chunk (choices: []) all three servers send and the
# generator reads: llama-server puts /v1/completions' usage on its last token chunk, which the
# generator skips, and would then count one token per request.
ENDPOINT: Endpoint = "/v1/chat/completions"  # of the server's log, in the error of a server that never became ready


@dataclass(frozen=True)
class ServedMeasurement:
    """What a served trial's measured window gave."""

    metrics: dict[str, float]
    energy: EnergyReading
    load: LoadReading | None  # the kept window's machine load (None without /proc)
    memory: MemoryReading  # peak of the trial's tree (server, and the generator in this process)
    good_tokens: int  # output tokens of the requests that met the SLO
    provenance: dict[str, Any]  # command, load point, SLO, per-request arrays, server start


def served_of(config: Config) -> ServedConfig:
    """The load point of a served config (validation fills in the defaults for `mode: served`)."""
    served = config.workload.served
    if served is None:
        raise ValueError("not a served config: workload.mode is offline")
    return served


def slo_of(config: Config) -> Slo:
    s = served_of(config).slo
    return Slo(ttft_s=s.ttft_s, tpot_s=s.tpot_s, e2el_s=s.e2el_s)


def load_of(config: Config, point: TrialPoint, cmd: ServerCommand, port: int, prompts: list[str],
            key: str | None) -> Load:  # fmt: skip
    """The generator's load for the point's load point (a point from before loads were points:
    the config's first)."""
    served, wl = served_of(config), config.workload
    lp = LoadPoint.parse(point.load or served.loads()[0])
    return Load(
        base_url=f"http://127.0.0.1:{port}", model=cmd.model, num_requests=served.requests,
        endpoint=ENDPOINT, prompts=tuple(prompts), output_len=wl.max_new_tokens, request_rate=lp.rate,
        burstiness=served.burstiness, max_concurrency=lp.concurrency, warmup_requests=0, ignore_eos=True,
        timeout_s=served.timeout_s, api_key=key,
    )  # fmt: skip


def good_tokens(result: LoadResult, slo: Slo) -> int:
    return sum(result.output_tokens[i] for i in range(len(result.success)) if is_good(result, slo, i))


@dataclass(frozen=True)
class Serving:
    """A started server of a served point: its command, process, API key and start-up time."""

    cmd: ServerCommand
    port: int
    pid: int
    key: str | None
    started_s: float  # from starting the process to a healthy /health
    log: Path


@contextmanager
def serving(
    config: Config, point: TrialPoint, info: dict[str, Any], stage: Callable[[str], None], trap_sigterm: bool = True
) -> Iterator[Serving]:
    """The point's exported server, started on loopback with a fresh API key and stopped (with
    every process it started) when the block ends; one that never becomes healthy is a TrialError
    with the tail of its log."""
    from autoinfer.export.server import started_server

    with tempfile.TemporaryDirectory(prefix="autoinfer-served-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        cmd = server_command(config, point, info, folder)
        key = secrets.token_urlsafe(24) if cmd.key_env else None
        env = {cmd.key_env: key} if cmd.key_env and key else {}
        if prefix_cached(point):
            env["VLLM_SERVER_DEV_MODE"] = "1"  # for POST /reset_prefix_cache between load points
        log = folder / "server.log"
        stage("server start")
        start = time.perf_counter()
        try:  # only the start is a TrialError: an error while serving propagates as it is
            ctx = started_server(cmd.argv, log, folder, served_of(config).startup_timeout_s, env, trap_sigterm)
            server = stack.enter_context(ctx)
        except VerifyFailed as e:
            raise TrialError(f"the {point.engine} server did not serve: {e}\n{_tail(log)}") from None
        yield Serving(cmd, server.port, server.pid, key, time.perf_counter() - start, log)


def measure_served(
    config: Config, point: TrialPoint, info: dict[str, Any], prompts: list[str], guard: LoadGuard,
    stage: Callable[[str], None],
) -> ServedMeasurement:  # fmt: skip
    """Start the point's exported server, run the load point under the meters, stop the server."""
    with serving(config, point, info, stage) as s:
        return measure_load_point(config, point, s, prompts, guard, stage, reused=False)


def measure_load_point(
    config: Config, point: TrialPoint, s: Serving, prompts: list[str], guard: LoadGuard,
    stage: Callable[[str], None], reused: bool,
) -> ServedMeasurement:  # fmt: skip
    """One load point on a running server: warm-up, then the measured load under the meters. A
    server that served earlier points first has its prompt caches emptied (`reset_caches`)."""
    from autoinfer.evaluators.energy import meter_for
    from autoinfer.evaluators.memory import tree_window
    from autoinfer.evaluators.throughput import measured_window
    from autoinfer.served.loadgen import check_generator, run_load

    stage("served load")
    hw, en = point.hardware_spec, config.energy
    meter, _ = meter_for(hw, en.cpu_watts_per_core, en.cpu_static_watts_per_core, root=s.pid)
    load = load_of(config, point, s.cmd, s.port, prompts, s.key)
    check_generator()  # imported before the window: its import is not the server's work
    reset = reset_caches(s, point) if reused else "fresh server"
    warmup = served_of(config).warmup_requests
    if warmup:  # unmeasured, as the generator's own warm-up would be, but outside the meters
        run_load(dataclasses.replace(load, num_requests=warmup, request_rate=math.inf, max_concurrency=None))
    client = _ClientClock()
    with tree_window() as mem:
        result, ebox, reading, thrown = measured_window(lambda: client.timed(lambda: run_load(load)), meter, guard)
    assert ebox.reading is not None and mem.reading is not None
    slo = slo_of(config)
    summary = summarize(result, slo)
    # A server that sends an answer whole has no time per output token to report (its TTFT is its latency).
    flat = {k: v for k, v in summary.flat().items() if s.cmd.streams_tokens or not k.startswith(("tpot", "itl"))}
    metrics = {RENAMED.get(k, k): float(v) for k, v in flat.items()}
    tokens = sum(result.output_tokens[i] for i, ok in enumerate(result.success) if ok)
    metrics.update(generated_tokens=float(tokens), client_cpu_s=client.cpu_s, busy_remeasures=float(thrown))
    if not reused:  # a reused server's start-up was paid by the trial that started it
        metrics["server_start_s"] = s.started_s
    provenance = {
        "server": s.cmd.line,
        "server_reused": reused,
        "caches": reset,
        "streams_tokens": s.cmd.streams_tokens,
        "load": LoadPoint.parse(point.load or served_of(config).loads()[0]).label(),
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "e2el_s": slo.e2el_s},
        "endpoint": load.endpoint,
        "prompts": len(prompts),
        "requests": load.num_requests,
        "warmup_requests": warmup,
        "max_tokens": load.output_len,
        "client": "vLLM's load generator in the measuring process, one connection per request; "
        "its CPU time is client_cpu_s",
        "result": json.loads(result.to_json()),  # every request's timings: recompute any SLO
    }
    return ServedMeasurement(metrics, ebox.reading, reading, mem.reading, good_tokens(result, slo), provenance)


def reset_caches(s: Serving, point: TrialPoint) -> str:
    """What a reused server kept from earlier load points, in words (recorded as `caches`).

    vLLM's exported server runs with prefix caching off and autoinfer serve keeps no cache, so
    nothing carries over; a vLLM point that searched `prefix_caching: true` runs with vLLM's
    development routes on (VLLM_SERVER_DEV_MODE, loopback and the API key as everywhere; not in
    the exported command) so its cache is emptied here through POST /reset_prefix_cache.
    llama-server keeps each slot's last prompt and reuses its prefix (its
    default, and what a deployment of the exported command does); erasing a slot needs
    `--slot-save-path`, which the exported command does not have and a served trial must not add,
    so those stay. Each load point's warm-up refills the slots from the same prompt set, fresh
    server or not, which is what bounds that carry-over to the first requests of a point."""
    if point.engine == "llama.cpp":
        return "llama-server's slot prompt caches kept from the previous load point (same prompt set)"
    if not prefix_cached(point):
        return "nothing kept between load points (no prefix cache)"
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)  # loopback: no proxy, whatever the env
    try:
        conn.request("POST", "/reset_prefix_cache", headers={"Authorization": f"Bearer {s.key}"} if s.key else {})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        raise TrialError(f"vLLM's prefix cache could not be emptied between load points: {e}") from None
    finally:
        conn.close()
    if status != 200:
        raise TrialError(f"vLLM's prefix cache could not be emptied between load points: HTTP {status}")
    return "vLLM's prefix cache emptied before this load point (POST /reset_prefix_cache)"


def prefix_cached(point: TrialPoint) -> bool:
    """Whether the point's vLLM server keeps a prefix cache (a searched knob)."""
    from autoinfer.served.knobs import decode

    return point.engine == "vllm" and bool(decode("vllm", point.server_knobs).get("prefix_caching"))


class _ClientClock:
    """CPU seconds this process (the load generator) spent in the kept window."""

    cpu_s = 0.0

    def timed(self, work: Callable[[], LoadResult]) -> LoadResult:
        t0 = time.process_time()
        out = work()
        self.cpu_s = time.process_time() - t0
        return out


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(the server wrote nothing)"
