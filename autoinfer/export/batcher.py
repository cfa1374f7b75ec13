"""The engine side of `autoinfer serve`: a loaded engine behind a bounded queue, generating the
waiting requests in batches of up to the trial's `batch_size` on one thread.

Both the HTTP routes (`openai_app`) and the server's start-up (`serve`) import this module; neither
imports the other's internals through it, so the two stay free of an import circle.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from autoinfer.engines.base import Engine
from autoinfer.export.openai_schema import APIError, FinishReason

BATCH_WINDOW_S = 0.05  # how long the first request of a batch waits for companions
RETRY_AFTER_S = 1  # what a 429 tells a client to wait (seconds): about one batch of short answers here


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server. `context`: the engine's tokens per sequence (prompt
    and answer together), None where the engine does not say; `max_tokens`: the most new tokens a
    request may ask for; `max_queue`: requests waiting for a batch before new ones get 429;
    `max_body_bytes`: the largest request body read (413 past it)."""

    context: int | None = None
    max_tokens: int = 4096
    max_queue: int = 64
    max_body_bytes: int = 1 << 20  # 1 MiB: a prompt of the longest context as token ids is ~100 kB

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


Channel = Callable[[list[int] | None], None]  # a streamed request's tokens, then None (see Request)


@dataclass
class Request:
    ids: list[int]
    max_tokens: int
    ignore_eos: bool
    done: Future[tuple[int, ...]] = field(default_factory=Future)
    # A streamed request's channel, called on the batcher's thread: the answer's token ids as each
    # pass makes them, then None once `done` is settled (answer or failure).
    stream: Channel | None = None
    streamed: int = 0  # tokens handed to `stream` so far

    def put(self, ids: list[int] | None) -> None:
        if self.stream is not None:
            self.stream(ids)


class _Cut:
    """The engine's per-pass tokens handed to each streamed request, cut where its answer ends
    (at an end token unless ignore_eos, and at max_tokens), as the engine cuts `token_ids`."""

    def __init__(self, rs: list[Request], max_tokens: int, ignore_eos: bool, end_ids: frozenset[int]) -> None:
        self.rs, self.max_tokens, self.ignore_eos, self.end_ids = rs, max_tokens, ignore_eos, end_ids
        self.ended = [False] * len(rs)

    def __call__(self, rows: list[list[int]]) -> None:
        for i, (r, new) in enumerate(zip(self.rs, rows, strict=True)):
            take: list[int] = []
            for t in new:
                if self.ended[i]:
                    break
                take.append(t)
                self.ended[i] = r.streamed + len(take) >= self.max_tokens or (not self.ignore_eos and t in self.end_ids)
            if take:
                r.streamed += len(take)
                r.put(take)


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


class Served:
    """A loaded engine behind a queue: requests from any thread or event loop, generated in batches
    of up to `batch_size` on one thread (the engine is not thread-safe, and the trial ran one batch
    at a time). A batcher that died answers every waiting and later request with 503."""

    def __init__(
        self,
        engine: Engine,
        model: str,
        max_tokens: int,
        window_s: float = BATCH_WINDOW_S,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine
        self.model = model  # the id clients name it by (GET /v1/models)
        self.max_tokens = max_tokens  # the deployment's max_new_tokens: the chat route's default
        self.window_s = window_s
        self.limits = limits or Limits(context=engine.context_tokens())
        self.created = int(time.time())
        self.end_ids = frozenset(engine.end_ids())
        self.inbox: queue.Queue[Request] = queue.Queue(maxsize=self.limits.max_queue)
        self.died: str | None = None  # why the batcher stopped, once it has
        self.batch: list[Request] = []  # the requests the batcher holds now
        self.thread = threading.Thread(target=self._run, daemon=True, name="batcher")
        self.thread.start()

    # -- health --------------------------------------------------------------------------------

    def failure(self) -> str | None:
        """Why this server cannot answer (its batcher stopped), or None while it can."""
        if self.died is None and not self.thread.is_alive():
            self.died = "the batcher thread is gone"
        return self.died

    def _fail_waiting(self) -> None:
        """Answer every request in the batch it was on and in the queue with the batcher's failure,
        so none waits forever."""
        waiting = list(self.batch)
        while True:
            try:
                waiting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for r in waiting:
            if not isinstance(r, Request) or r.done.done():
                continue
            if r.done.running() or r.done.set_running_or_notify_cancel():
                r.done.set_exception(RuntimeError(f"the server's batcher stopped: {self.died}"))
                r.put(None)

    # -- the batcher thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._batches()
        except BaseException as e:  # noqa: BLE001 - recorded for /health; the thread ends here
            self.died = f"{type(e).__name__}: {e}"
            self._fail_waiting()

    def _batches(self) -> None:
        """Gather up to batch_size requests (waiting window_s for the first's companions) and
        generate them together."""
        b = self.engine.point.batch_size
        while True:
            self.batch = batch = [self.inbox.get()]
            deadline = time.monotonic() + self.window_s
            while len(batch) < b:
                try:
                    batch.append(self.inbox.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            # A request whose client left (its future cancelled) is dropped; the rest can no longer
            # be cancelled, so setting their results cannot fail and stop this thread.
            self.batch = batch = [r for r in batch if r.done.set_running_or_notify_cancel()]
            # One generate call per setting; a mixed batch (rare) is split by it.
            groups: dict[tuple[int, bool], list[Request]] = {}
            for r in batch:
                groups.setdefault((r.max_tokens, r.ignore_eos), []).append(r)
            for (max_tokens, ignore_eos), rs in groups.items():
                self._generate(rs, max_tokens, ignore_eos)

    def _generate(self, rs: list[Request], max_tokens: int, ignore_eos: bool) -> None:
        """One generate call for `rs`, streamed requests fed each pass's tokens; if it fails, each
        request that has not streamed a token yet runs again on its own, so one bad request (an id
        past the vocabulary) fails only itself."""
        cut = _Cut(rs, max_tokens, ignore_eos, self.end_ids) if any(r.stream for r in rs) else None
        try:
            g = self.engine.generate_ids([r.ids for r in rs], max_tokens, ignore_eos, on_step=cut)
        except Exception as e:  # noqa: BLE001 - the client gets the error, the server keeps serving
            for r in rs:
                if len(rs) == 1 or r.streamed:  # a stream half sent cannot be sent again
                    r.done.set_exception(e)
                    r.put(None)
                else:
                    self._generate([r], max_tokens, ignore_eos)
            return
        for r, ids in zip(rs, g.token_ids, strict=True):
            r.done.set_result(ids)
            r.put(None)

    # -- requests ------------------------------------------------------------------------------

    def check(self, ids: list[int], max_tokens: int, prompt_field: str) -> None:
        """Refuse (400) what the limits do not admit, before it is queued: the wording follows
        vLLM's server, which clients and users already know."""
        lim = self.limits
        if max_tokens > lim.max_tokens:
            raise APIError(400, f"max_tokens: {max_tokens} is more than this server's limit of {lim.max_tokens} "
                           "(autoinfer serve --max-tokens-limit)", "max_tokens", "invalid_value")  # fmt: skip
        if lim.context is None:
            return
        if len(ids) >= lim.context:
            raise APIError(400, f"This model's maximum context length is {lim.context} tokens. However, your "
                           f"prompt contains {len(ids)} input tokens, which exceeds this limit even without any "
                           "output tokens. Please reduce the length of the input prompt.",
                           prompt_field, "context_length_exceeded")  # fmt: skip
        if len(ids) + max_tokens > lim.context:
            raise APIError(400, f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
                           f"maximum context length is {lim.context} tokens and your request has {len(ids)} input "
                           f"tokens ({max_tokens} > {lim.context} - {len(ids)}).",
                           "max_tokens", "context_length_exceeded")  # fmt: skip

    def submit(self, ids: list[int], max_tokens: int, ignore_eos: bool, stream: Channel | None = None) -> Request:
        """Queue one request (checked first); 503 once the batcher has died, 429 while the queue is
        full. `stream`: see Request."""
        if why := self.failure():
            raise APIError(503, f"the server cannot generate: its batcher stopped ({why})", kind="server_error")
        req = Request(ids, max_tokens, ignore_eos, stream=stream)
        try:
            self.inbox.put_nowait(req)
        except queue.Full:
            raise APIError(429, f"the server's queue is full ({self.limits.max_queue} requests waiting); retry later",
                           code="queue_full", kind="rate_limit_error",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None  # fmt: skip
        if self.failure():  # it died while this was being queued: the drain may have run already
            self._fail_waiting()
        return req

    def finish_reason(self, ids: tuple[int, ...], max_tokens: int, ignore_eos: bool) -> FinishReason:
        """`stop` for an answer that ended at an end token, `length` for one cut at max_tokens."""
        ended = not ignore_eos and bool(ids) and ids[-1] in self.end_ids
        return "stop" if ended or len(ids) < max_tokens else "length"

    async def answer(self, req: Request) -> Output:
        """A queued request's greedy answer, once its batch has run."""
        try:
            out = await asyncio.wrap_future(req.done)
        except Exception as e:  # any engine failure is the server's (500), named
            if self.failure():
                raise APIError(503, f"generation failed: {e}", kind="server_error") from e
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from e
        reason = self.finish_reason(out, req.max_tokens, req.ignore_eos)
        return Output(self.engine.text(out), out, len(req.ids), reason)

    async def generate(self, ids: list[int], max_tokens: int, ignore_eos: bool) -> Output:
        """One request's greedy answer, generated in a batch with whatever else is waiting."""
        return await self.answer(self.submit(ids, max_tokens, ignore_eos))
