"""Server knobs (`workload.served.server_knobs`): validated in one line, sampled only for their
engine's points, turned into that server's flags by the engine's export recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoinfer.config import parse_config
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import ConfigError
from autoinfer.export.runtime import runtime_block
from autoinfer.served.knobs import decode, encode
from autoinfer.spaces.space import enumerate_points
from tests.conftest import fake_config

SERVED = {"mode": "served", "served": {"request_rate": [1, 2]}}


def knob_config(tmp: Path, knobs: dict[str, Any], **space: Any) -> Any:
    workload = {**SERVED, "served": {**SERVED["served"], "server_knobs": knobs}}
    return parse_config(fake_config(tmp, workload=workload, **({"space": space} if space else {})), "c.yaml", str(tmp))


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"vllm": {"prefix_cache": [True]}}, "did you mean 'prefix_caching'"),
        ({"vllm": {"prefix_caching": ["yes"]}}, "'yes' is not true or false"),
        ({"llama.cpp": {"ubatch": [0]}}, "0 is not a token count"),
        ({"llama.cpp": {"ubatch": [64, 64]}}, "lists a value twice"),
        ({"fake": {"ubatch": [64]}}, "no server knobs for engine 'fake'"),
    ],
)
def test_bad_knobs_are_one_line(tmp_path: Path, knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        knob_config(tmp_path, knobs)
    assert "\n" not in str(e.value) and str(e.value).startswith("c.yaml: workload.served.server_knobs")


def test_knobs_on_an_offline_workload_are_refused(tmp_path: Path) -> None:
    raw = fake_config(tmp_path, workload={"served": {"server_knobs": {"vllm": {"prefix_caching": [True]}}}})
    with pytest.raises(ConfigError, match=r"set workload\.mode: served"):
        parse_config(raw, "c.yaml", str(tmp_path))


def test_knobs_are_sampled_only_for_their_engine_and_the_load_stays_last(tmp_path: Path) -> None:
    knobs = {"llama.cpp": {"ubatch": [64, 256]}, "vllm": {"prefix_caching": [False, True]}}
    cfg = knob_config(tmp_path, knobs, engine=["fake", "llama.cpp"], quantization=["fp32", "Q4_1"],
                      batch_size=[1], hardware=["cpu:1"], draft=["none"])  # fmt: skip
    points = [p for _, p in enumerate_points(cfg)]
    fake = [p for p in points if p.engine == "fake"]
    assert fake and {p.server_knobs for p in fake} == {""}  # the fake engine's server has no knobs
    llama = [(p.server_knobs, p.load) for p in points if p.engine == "llama.cpp" and p.quantization == "Q4_1"]
    assert llama == [("ubatch=64", "rate:1"), ("ubatch=64", "rate:2"), ("ubatch=256", "rate:1"),
                     ("ubatch=256", "rate:2")]  # fmt: skip


def test_knob_text_round_trips_and_reaches_the_label() -> None:
    text = encode({"prefix_caching": True, "max_num_batched_tokens": 512})
    assert text == "max_num_batched_tokens=512,prefix_caching=on"
    assert decode("vllm", text) == {"prefix_caching": True, "max_num_batched_tokens": 512}
    point = TrialPoint("vllm", "bf16", "none", 4, "cpu:1", load="rate:2", server_knobs=text)
    assert "[max_num_batched_tokens=512,prefix_caching=on]" in point.label()
    assert point.server() == TrialPoint("vllm", "bf16", "none", 4, "cpu:1", server_knobs=text)  # one server
    assert TrialPoint(**point.as_dict()) == point
    with pytest.raises(ValueError, match="no server knob 'ubatch'"):
        decode("vllm", "ubatch=64")


VLLM_INFO = {"checkpoint": "/ckpt", "dtype": "bfloat16", "max_model_len": 2048, "kv_cache_memory_bytes": 1 << 28,
             "max_num_batched_tokens": 4096, "chunked_prefill": False}  # fmt: skip


def test_vllm_knobs_become_its_servers_flags() -> None:
    point = TrialPoint("vllm", "bf16", "none", 4, "cpu:1").as_dict()
    plain = runtime_block({"source": "m"}, point, VLLM_INFO)["argv"]
    assert "--no-enable-prefix-caching" in plain and plain[plain.index("--max-num-batched-tokens") + 1] == "4096"
    knobs = "max_num_batched_tokens=256,prefix_caching=on"
    argv = runtime_block({"source": "m"}, {**point, "server_knobs": knobs}, VLLM_INFO)["argv"]
    assert "--enable-prefix-caching" in argv and "--no-enable-prefix-caching" not in argv
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "256"
    assert "--enable-chunked-prefill" in argv  # 256 tokens a step, a 2048-token context: chunks


def test_llama_server_knobs_set_its_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("autoinfer.engines.llamacpp.export.llama_server", lambda: "llama-server")
    info = {"gguf_path": "/m.gguf", "n_ctx": 4096, "llama_threads": 1}
    point = TrialPoint("llama.cpp", "Q4_1", "none", 4, "cpu:1").as_dict()

    def batches(knobs: str) -> tuple[str, str]:
        cmd = runtime_block({}, {**point, "server_knobs": knobs}, info)["serve"].split()
        return cmd[cmd.index("-b") + 1], cmd[cmd.index("-ub") + 1]

    assert batches("") == ("4096", "512")  # as the trial's context had them
    assert batches("ubatch=128") == ("4096", "128")
    assert batches("batch=256,ubatch=1024") == ("256", "256")  # a pass never holds more than a batch
