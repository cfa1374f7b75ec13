"""`autoinfer serve deploy.yaml`: an OpenAI-compatible server on the very engine a trial measured.

For configurations no stock server reproduces (transformers with torchao or optimum-quanto weights,
prompt lookup, early exit), the engine code that was measured serves requests itself: it loads the
configuration exactly as the trial did and batches up to `batch_size` concurrent requests into one
`generate_ids` call, as the trial's batches were. The HTTP side (FastAPI on uvicorn, the OpenAI
routes) is `autoinfer.export.openai_app`; this module loads the engine, runs the batches and starts
the server.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoinfer.engines.base import Engine, TrialPoint
from autoinfer.errors import ConfigError
from autoinfer.export.openai_schema import APIError, FinishReason

BATCH_WINDOW_S = 0.05  # how long the first request of a batch waits for companions


@dataclass
class Request:
    ids: list[int]
    max_tokens: int
    ignore_eos: bool
    done: Future[tuple[int, ...]] = field(default_factory=Future)


@dataclass(frozen=True)
class Output:
    """One request's answer, as the routes report it."""

    text: str
    token_ids: tuple[int, ...]  # generated, end token included
    prompt_tokens: int
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def load_engine(path: Path) -> tuple[Engine, dict[str, Any]]:
    """The engine of a deployment config, loaded in its measured configuration."""
    from autoinfer.engines import ENGINES
    from autoinfer.trial import set_threads

    data, cfg, point = _deployment(path)
    threads = set_threads(point)
    if point.engine == "transformers":
        import torch

        torch.set_num_threads(threads)
    engine = ENGINES.get(point.engine).load_class()(cfg, point)
    engine.load()
    return engine, data


def _deployment(path: Path) -> tuple[dict[str, Any], Any, TrialPoint]:
    """The deployment's data, the study settings its engine reads, and its point; a file that is
    not a servable deployment is one ConfigError (exit 2), never a traceback."""
    import pydantic
    import yaml

    from autoinfer.config import Config

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("", f"cannot read the deployment config: {e}", str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("", "not a deployment config (write one with autoinfer export)", str(path))
    runtime = data.get("runtime") or {}
    cfg = runtime.get("engine_config")
    if not cfg:
        serve = runtime.get("serve")
        if serve and not str(serve).startswith("autoinfer serve"):  # llama.cpp, vLLM: their own server
            raise ConfigError("runtime.serve", f"this trial is served by its own server: {serve}", str(path))
        raise ConfigError("runtime.engine_config", "missing: export this trial again with this autoinfer", str(path))
    try:
        point = TrialPoint(**{k: data[k] for k in ("engine", "quantization", "draft", "batch_size", "hardware")},
                           draft_tokens=int(data.get("draft_tokens") or 0),
                           compile_mode=str(data.get("compile_mode") or ""))  # fmt: skip
        return data, Config.model_validate(cfg), point
    except KeyError as e:
        raise ConfigError(str(e.args[0]), "missing", str(path)) from None
    except (pydantic.ValidationError, TypeError, ValueError) as e:
        raise ConfigError("runtime.engine_config", f"invalid: {str(e).splitlines()[0]}", str(path)) from None


class Served:
    """A loaded engine behind a queue: requests from any thread or event loop, generated in batches
    of up to `batch_size` on one thread (the engine is not thread-safe, and the trial ran one batch
    at a time)."""

    def __init__(self, engine: Engine, model: str, max_tokens: int, window_s: float = BATCH_WINDOW_S) -> None:
        self.engine = engine
        self.model = model  # the id clients name it by (GET /v1/models)
        self.max_tokens = max_tokens  # the deployment's max_new_tokens: the chat route's default
        self.window_s = window_s
        self.created = int(time.time())
        self.end_ids = frozenset(engine.end_ids())
        self.inbox: queue.Queue[Request] = queue.Queue()
        threading.Thread(target=self._batches, daemon=True, name="batcher").start()

    def _batches(self) -> None:
        """Gather up to batch_size requests (waiting window_s for the first's companions) and
        generate them together."""
        b = self.engine.point.batch_size
        while True:
            batch = [self.inbox.get()]
            deadline = time.monotonic() + self.window_s
            while len(batch) < b:
                try:
                    batch.append(self.inbox.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            # A request whose client left (its future cancelled) is dropped; the rest can no longer
            # be cancelled, so setting their results cannot fail and stop this thread.
            batch = [r for r in batch if r.done.set_running_or_notify_cancel()]
            # One generate call per setting; a mixed batch (rare) is split by it.
            groups: dict[tuple[int, bool], list[Request]] = {}
            for r in batch:
                groups.setdefault((r.max_tokens, r.ignore_eos), []).append(r)
            for (max_tokens, ignore_eos), rs in groups.items():
                self._generate(rs, max_tokens, ignore_eos)

    def _generate(self, rs: list[Request], max_tokens: int, ignore_eos: bool) -> None:
        """One generate call for `rs`; if it fails, each request again on its own, so one bad
        request (an id past the vocabulary, a prompt past the context) fails only itself."""
        try:
            g = self.engine.generate_ids([r.ids for r in rs], max_tokens, ignore_eos)
        except Exception as e:  # noqa: BLE001 - the client gets the error, the server keeps serving
            if len(rs) == 1:
                rs[0].done.set_exception(e)
                return
            for r in rs:
                self._generate([r], max_tokens, ignore_eos)
            return
        for r, ids in zip(rs, g.token_ids, strict=True):
            r.done.set_result(ids)

    def finish_reason(self, ids: tuple[int, ...], max_tokens: int, ignore_eos: bool) -> FinishReason:
        """`stop` for an answer that ended at an end token, `length` for one cut at max_tokens."""
        ended = not ignore_eos and bool(ids) and ids[-1] in self.end_ids
        return "stop" if ended or len(ids) < max_tokens else "length"

    async def generate(self, ids: list[int], max_tokens: int, ignore_eos: bool) -> Output:
        """One request's greedy answer, generated in a batch with whatever else is waiting."""
        req = Request(ids, max_tokens, ignore_eos)
        self.inbox.put(req)
        try:
            out = await asyncio.wrap_future(req.done)
        except Exception as e:  # any engine failure is the server's (500), named
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from e
        return Output(self.engine.text(out), out, len(ids), self.finish_reason(out, max_tokens, ignore_eos))


def serve(
    path: Path, host: str, port: int, model_name: str | None = None, ready: threading.Event | None = None
) -> None:
    """Load the deployment's engine, then serve it until interrupted (health is 200 from the start:
    nothing listens before the engine is loaded)."""
    import uvicorn

    from autoinfer.export.openai_app import create_app

    engine, data = load_engine(path)
    name = model_name or str(data["model"].get("source"))
    max_tokens = int((data.get("generation") or {}).get("max_new_tokens") or 16)
    app = create_app(Served(engine, name, max_tokens))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, ws="none",
                            timeout_graceful_shutdown=5)  # fmt: skip
    print(f"serving {engine.point.label()} as {name!r} on http://{host}:{port}/v1", flush=True)
    if ready is not None:
        ready.set()
    uvicorn.Server(config).run()
