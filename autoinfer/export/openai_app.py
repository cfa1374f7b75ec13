"""The OpenAI-compatible HTTP side of `autoinfer serve`: FastAPI routes over a `Served` engine.

Routes: `GET /health` (200: nothing listens before the engine is loaded), `GET /props`,
`GET /v1/models` (and `/v1/models/{id}`), `POST /v1/completions` and `POST /v1/chat/completions`,
either streamed as server-sent events. Completions continue the prompt as it is (raw text or token
ids, no chat template); chat renders its messages through the model's chat template exactly as the
trial rendered its prompts, so a trial prompt sent as one user message is fed the very ids the
trial fed. A streamed answer comes a decoding pass at a time, as the batch makes it (`_Stream`), so
its first chunk times its first token; a request that arrives while a batch runs waits for the next
one (the batcher does not join running batches). Every error is OpenAI's shape.

In front of the routes, `Guard` (plain ASGI, so it sees a body before FastAPI parses it) asks for
the API key where one is set (401; /health stays open, as vLLM's and llama-server's do) and
refuses a body past the size limit (413) without reading the rest of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any, cast

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from autoinfer.engines.base import Engine
from autoinfer.export.batcher import Output, Request, Served
from autoinfer.export.openai_schema import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    Usage,
)


def create_app(served: Served, api_key: str | None = None) -> Any:
    """The routes over `served`, behind the key and body-size guard (an ASGI app)."""
    # No /docs or /openapi.json: the routes are OpenAI's, documented there.
    app = FastAPI(title="autoinfer serve", openapi_url=None, docs_url=None, redoc_url=None)
    _error_handlers(app)
    card = ModelCard(id=served.model, created=served.created)

    @app.get("/health")
    async def health() -> Response:
        why = served.failure()
        if why:  # the process is up but cannot generate: a load balancer must take it out
            return JSONResponse({"status": "error", "error": f"batcher stopped: {why}"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/props")
    async def props() -> dict[str, str]:
        return {"build_info": f"autoinfer serve ({served.engine.point.label()})"}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[card])

    @app.get("/v1/models/{model:path}")
    async def one_model(model: str) -> ModelCard:
        _check_model(served, model)
        return card

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Response:
        return await _complete(served, req)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Response:
        return await _chat(served, req)

    return Guard(app, api_key, served.limits.max_body_bytes)


# -- the guard -----------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
OPEN_PATHS = ("/health",)  # answered without the key: what a load balancer or verify polls


class Guard:
    """API key (401) and body size (413) before the app sees a request; errors in OpenAI's shape."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.max_body = app, max_body_bytes
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):  # constant time: no timing hint at the key
                await _refuse(send, APIError(401, "Incorrect or missing API key: send it as "
                                             "'Authorization: Bearer KEY'", None, "invalid_api_key"))  # fmt: skip
                return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            await _refuse(send, _too_large(self.max_body))
            return
        body, more = bytearray(), True
        while more:  # read the body here, so a chunked one past the limit is cut off too
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app sees the disconnect
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await _refuse(send, _too_large(self.max_body))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: waits for the client's disconnect

        await self.app(scope, replay, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes "
                    "(autoinfer serve --max-body-bytes)", None, "request_too_large")  # fmt: skip


async def _refuse(send: Send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- errors --------------------------------------------------------------------------------------


def _error_handlers(app: FastAPI) -> None:
    async def api_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return JSONResponse(exc.body(), exc.status, headers=exc.headers or None)

    async def invalid(request: HTTPRequest, exc: Exception) -> Response:
        # FastAPI's 422 is OpenAI's 400, naming the first bad field (param: the request field it is in).
        assert isinstance(exc, RequestValidationError)
        if "json" not in request.headers.get("content-type", ""):  # FastAPI then never parsed the body
            message = "the request body must be JSON, sent with Content-Type: application/json"
            return JSONResponse(APIError(400, message, None, "invalid_value").body(), 400)
        errors: Sequence[Any] = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(APIError(400, message, loc[0] if loc else None, "invalid_value").body(), 400)

    async def http_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = f"{exc.detail} ({request.method} {request.url.path})"
        return JSONResponse(APIError(exc.status_code, message).body(), exc.status_code, headers=exc.headers)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


def _check_model(served: Served, model: str | None) -> None:
    if model and model != served.model:
        raise APIError(
            404, f"The model `{model}` does not exist: this server serves `{served.model}`", "model", "model_not_found"
        )


# -- prompts -------------------------------------------------------------------------------------


def completion_ids(engine: Engine, prompt: str | list[str] | list[int] | list[list[int]]) -> list[int]:
    """A completion prompt's token ids: text tokenized as it is (no chat template), ids as given."""
    one: str | list[int]
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        one = cast("str | list[int]", prompt)  # a text, or ids (an empty list is either)
    elif len(prompt) != 1:
        raise APIError(400, "prompt: one prompt per request is served (concurrent requests are batched)",
                       "prompt", "unsupported_value")  # fmt: skip
    else:
        one = prompt[0]
    if isinstance(one, str):
        try:
            ids = engine.raw_ids(one)
        except NotImplementedError as e:
            raise APIError(400, f"prompt: {e}; send token ids", "prompt", "unsupported_value") from None
    else:
        ids = list(one)
    if not ids:
        raise APIError(400, "prompt: empty", "prompt", "invalid_value")
    return ids


def chat_ids(engine: Engine, messages: list[ChatMessage]) -> list[int]:
    """Messages rendered as the trial rendered its prompts (its chat template, if it used one)."""
    rendered = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(messages)]
    try:
        ids = engine.chat_ids(rendered)
    except NotImplementedError as e:
        raise APIError(400, f"messages: {e}", "messages", "unsupported_value") from None
    except (TemplateError, ValueError, TypeError, KeyError) as e:  # the template's own checks (role order)
        raise APIError(400, f"messages: the model's chat template refused them: {e}", "messages") from None
    if not ids:
        raise APIError(400, "messages: render to no tokens", "messages", "invalid_value")
    return ids


# -- the routes ----------------------------------------------------------------------------------


def _ids(out: Output, req: CompletionRequest | ChatRequest) -> list[int] | None:
    return list(out.token_ids) if req.return_token_ids else None


def _usage(out: Output) -> Usage:
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                 total_tokens=out.prompt_tokens + out.completion_tokens)  # fmt: skip


def _head(kind: str, served: Served) -> dict[str, Any]:
    return {"id": f"{kind}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": served.model}


class _Stream:
    """A streamed request's answer as text deltas on the event loop, fed by the batcher's thread.

    The text so far is decoded whole at each pass and the new part sent; a pass that ends inside a
    character (the decoder's U+FFFD for a byte of a later token) sends nothing until it completes."""

    def __init__(self, served: Served) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list[int] | None] = asyncio.Queue()
        self.engine = served.engine
        self.ids: list[int] = []
        self.sent = ""

    def put(self, ids: list[int] | None) -> None:
        """Called on the batcher's thread: hand one pass's tokens (None at the end) to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ids)

    async def steps(self) -> AsyncIterator[tuple[str, list[int]]]:
        """(new text, new token ids) per pass, until the answer is settled."""
        while (new := await self.queue.get()) is not None:
            self.ids += new
            yield self.delta(self.engine.text(self.ids)), new

    def delta(self, text: str, final: bool = False) -> str:
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.sent):
            return ""  # a character still being spelled, or earlier text re-decoded: wait
        new, self.sent = text[len(self.sent) :], text
        return new


async def _complete(served: Served, req: CompletionRequest) -> Response:
    _check_model(served, req.model)
    req.refuse_unmeasured()
    ids = completion_ids(served.engine, req.prompt)
    max_tokens = req.max_tokens or 16
    served.check(ids, max_tokens, "prompt")
    head = _head("cmpl", served)
    # Queued before any answer is sent, so a full queue (429) or a stopped batcher (503) is a status.
    stream = _Stream(served) if req.stream else None
    queued = served.submit(ids, max_tokens, req.ignore_eos, stream.put if stream else None)
    if stream is not None:
        return _sse(_completion_chunks(served, queued, stream, req, head))
    out = await served.answer(queued)
    choice = CompletionChoice(text=out.text, finish_reason=out.finish_reason, token_ids=_ids(out, req))
    return _json(Completion(**head, choices=[choice], usage=_usage(out)))


async def _completion_chunks(
    served: Served, queued: Request, stream: _Stream, req: CompletionRequest, head: dict[str, Any]
) -> AsyncIterator[BaseModel]:
    async for text, new in stream.steps():
        if text or req.return_token_ids:
            ids = new if req.return_token_ids else None
            yield Completion(**head, choices=[CompletionChoice(text=text, finish_reason=None, token_ids=ids)])
    out = await served.answer(queued)
    if rest := stream.delta(out.text, final=True):
        yield Completion(**head, choices=[CompletionChoice(text=rest, finish_reason=None)])
    # Usage rides on the final chunk unless asked for in a chunk of its own (OpenAI's
    # stream_options.include_usage); llama-server does the same, and `autoinfer verify` reads it there.
    usage = None if req.include_usage else _usage(out)
    yield Completion(**head, choices=[CompletionChoice(text="", finish_reason=out.finish_reason)], usage=usage)
    if req.include_usage:
        yield Completion(**head, choices=[], usage=_usage(out))


async def _chat(served: Served, req: ChatRequest) -> Response:
    _check_model(served, req.model)
    req.refuse_unmeasured()
    ids = chat_ids(served.engine, req.messages)
    max_tokens = req.max_completion_tokens or req.max_tokens or served.max_tokens
    served.check(ids, max_tokens, "messages")
    head = _head("chatcmpl", served)
    stream = _Stream(served) if req.stream else None
    queued = served.submit(ids, max_tokens, req.ignore_eos, stream.put if stream else None)
    if stream is not None:
        return _sse(_chat_chunks(served, queued, stream, req, head))
    out = await served.answer(queued)
    message = AssistantMessage(content=out.text)
    choice = ChatChoice(message=message, finish_reason=out.finish_reason, token_ids=_ids(out, req))
    return _json(ChatCompletion(**head, choices=[choice], usage=_usage(out)))


async def _chat_chunks(
    served: Served, queued: Request, stream: _Stream, req: ChatRequest, head: dict[str, Any]
) -> AsyncIterator[BaseModel]:
    # The role first, as OpenAI's first chunk, but with the first token: as vLLM and llama-server
    # send it, so a client timing its first chunk times its first token.
    role: ChatCompletionChunk | None = ChatCompletionChunk(
        **head, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]
    )
    async for text, new in stream.steps():
        if role is not None:
            yield role
            role = None
        if text or req.return_token_ids:
            ids = new if req.return_token_ids else None
            yield ChatCompletionChunk(**head, choices=[ChunkChoice(delta=Delta(content=text), token_ids=ids)])
    out = await served.answer(queued)
    if role is not None:  # an answer of no tokens
        yield role
    if rest := stream.delta(out.text, final=True):
        yield ChatCompletionChunk(**head, choices=[ChunkChoice(delta=Delta(content=rest))])
    usage = None if req.include_usage else _usage(out)
    final = ChunkChoice(delta=Delta(), finish_reason=out.finish_reason)
    yield ChatCompletionChunk(**head, choices=[final], usage=usage)
    if req.include_usage:
        yield ChatCompletionChunk(**head, choices=[], usage=_usage(out))


def _json(body: BaseModel) -> Response:
    return JSONResponse(body.model_dump(mode="json"))


def _sse(chunks: AsyncIterator[BaseModel]) -> Response:
    """Server-sent events: `data: {chunk}` each, then `data: [DONE]`. A failure once the stream
    has started (its 200 sent) comes as an error event in OpenAI's shape, which clients raise."""

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {chunk.model_dump_json()}\n\n"
        except APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
