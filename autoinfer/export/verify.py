"""`autoinfer verify`: start the server a deployment config exports, send it the trial's own
prompts at the measured concurrency, and compare what it returns with what the trial measured.

The server runs on loopback on a free port, as a child that dies with this process however this
process ends (Ctrl-C, SIGTERM, kill -9: a parent-death signal), and is stopped on every way out.
Requests go through the OpenAI-compatible `/v1/completions` route, streamed, with the exact token
ids the trial fed its engine as the prompt (the OpenAI API takes a token array), so the chat
template and tokenizer are the trial's and only the server's decoding is under test. Where the
server returns the generated token ids (the runtime block's `request` asks vLLM for them), those
are compared with the trial's token for token; otherwise the texts are.

The server is started with an API key in its environment (the variable its runtime block names),
the one given or a fresh random one, and every request carries it: the key path a deployment
relies on is exercised on every run, and nothing unauthenticated is served meanwhile.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoinfer.cache import file_digest, tree_digest
from autoinfer.errors import ConfigError, VerifyFailed
from autoinfer.evaluators.throughput import percentile
from autoinfer.export.server import auth, http_get, running_server
from autoinfer.record import Generations

# The band served tokens/s must fall in, as a fraction of the trial's. Below it the served copy is
# slower than what was ranked. Above it the trial's own figure was wrong (measured on a busy machine,
# say), and so was its rank: one was measured at 53 tok/s and served at 106 (ratio 1.99). The upper
# default leaves room for what is normal here: this VM's 10-30 % run-to-run variance plus serving
# differences (a re-measured trial served at 1.20); twice as fast is not noise.
DEFAULT_TOLERANCE = 0.8
DEFAULT_MAX_RATIO = 1.5


@dataclass(frozen=True)
class Reply:
    """One request as the client saw it."""

    text: str
    tokens: int  # completion tokens the server reports
    ttft_s: float  # request sent -> first chunk with text or token ids
    latency_s: float  # request sent -> last chunk
    token_ids: tuple[int, ...] | None = None  # the generated ids, where the server returns them


@dataclass(frozen=True)
class Expected:
    """What the deployment config says the trial measured, and what it generated."""

    trial: int
    tokens_per_s: float
    ttft_p50_s: float
    latency_p50_s: float
    latency_p95_s: float
    batch_size: int
    repeats: int
    max_new_tokens: int
    ignore_eos: bool
    generations: Generations


@dataclass
class Report:
    trial: int
    served: dict[str, float]  # client-side figures of the served copy
    measured: dict[str, float]  # the trial's own
    identical: int  # prompts whose served text equals the trial's
    prompts: int
    first_difference: str = ""
    server_version: str = ""
    command: str = ""
    failures: list[str] = field(default_factory=list)
    # Where the trial is logged (from the deployment config): the result is recorded there too.
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None
    # The band served tokens/s must fall in, as a fraction of the trial's: both sides are checked.
    tolerance: float = DEFAULT_TOLERANCE
    max_ratio: float = DEFAULT_MAX_RATIO

    @property
    def passed(self) -> bool:
        return not self.failures


# -- reading the deployment config ---------------------------------------------------------------


def read_deploy(path: Path) -> dict[str, Any]:
    """A deployment config's data; one that cannot be read or is not one is a ConfigError."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("", f"cannot read the deployment config: {e}".splitlines()[0], str(path)) from None
    if not isinstance(data, dict) or "runtime" not in data or "measured" not in data:
        raise ConfigError("", "not an autoinfer deployment config (no runtime/measured blocks)", str(path))
    return data


def load_deploy(path: Path) -> tuple[dict[str, Any], Expected]:
    data = read_deploy(path)
    m = data["measured"]
    outputs = m.get("outputs_file")
    if not outputs:
        why = "missing: export with --out, which writes the trial's outputs beside the config"
        raise ConfigError("measured.outputs_file", why, str(path))
    out_path = path.parent / outputs
    if not out_path.is_file():
        raise ConfigError("measured.outputs_file", f"{out_path} does not exist", str(path))
    if m.get("outputs_sha256") and file_digest(out_path) != m["outputs_sha256"]:
        raise ConfigError("measured.outputs_file", f"{out_path} does not match its recorded sha256", str(path))
    try:
        return data, _expected(data, m, Generations.from_dict(json.loads(out_path.read_text())))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError("measured", f"incomplete or malformed ({type(e).__name__}: {e})", str(path)) from None


def _expected(data: dict[str, Any], m: dict[str, Any], gen: Generations) -> Expected:
    metrics = m["metrics"]
    return Expected(
        trial=int(m["trial"]),
        tokens_per_s=float(metrics["tokens_per_s"]),
        ttft_p50_s=float(metrics["ttft_p50_s"]),
        latency_p50_s=float(metrics["latency_p50_s"]),
        latency_p95_s=float(metrics["latency_p95_s"]),
        batch_size=int(data["batch_size"]),
        repeats=int(m.get("repeats") or 1),
        max_new_tokens=int(data["generation"]["max_new_tokens"]),
        ignore_eos=bool(data["generation"].get("ignore_eos", False)),
        generations=gen,
    )


def check_files(runtime: dict[str, Any], where: str) -> None:
    """The GGUF the config names must be the one the trial measured, byte for byte; a checkpoint
    directory it names (vLLM's) must be there."""
    gguf = runtime.get("gguf") or {}
    base = Path(where).parent
    for key in ("checkpoint", "draft_checkpoint"):
        if path_text := runtime.get(key):
            _check_checkpoint(key, base / path_text, runtime.get(f"{key}_sha256"), where)
    for key, path_text, want in (
        ("runtime.gguf.path", gguf.get("path"), gguf.get("sha256")),
        ("runtime.draft_gguf", runtime.get("draft_gguf"), (runtime.get("draft") or {}).get("gguf_sha256")),
    ):
        if not path_text:
            continue
        path = Path(path_text) if Path(path_text).is_absolute() else base / path_text
        if not path.is_file():
            raise ConfigError(key, f"{path} does not exist", where)
        if not want:
            continue  # a trial that recorded no digest for this file
        got = file_digest(path)
        if got != want:
            raise VerifyFailed(
                f"{where}: {key}: {path} is not the file the trial measured (sha256 {got[:12]}…, recorded {want[:12]}…)"
            )


def _check_checkpoint(key: str, path: Path, want: str | None, where: str) -> None:
    """A vLLM checkpoint directory: there (in the cache, or copied beside the config by
    `export --copy-files`), and the one the trial measured where the trial recorded its digest."""
    if not path.is_dir():
        raise ConfigError(f"runtime.{key}", f"{path} does not exist (re-run the trial to remake it)", where)
    if want and (got := tree_digest(path)) != want:
        raise VerifyFailed(
            f"{where}: runtime.{key}: {path} is not the checkpoint the trial measured "
            f"(sha256 {got[:12]}…, recorded {want[:12]}…)"
        )


# -- the requests --------------------------------------------------------------------------------


def complete(
    port: int,
    prompt: list[int],
    max_tokens: int,
    ignore_eos: bool,
    timeout: float,
    extra: dict[str, Any] | None = None,
    api_key: str | None = None,
) -> Reply:
    """One streamed greedy completion of a token-id prompt; `extra`: the runtime block's own request
    fields (what that server needs to decode as the trial did, or to return token ids)."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,  # greedy, as the trial decoded
        "stream": True,
        "cache_prompt": False,  # every request evaluates its whole prompt, as every trial batch did
        "ignore_eos": ignore_eos,
        **(extra or {}),
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return _streamed(conn, body, api_key)
    except (OSError, http.client.HTTPException, ValueError) as e:  # died, hung or sent garbage mid-request
        raise VerifyFailed(f"a request to the server failed: {type(e).__name__}: {e}") from None
    finally:
        conn.close()


def _streamed(conn: http.client.HTTPConnection, body: dict[str, Any], api_key: str | None = None) -> Reply:
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json", **auth(api_key)})
    r = conn.getresponse()
    if r.status != 200:
        raise VerifyFailed(f"the server answered {r.status}: {r.read()[:300].decode(errors='replace')}")
    parts: list[str] = []
    ids: list[int] | None = None
    first = last = 0.0
    tokens = 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        now = time.perf_counter() - start
        text = "".join(c.get("text") or "" for c in chunk.get("choices", []))
        new = [t for c in chunk.get("choices", []) for t in c.get("token_ids") or []]
        if any("token_ids" in c for c in chunk.get("choices", [])):
            ids = (ids or []) + new
        if text or new:  # a first token may decode to no text yet (part of a character)
            parts.append(text)
            first = first or now
        last = now
        usage = chunk.get("usage")
        if usage:
            tokens = int(usage.get("completion_tokens", 0))
    return Reply("".join(parts), tokens, first or last, last, None if ids is None else tuple(ids))


def serve_pass(
    port: int,
    prompts: list[list[int]],
    exp: Expected,
    timeout: float,
    extra: dict[str, Any] | None = None,
    api_key: str | None = None,
) -> tuple[list[Reply], float]:
    """Every prompt once, `batch_size` requests in flight at a time; replies in prompt order."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    pool = ThreadPoolExecutor(exp.batch_size)
    try:
        n, eos = exp.max_new_tokens, exp.ignore_eos
        futures = [pool.submit(complete, port, p, n, eos, timeout, extra, api_key) for p in prompts]
        replies = [f.result() for f in futures]
    finally:
        # On Ctrl-C, do not wait for requests in flight: the server is stopped next, which ends them.
        pool.shutdown(wait=False, cancel_futures=True)
    return replies, time.perf_counter() - start


def first_difference(served: list[Any], trial: tuple[Any, ...]) -> str:
    """Where the served outputs first part from the trial's: texts (characters) or token ids."""
    unit = "character" if all(isinstance(x, str) for x in served) else "token"
    for i, (a, b) in enumerate(zip(served, trial, strict=True)):
        a, b = (a, b) if unit == "character" else (list(a), list(b))
        if a != b:
            j = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            return f"prompt {i} differs at {unit} {j}: served {a[j : j + 20]!r}, trial {b[j : j + 20]!r}"
    return ""


def _outputs(replies: list[Reply], gen: Generations) -> tuple[list[Any], tuple[Any, ...]]:
    """What is compared: the token ids where the server returned them for every reply (exact),
    else the texts."""
    if all(r.token_ids is not None for r in replies):
        return [r.token_ids for r in replies], gen.output_ids
    return [r.text for r in replies], gen.texts


def _server_version(port: int, runtime: dict[str, Any], api_key: str | None = None) -> str:
    """llama-server's build (/props), else vLLM's version (/version), else what the config says."""
    for route, key in (("/props", "build_info"), ("/version", "version")):
        try:
            status, body = http_get(port, route, api_key=api_key)
            if status == 200 and json.loads(body).get(key):
                return str(json.loads(body)[key])
        except (OSError, ValueError, AttributeError):
            pass
    return str(runtime.get("vllm") or "")


def server_argv(runtime: dict[str, Any], where: str) -> list[str]:
    serve = runtime.get("serve")
    if not serve:
        raise ConfigError("runtime.serve", "no server command to run for this engine", where)
    argv = shlex.split(serve)
    if argv[:2] == ["autoinfer", "serve"]:  # the measured engine itself, from this installation
        return [sys.executable, "-m", "autoinfer", "serve", str(Path(where).resolve())]
    binary = argv[0]
    if os.sep not in binary:
        import shutil

        found = shutil.which(binary)
        if found is None:
            raise ConfigError("runtime.serve", f"{binary} is not on PATH (scripts/setup.sh builds it)", where)
        argv[0] = found
    elif not Path(binary).is_file():
        raise ConfigError("runtime.serve", f"{binary} does not exist (scripts/setup.sh builds it)", where)
    return argv


def check_band(tolerance: float, max_ratio: float) -> None:
    """A band around 1: 0 < tolerance < 1 < max_ratio (max_ratio may be inf: no upper check)."""
    if not 0 < tolerance < 1:
        raise ConfigError("--tolerance", f"must be a fraction between 0 and 1 (got {tolerance})")
    if not max_ratio > 1:
        raise ConfigError("--max-ratio", f"must be above 1 (got {max_ratio})")


def speed_failure(served_tps: float, trial_tps: float, tolerance: float, max_ratio: float) -> str:
    """Why served tokens/s is outside the band around the trial's, or "" when inside."""
    ratio = served_tps / trial_tps if trial_tps > 0 else 0.0
    if ratio < tolerance:
        return (
            f"served {served_tps:.1f} tok/s is {ratio:.0%} of the trial's {trial_tps:.1f} "
            f"(tolerance {tolerance:.0%}, band {tolerance:.2f}-{max_ratio:.2f})"
        )
    if ratio > max_ratio:
        return (
            f"served {served_tps:.1f} tok/s is {ratio:.2f}x the trial's {trial_tps:.1f} "
            f"(above --max-ratio {max_ratio:.2f}): the trial's figure is off (measured on a busy machine?), "
            "and so is its rank; re-measure the trial"
        )
    return ""


def served_figures(passes: list[tuple[list[Any], float]]) -> dict[str, float]:
    """Tokens/s over every measured pass, and TTFT and latency percentiles over every reply."""
    replies = [r for p, _ in passes for r in p]
    wall = sum(w for _, w in passes)
    return {
        "tokens_per_s": sum(r.tokens for r in replies) / wall if wall > 0 else 0.0,
        "ttft_p50_s": percentile([r.ttft_s for r in replies], 50),
        "latency_p50_s": percentile([r.latency_s for r in replies], 50),
        "latency_p95_s": percentile([r.latency_s for r in replies], 95),
    }


def verify(
    path: Path,
    tolerance: float = DEFAULT_TOLERANCE,
    startup_s: float = 300.0,
    request_timeout_s: float = 600.0,
    max_ratio: float = DEFAULT_MAX_RATIO,
    api_key: str | None = None,
) -> Report:
    check_band(tolerance, max_ratio)
    where = str(path)
    data, exp = load_deploy(path)
    runtime = data["runtime"]
    check_files(runtime, where)
    argv = server_argv(runtime, where)
    prompts = [list(p) for p in exp.generations.prompt_ids]
    log = path.parent / f"{path.stem}.verify-server.log"
    extra = runtime.get("request")
    # Exports from before servers took a key name no variable: those run as they were written.
    key_env = runtime.get("api_key_env")
    key = (api_key or secrets.token_urlsafe(24)) if key_env else None
    env = {str(key_env): key} if key_env and key else None
    with running_server(argv, log, path.parent.resolve(), startup_s, env) as port:
        t = request_timeout_s
        serve_pass(port, prompts[: exp.batch_size], exp, t, extra, key)  # warm-up, unmeasured
        passes = [serve_pass(port, prompts, exp, t, extra, key) for _ in range(exp.repeats)]
        version = _server_version(port, runtime, key)
    served = served_figures(passes)
    measured = {
        "tokens_per_s": exp.tokens_per_s,
        "ttft_p50_s": exp.ttft_p50_s,
        "latency_p50_s": exp.latency_p50_s,
        "latency_p95_s": exp.latency_p95_s,
    }
    outputs, trial_outputs = _outputs(passes[0][0], exp.generations)
    report = Report(
        trial=exp.trial,
        served=served,
        measured=measured,
        identical=sum(a == b for a, b in zip(outputs, trial_outputs, strict=True)),
        prompts=len(outputs),
        first_difference=first_difference(outputs, trial_outputs),
        server_version=version,
        command=" ".join(shlex.quote(a) for a in argv),
        mlflow_run_id=data["measured"].get("mlflow_run_id"),
        mlflow_tracking_uri=data["measured"].get("mlflow_tracking_uri"),
        tolerance=tolerance,
        max_ratio=max_ratio,
    )
    if report.first_difference:
        report.failures.append(f"outputs differ from trial {exp.trial}: {report.first_difference}")
    later = [i for i, (p, _) in enumerate(passes[1:], 1) if _outputs(p, exp.generations)[0] != outputs]
    if later:
        report.failures.append(f"the server's own outputs changed between passes (pass {later[0]} vs pass 0)")
    slow_or_fast = speed_failure(served["tokens_per_s"], exp.tokens_per_s, tolerance, max_ratio)
    if slow_or_fast:
        report.failures.append(slow_or_fast)
    return report


def log_report(report: Report) -> str:
    """Record the verification on the trial's MLflow run; says where, or why not."""
    run_id, uri = report.mlflow_run_id, report.mlflow_tracking_uri
    if not run_id or not uri:
        return "not logged to MLflow: the deployment config names no run (or its tracking URI holds a secret)"
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        metrics = {f"verify.{k}": v for k, v in report.served.items()}
        metrics["verify.identical_outputs"] = float(report.identical)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_tag(run_id, "autoinfer.verified", "pass" if report.passed else "fail: " + "; ".join(report.failures))
        client.log_dict(run_id, dataclasses.asdict(report), "verify/report.json")
    except Exception as e:  # noqa: BLE001 - the verification stands whether or not it could be logged
        return f"not logged to MLflow ({uri}): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return f"logged to MLflow run {run_id} ({uri})"
