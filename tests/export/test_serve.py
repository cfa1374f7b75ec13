"""`autoinfer serve`: the OpenAI-compatible routes over the measured engine.

The fast tests run the fake engine (tests/fake_engine.py) through the FastAPI app, in process
(starlette's TestClient) or on a real uvicorn with the `openai` client; one runs `autoinfer verify`
against `autoinfer serve` on a fake deployment. The real model: test_serve_smollm2.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from starlette.testclient import TestClient

from autoinfer.config import parse_config
from autoinfer.engines.base import TrialPoint
from autoinfer.engines.transformers.engine import TransformersEngine
from autoinfer.export.batcher import Served
from autoinfer.export.deploy import engine_config
from autoinfer.export.openai_app import create_app
from autoinfer.export.server import free_port
from autoinfer.export.verify import verify
from tests.conftest import base_config, fake_config
from tests.fake_engine import EOS, FakeEngine, encode, next_token

MODEL = "fake-model"
MAX_TOKENS = 8  # the deployment's max_new_tokens: the chat route's default


def fake_engine(tmp: Path, batch_size: int = 2) -> FakeEngine:
    cfg = parse_config(fake_config(tmp), base_dir=str(tmp))
    engine = FakeEngine(cfg, TrialPoint("fake", "fp32", "none", batch_size, "cpu:1"))
    engine.load()
    return engine


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return Served(fake_engine(tmp_path), MODEL, MAX_TOKENS)


@pytest.fixture
def client(served: Served) -> TestClient:
    return TestClient(create_app(served))


def greedy(engine: FakeEngine, ids: list[int], max_tokens: int, ignore_eos: bool = False) -> tuple[int, ...]:
    return engine.generate_ids([ids], max_tokens, ignore_eos).token_ids[0]


def ending_prompt() -> list[int]:
    """Two token ids whose greedy continuation ends at EOS after a few tokens (below MAX_TOKENS)."""
    for a in range(1, 64):
        for b in range(1, 64):
            h = [a, b]
            while len(h) < 2 + MAX_TOKENS - 2 and (len(h) == 2 or h[-1] != EOS):
                h.append(next_token(h[-1], h[-2]))
            if len(h) > 4 and h[-1] == EOS:
                return [a, b]
    raise AssertionError("no prompt of the toy model ends early")


def events(body: str) -> list[Any]:
    """The `data:` events of a server-sent-event body, JSON decoded ([DONE] kept as a string)."""
    out = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in out]


def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err: dict[str, Any] = body["error"]
    return err


# -- routes ----------------------------------------------------------------------------------------


def test_health_props_and_models(client: TestClient, served: Served) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/props").json() == {"build_info": "autoinfer serve (fake fp32 none b2 cpu:1)"}
    listed = client.get("/v1/models").json()
    assert listed == {"object": "list", "data": [{"id": MODEL, "object": "model", "created": served.created,
                                                   "owned_by": "autoinfer"}]}  # fmt: skip
    assert client.get(f"/v1/models/{MODEL}").json() == listed["data"][0]
    err = error_of(client.get("/v1/models/gpt-4"), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model" and "`gpt-4` does not exist" in err["message"]


def test_a_text_completion_continues_the_raw_prompt(client: TestClient, served: Served) -> None:
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon", "max_tokens": 5})
    body = r.json()
    want = greedy(served.engine, encode("Once upon"), 5)
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": served.engine.text(want), "logprobs": None,
                                "finish_reason": "length"}]  # fmt: skip
    assert body["usage"] == {"prompt_tokens": len("Once upon"), "completion_tokens": 5, "total_tokens": 14}


@pytest.mark.parametrize("shape", ["ids", "list of ids", "list of text"])
def test_a_completion_prompt_as_token_ids_or_a_list_of_one(client: TestClient, served: Served, shape: str) -> None:
    ids = encode("Hello there")
    prompt = {"ids": ids, "list of ids": [ids], "list of text": ["Hello there"]}[shape]
    body = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4}).json()
    assert body["choices"][0]["text"] == served.engine.text(greedy(served.engine, ids, 4))
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_finish_reason_says_stop_at_an_end_token_and_length_at_max_tokens(client: TestClient, served: Served) -> None:
    ids = ending_prompt()
    want = greedy(served.engine, ids, MAX_TOKENS)
    assert want[-1] == EOS and len(want) < MAX_TOKENS
    body = client.post("/v1/completions", json={"prompt": ids, "max_tokens": MAX_TOKENS}).json()
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == len(want)
    cut = client.post("/v1/completions", json={"prompt": ids, "max_tokens": len(want) - 1}).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    # EOS as the very last allowed token still ended the answer.
    exact = client.post("/v1/completions", json={"prompt": ids, "max_tokens": len(want)}).json()
    assert exact["choices"][0]["finish_reason"] == "stop"
    # ignore_eos (llama-server's and vLLM's extension, which verify sends) runs on to max_tokens.
    on = client.post("/v1/completions", json={"prompt": ids, "max_tokens": MAX_TOKENS, "ignore_eos": True}).json()
    assert on["choices"][0]["finish_reason"] == "length" and on["usage"]["completion_tokens"] == MAX_TOKENS


def test_a_streamed_completion(client: TestClient, served: Served) -> None:
    ids = encode("Stream me")
    text = served.engine.text(greedy(served.engine, ids, 6))
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 6, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    *chunks, done = events(r.text)
    assert done == "[DONE]" and all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    # A chunk a token (each of the toy model's tokens is a word), then the finish.
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]
    assert all(c["choices"][0]["text"] for c in chunks[:-1])
    usage = {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}
    assert chunks[-1]["usage"] == usage  # on the final chunk, where verify (and llama-server) put it
    # OpenAI's stream_options.include_usage: a chunk of its own, with no choices, after the final one.
    asked = {"prompt": ids, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    *chunks, done = events(client.post("/v1/completions", json=asked).text)
    assert chunks[-2]["usage"] is None and chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage


def test_chat_renders_the_message_as_the_trial_rendered_its_prompt(client: TestClient, served: Served) -> None:
    prompt = "What is a whale?"
    ids = served.engine.prompt_ids(prompt)
    want = greedy(served.engine, ids, MAX_TOKENS)
    messages = [{"role": "user", "content": prompt}]
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": served.engine.text(want)},
                                "logprobs": None, "finish_reason": "length"}]  # fmt: skip
    # max_tokens defaults to the deployment's max_new_tokens, as measured.
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": MAX_TOKENS,
                             "total_tokens": len(ids) + MAX_TOKENS}  # fmt: skip
    parts = [{"type": "text", "text": prompt}]
    short = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                      "max_completion_tokens": 3}).json()  # fmt: skip
    assert short["usage"]["completion_tokens"] == 3 and short["usage"]["prompt_tokens"] == len(ids)


def test_a_streamed_chat(client: TestClient, served: Served) -> None:
    prompt = "Say something"
    text = served.engine.text(greedy(served.engine, served.engine.prompt_ids(prompt), MAX_TOKENS))
    req = {"messages": [{"role": "user", "content": prompt}], "stream": True,
           "stream_options": {"include_usage": True}}  # fmt: skip
    *chunks, done = events(client.post("/v1/chat/completions", json=req).text)
    assert done == "[DONE]" and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-2]]
    assert len(deltas) == MAX_TOKENS and "".join(d["content"] for d in deltas) == text
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


def test_token_ids_come_back_only_when_asked(client: TestClient, served: Served) -> None:
    """vLLM's return_token_ids, which verify sends: the generated ids, end token included."""
    ids = ending_prompt()
    want = list(greedy(served.engine, ids, MAX_TOKENS))
    assert want[-1] == EOS
    plain = client.post("/v1/completions", json={"prompt": ids, "max_tokens": MAX_TOKENS}).json()
    assert "token_ids" not in plain["choices"][0]
    asked = {"prompt": ids, "max_tokens": MAX_TOKENS, "return_token_ids": True}
    assert client.post("/v1/completions", json=asked).json()["choices"][0]["token_ids"] == want
    *chunks, _ = events(client.post("/v1/completions", json={**asked, "stream": True}).text)
    assert [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids", [])] == want
    assert ["token_ids" in c["choices"][0] for c in chunks] == [True] * len(want) + [False]
    prompt = "Say something"
    want = list(greedy(served.engine, served.engine.prompt_ids(prompt), MAX_TOKENS))
    chat = {"messages": [{"role": "user", "content": prompt}], "return_token_ids": True}
    assert client.post("/v1/chat/completions", json=chat).json()["choices"][0]["token_ids"] == want
    *chunks, _ = events(client.post("/v1/chat/completions", json={**chat, "stream": True}).text)
    assert [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids", [])] == want


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "param", "code", "words"),
    [
        ("/v1/completions", {"prompt": "hi there", "temperature": 0.7}, "temperature", "unsupported_parameter",
         "only greedy decoding"),
        ("/v1/completions", {"prompt": "hi there", "n": 2}, "n", "unsupported_parameter", "one choice"),
        ("/v1/completions", {"prompt": "hi there", "stop": ["\n"]}, "stop", "unsupported_parameter", "stop sequences"),
        ("/v1/completions", {"prompt": "hi there", "logit_bias": {"3": 5.0}}, "logit_bias", "unsupported_parameter",
         "logit bias"),
        ("/v1/completions", {"prompt": "hi there", "repetition_penalty": 1.2}, "repetition_penalty",
         "unsupported_parameter", "penalties"),
        ("/v1/completions", {"prompt": ["a b", "c d"]}, "prompt", "unsupported_value", "one prompt per request"),
        ("/v1/completions", {"prompt": ""}, "prompt", "invalid_value", "prompt: empty"),
        ("/v1/completions", {"max_tokens": 4}, "prompt", "invalid_value", "prompt: Field required"),
        ("/v1/completions", {"prompt": "hi there", "max_tokens": 0}, "max_tokens", "invalid_value", "greater than"),
        ("/v1/completions", {"prompt": [3, -1]}, "prompt", "invalid_value", "prompt."),
        ("/v1/chat/completions", {"messages": []}, "messages", "invalid_value", "at least 1 item"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages", "invalid_value",
         "messages.0.role"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "hi"}]},
         "messages", "unsupported_value", "only a single user message"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages", "unsupported_parameter", "messages.0.content: 'image_url' parts are not served"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages", "invalid_value",
         "messages.0.content: missing"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
         "tools", "unsupported_parameter", "tool calls"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_in_openai_shape(
    client: TestClient, route: str, body: dict[str, Any], param: str, code: str, words: str
) -> None:
    err = error_of(client.post(route, json=body), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code, err
    assert words in err["message"], err


def test_unknown_routes_models_and_malformed_json(client: TestClient) -> None:
    err = error_of(client.post("/v1/embeddings", json={}), 404)
    assert err["message"] == "Invalid URL (POST /v1/embeddings)" and err["type"] == "invalid_request_error"
    assert error_of(client.get("/v1/completions"), 405)["message"].startswith("Method Not Allowed")
    err = error_of(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi there"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    bad = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(bad, 400)["code"] == "invalid_value"
    # A body sent without its JSON content type (curl -d without -H) is never parsed: said so.
    untyped = client.post("/v1/completions", content=b'{"prompt": "hi there"}')
    assert "Content-Type: application/json" in error_of(untyped, 400)["message"]


def test_an_engine_failure_is_a_500_or_an_error_event(client: TestClient, served: Served, monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(served.engine, "generate_ids", broken)
    err = error_of(client.post("/v1/completions", json={"prompt": "hi there"}), 500)
    assert err["type"] == "server_error" and err["message"] == "generation failed: RuntimeError: out of memory"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 200  # the stream had started: the error comes as an event, then [DONE]
    failed, done = events(r.text)  # no role chunk: it goes out with the answer, which never came
    assert done == "[DONE]"
    assert failed["error"]["type"] == "server_error" and "out of memory" in failed["error"]["message"]


def test_a_request_whose_client_left_is_dropped_and_the_batcher_serves_on(served: Served) -> None:
    import asyncio

    from autoinfer.export.batcher import Request

    gone = Request(encode("left early"), 4, False)
    gone.done.cancel()  # what the event loop does to the request of a client that disconnected
    served.inbox.put(gone)
    out = asyncio.run(asyncio.wait_for(served.generate(encode("still here"), 4, False), 60))
    assert out.completion_tokens == 4 and out.text == served.engine.text(greedy(served.engine, encode("still here"), 4))


def test_one_bad_request_fails_only_itself_not_its_batch(tmp_path: Path) -> None:
    import asyncio

    engine = fake_engine(tmp_path, batch_size=2)
    measured = engine.generate_ids
    bad = encode("poisoned")

    def picky(prompts: Any, *args: Any, **kwargs: Any) -> Any:
        if bad in prompts:  # as an id past the vocabulary fails the whole call it is in
            raise IndexError("index out of range in self")
        return measured(prompts, *args, **kwargs)

    engine.generate_ids = picky  # type: ignore[method-assign]
    served = Served(engine, MODEL, MAX_TOKENS, window_s=2.0)  # long enough for both to share a batch

    async def both() -> list[Any]:
        return await asyncio.gather(
            served.generate(encode("a good prompt"), 4, False), served.generate(bad, 4, False), return_exceptions=True
        )

    good, failed = asyncio.run(asyncio.wait_for(both(), 60))
    assert good.text == engine.text(greedy(engine, encode("a good prompt"), 4))
    assert "IndexError" in str(failed)


# -- a real server ---------------------------------------------------------------------------------


@contextmanager
def uvicorn_on(served: Served, api_key: str | None = None) -> Iterator[str]:
    """The app on a real uvicorn on a free loopback port; yields its /v1 base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(served, api_key=api_key), host="127.0.0.1", port=port, log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


def test_concurrent_requests_are_generated_as_one_batch(tmp_path: Path) -> None:
    from openai import OpenAI

    engine = fake_engine(tmp_path, batch_size=2)
    calls: list[int] = []
    measured = engine.generate_ids

    def counted(prompts: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(prompts))
        return measured(prompts, *args, **kwargs)

    engine.generate_ids = counted  # type: ignore[method-assign]
    # A long window, so two requests sent together always meet on a busy machine.
    served = Served(engine, MODEL, MAX_TOKENS, window_s=2.0)
    prompts = ["first prompt", "second prompt, longer"]
    want = [engine.text(measured([engine.prompt_ids(p)], MAX_TOKENS).token_ids[0]) for p in prompts]
    with uvicorn_on(served) as url:
        client = OpenAI(base_url=url, api_key="none", max_retries=0)

        def ask(p: str) -> str:
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}])
            return r.choices[0].message.content or ""

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(ask, prompts))
    assert got == want and calls == [2]


def test_the_openai_client_on_every_route(served: Served) -> None:
    import openai

    with uvicorn_on(served) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        c = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0)
        assert c.usage is not None and c.usage.prompt_tokens == len(encode("Hello there"))
        assert c.choices[0].text == served.engine.text(greedy(served.engine, encode("Hello there"), 4))
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi there"}],
                                                stream=True, stream_options={"include_usage": True})  # fmt: skip
        chunks = list(stream)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == served.engine.text(greedy(served.engine, encode("Hi there"), MAX_TOKENS))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == MAX_TOKENS
        with pytest.raises(openai.NotFoundError, match="`gpt-4` does not exist") as missing:
            client.completions.create(model="gpt-4", prompt="Hello there")
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        with pytest.raises(openai.BadRequestError, match="only greedy decoding") as refused:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=1)
        assert refused.value.param == "temperature"


def test_verify_holds_autoinfer_serve_to_its_trial(tmp_path: Path) -> None:
    """`autoinfer verify` starts `autoinfer serve` (a fake deployment here) and compares outputs."""
    engine = fake_engine(tmp_path)
    prompts = ["first prompt", "the second one", "a third"]
    ids = [engine.prompt_ids(p) for p in prompts]
    outs = [greedy(engine, p, MAX_TOKENS) for p in ids]
    side = tmp_path / "d.outputs.json"
    side.write_text(json.dumps({"prompt_ids": ids, "output_ids": outs, "texts": [engine.text(o) for o in outs]}))
    data = {
        "model": {"source": str(tmp_path / "fake-model")},
        **engine.point.as_dict(),
        "generation": {"max_new_tokens": MAX_TOKENS, "ignore_eos": False, "do_sample": False},
        "runtime": {"serve": "autoinfer serve d.yaml", "engine_config": engine_config(engine.config),
                    "request": {"return_token_ids": True}},
        "measured": {"trial": 0, "repeats": 1, "outputs_file": side.name,
                     "metrics": {"tokens_per_s": 1.0, "ttft_p50_s": 0.1, "latency_p50_s": 0.1, "latency_p95_s": 0.1}},
    }  # fmt: skip
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    # Speed is not what this checks (a toy engine against a made-up figure): only outputs.
    report = verify(tmp_path / "d.yaml", tolerance=0.01, startup_s=120, max_ratio=float("inf"))
    assert report.passed, report.failures
    assert report.identical == report.prompts == 3
    assert report.server_version == "autoinfer serve (fake fp32 none b2 cpu:1)"


def test_a_transformers_engine_templates_chat_and_not_completions(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The HF side of the two routes on the tiny llama, given a chat template: chat renders every
    message through it (one user message exactly as a trial prompt); a completion gets none."""
    raw = base_config(tiny_model_dir, tmp_path, model={"source": str(tiny_model_dir), "chat_template": True})
    cfg = parse_config(raw, base_dir=str(tmp_path))
    engine = TransformersEngine(cfg, TrialPoint("transformers", "fp32", "none", 1, "cpu:1"))
    engine.load()
    engine.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    client = TestClient(create_app(Served(engine, MODEL, 4)))
    question = "Which of these is a mammal?"
    chat = {"messages": [{"role": "user", "content": question}], "max_tokens": 4}
    body = client.post("/v1/chat/completions", json=chat).json()
    templated = engine.raw_ids(f"<user>{question}\n<assistant>")
    assert body["usage"]["prompt_tokens"] == len(templated) == len(engine.prompt_ids(question))
    want = engine.generate_ids([templated], 4).token_ids[0]
    assert body["choices"][0]["message"]["content"] == engine.text(want)
    # Streamed, the same answer comes a pass at a time: each chunk the ids of one step of generate().
    streamed = {**chat, "stream": True, "return_token_ids": True}
    *chunks, _ = events(client.post("/v1/chat/completions", json=streamed).text)
    steps = [c["choices"][0]["token_ids"] for c in chunks if c["choices"] and c["choices"][0].get("token_ids")]
    assert steps == [[t] for t in want] and "".join(c["choices"][0]["delta"].get("content") or ""
                                                  for c in chunks if c["choices"]) == engine.text(want)  # fmt: skip
    two = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]}
    body = client.post("/v1/chat/completions", json={**two, "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == len(engine.raw_ids(f"<system>Be brief.\n<user>{question}\n<assistant>"))
    body = client.post("/v1/completions", json={"prompt": question, "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == len(engine.tokenizer(question, add_special_tokens=False)["input_ids"])
    assert engine.end_ids() == {engine.tokenizer.eos_token_id}
