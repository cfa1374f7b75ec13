"""`autoinfer serve` bounded as trusted servers are: the API key (401), the context and max_tokens
limits (400), the queue bound (429), the body size (413) and a stopped batcher (503), in process on
the fake engine. The same under concurrent load, in a real server process: test_serve_load.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from autoinfer.export.batcher import Limits, Served
from autoinfer.export.openai_app import create_app
from autoinfer.export.openai_schema import APIError
from autoinfer.export.server import with_option
from tests.export.test_serve import MAX_TOKENS, MODEL, error_of, fake_engine
from tests.fake_engine import CONTEXT, FakeEngine

KEY = "test-key-123"


@pytest.fixture
def engine(tmp_path: Path) -> FakeEngine:
    return fake_engine(tmp_path)


def client_of(served: Served, api_key: str | None = None) -> TestClient:
    return TestClient(create_app(served, api_key=api_key))


def completion(n_prompt: int, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": [5] * n_prompt, "max_tokens": max_tokens, **extra}


# -- the API key ---------------------------------------------------------------------------------


def test_a_key_is_asked_on_every_route_but_health(engine: FakeEngine) -> None:
    client = client_of(Served(engine, MODEL, MAX_TOKENS), api_key=KEY)
    assert client.get("/health").status_code == 200  # what a load balancer polls, without the key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = client.post("/v1/completions", json=completion(3), headers=headers)
        err = error_of(r, 401)
        assert err["code"] == "invalid_api_key" and KEY not in r.text  # the key is never echoed
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/models", headers=headers).status_code == 401
    ok = client.post("/v1/completions", json=completion(3), headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def test_without_a_key_every_route_is_open(engine: FakeEngine) -> None:
    client = client_of(Served(engine, MODEL, MAX_TOKENS))
    assert client.post("/v1/completions", json=completion(3)).status_code == 200


# -- the context and max_tokens ------------------------------------------------------------------


def test_a_prompt_past_the_context_is_400_naming_the_field(engine: FakeEngine) -> None:
    served = Served(engine, MODEL, MAX_TOKENS)
    assert served.limits.context == CONTEXT == engine.context_tokens()
    client = client_of(served)
    err = error_of(client.post("/v1/completions", json=completion(CONTEXT + 10)), 400)
    assert err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert err["message"].startswith(f"This model's maximum context length is {CONTEXT} tokens. However, your "
                                     f"prompt contains {CONTEXT + 10} input tokens")  # fmt: skip
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (CONTEXT + 5)}]}
    assert error_of(client.post("/v1/chat/completions", json=chat), 400)["param"] == "messages"
    # Prompt and answer together past the context: max_tokens is the field to lower.
    err = error_of(client.post("/v1/completions", json=completion(CONTEXT - 10, max_tokens=20)), 400)
    assert err["param"] == "max_tokens" and f"(20 > {CONTEXT} - {CONTEXT - 10})" in err["message"]
    # Just inside: served.
    assert client.post("/v1/completions", json=completion(CONTEXT - 10, max_tokens=10)).status_code == 200


def test_max_tokens_past_the_servers_limit_is_400(engine: FakeEngine) -> None:
    client = client_of(Served(engine, MODEL, MAX_TOKENS, limits=Limits(context=None, max_tokens=6)))
    err = error_of(client.post("/v1/completions", json=completion(3, max_tokens=7)), 400)
    assert err["param"] == "max_tokens" and "limit of 6" in err["message"]
    assert client.post("/v1/completions", json=completion(3, max_tokens=6)).status_code == 200


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_queue must be at least 1"):
        Limits(max_queue=0)


# -- the body size -------------------------------------------------------------------------------


def test_a_body_past_the_limit_is_413_declared_or_chunked(engine: FakeEngine) -> None:
    client = client_of(Served(engine, MODEL, MAX_TOKENS, limits=Limits(context=CONTEXT, max_body_bytes=2000)))
    big = b'{"model": "fake-model", "prompt": "' + b"x" * 5000 + b'"}'
    r = client.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert error_of(r, 413)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the guard counts what arrives
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    r = client.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert error_of(r, 413)["code"] == "request_too_large"
    assert client.post("/v1/completions", json=completion(3)).status_code == 200  # a small one still served


# -- the queue -----------------------------------------------------------------------------------


class Held:
    """The engine's generate_ids held until released: the batcher busy, the queue filling."""

    def __init__(self, engine: FakeEngine) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        measured = engine.generate_ids

        def held(*args: Any, **kwargs: Any) -> Any:
            self.started.set()
            assert self.release.wait(60)
            return measured(*args, **kwargs)

        engine.generate_ids = held  # type: ignore[method-assign]


def test_a_full_queue_is_429_with_retry_after(engine: FakeEngine) -> None:
    held = Held(engine)
    served = Served(engine, MODEL, MAX_TOKENS, window_s=0.0, limits=Limits(context=CONTEXT, max_queue=2))
    client = client_of(served)
    first = served.submit([5, 6], 4, False)  # taken by the batcher, which then waits in generate_ids
    assert held.started.wait(30)
    queued = [served.submit([5, 6], 4, False) for _ in range(2)]  # the queue's two places
    r = client.post("/v1/completions", json=completion(3))
    assert error_of(r, 429)["code"] == "queue_full" and r.headers["retry-after"] == "1"
    streamed = client.post("/v1/completions", json=completion(3, stream=True))
    assert streamed.status_code == 429  # refused before the stream starts: a status, not an event
    held.release.set()
    for req in [first, *queued]:
        assert len(req.done.result(30)) == 4
    assert client.post("/v1/completions", json=completion(3)).status_code == 200  # room again


# -- a stopped batcher ---------------------------------------------------------------------------


def test_a_dead_batcher_fails_health_and_requests_fast(engine: FakeEngine) -> None:
    held = Held(engine)
    served = Served(engine, MODEL, MAX_TOKENS, window_s=0.0)
    client = client_of(served)
    assert client.get("/health").json() == {"status": "ok"}
    first = served.submit([5, 6], 4, False)
    assert held.started.wait(30)
    waiting = served.submit([5, 6], 4, False)  # queued behind the poison: must not wait forever
    served.inbox.put(None)  # type: ignore[arg-type] - a bug in the batcher's loop, as any would be
    held.release.set()
    assert len(first.done.result(30)) == 4
    with pytest.raises(RuntimeError, match="batcher stopped"):
        waiting.done.result(30)
    served.thread.join(30)
    health = client.get("/health")
    assert health.status_code == 503 and "AttributeError" in health.json()["error"]
    start = time.monotonic()
    err = error_of(client.post("/v1/completions", json=completion(3)), 503)
    assert err["type"] == "server_error" and "batcher stopped" in err["message"]
    assert time.monotonic() - start < 5  # fails at once, does not hang
    with pytest.raises(APIError) as e:
        asyncio.run(served.generate([5], 2, False))
    assert e.value.status == 503


# -- with the openai client -----------------------------------------------------------------------


def test_the_openai_client_sees_each_refusal_as_its_own_error(engine: FakeEngine) -> None:
    import openai

    from tests.export.test_serve import uvicorn_on

    held = Held(engine)
    held.release.set()  # served at once here; held below
    served = Served(engine, MODEL, MAX_TOKENS, window_s=0.0, limits=Limits(context=CONTEXT, max_queue=1))
    with uvicorn_on(served, api_key=KEY) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert client.completions.create(model=MODEL, prompt=[5, 6], max_tokens=3).usage.completion_tokens == 3  # type: ignore[union-attr]
        with pytest.raises(openai.BadRequestError, match="maximum context length") as long:
            client.completions.create(model=MODEL, prompt=[5] * (CONTEXT + 1), max_tokens=3)
        assert long.value.param == "prompt"
        held.release.clear()
        held.started.clear()
        first = served.submit([5, 6], 3, False)
        assert held.started.wait(30)
        waiting = served.submit([5, 6], 3, False)
        with pytest.raises(openai.RateLimitError, match="queue is full"):
            client.completions.create(model=MODEL, prompt=[5, 6], max_tokens=3)
        held.release.set()
        assert first.done.result(30) and waiting.done.result(30)


# -- the command line ----------------------------------------------------------------------------


def test_with_option_sets_a_flag_once() -> None:
    assert with_option(["s", "--host", "0.0.0.0", "-t", "1"], "--host", "127.0.0.1") == [
        "s", "--host", "127.0.0.1", "-t", "1"]  # fmt: skip
    assert with_option(["s"], "--port", "9") == ["s", "--port", "9"]
