"""The export's runtime block: what a user runs to reproduce the measured configuration."""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

import pytest

from autoinfer.errors import AutoinferError
from autoinfer.export.runtime import copy_files, llama_server, runtime_block

LLAMA_INFO = {
    "gguf_path": "/c/x-Q8_0.gguf",
    "gguf_sha256": "ab" * 32,
    "gguf_file_bytes": 123,
    "gguf_level": "Q8_0",
    "requantized_from": "Q4_1",
    "llama_threads": 2,
    "n_ctx": 4096,
    "n_gpu_layers": 0,
    "kv_unified": False,
}


def point(engine: str, quant: str, draft: str = "none", batch: int = 1) -> dict[str, object]:
    return {"engine": engine, "quantization": quant, "draft": draft, "batch_size": batch, "hardware": "cpu:2"}


def test_llamacpp_block_names_the_file_and_the_server_flags() -> None:
    rt = runtime_block({}, point("llama.cpp", "Q8_0", batch=8), LLAMA_INFO)
    assert rt["gguf"]["made_from"] == "Q4_1" and rt["context"]["n_seq_max"] == 8
    server = rt["server"]["binary"]
    assert server == llama_server() and rt["server"]["version"] is None  # LLAMA_INFO records no version
    flags = "-m /c/x-Q8_0.gguf -t 2 -c 4096 -b 4096 -ub 512 -np 8 -ngl 0"
    # One KV stream per slot, as measured; loopback, and the key from LLAMA_API_KEY (never in the file).
    assert rt["serve"] == shlex.join([server]) + f" {flags} -no-kvu --host 127.0.0.1"
    assert rt["api_key_env"] == "LLAMA_API_KEY" and "--api-key" not in rt["serve"]
    older = {k: v for k, v in LLAMA_INFO.items() if k != "kv_unified"}  # measured with one shared KV pool
    assert runtime_block({}, point("llama.cpp", "Q8_0", batch=8), older)["serve"].endswith(
        "-np 8 -ngl 0 -kvu --host 127.0.0.1"
    )
    exposed = runtime_block({}, point("llama.cpp", "Q8_0", batch=8), LLAMA_INFO, host="0.0.0.0")["serve"]
    assert exposed.endswith("-no-kvu --host 0.0.0.0") and exposed.count("--host") == 1


def test_the_exported_server_is_the_one_built_beside_the_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert llama_server() == "llama-server"  # nothing built, nothing on PATH: the bare name
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-server").write_text("")
    assert llama_server() == str(tmp_path / "bin" / "llama-server")


def test_llamacpp_on_a_gpu_stays_on_the_measured_device() -> None:
    rt = runtime_block({}, point("llama.cpp", "Q8_0"), {**LLAMA_INFO, "n_gpu_layers": -1, "main_gpu": 1})
    assert rt["serve"].endswith("-ngl -1 -no-kvu -sm none -mg 1 --host 127.0.0.1")


def test_llamacpp_drafts_map_to_speculative_flags() -> None:
    info = {**LLAMA_INFO, "draft_gguf_path": "/c/x-Q4_0.gguf", "draft_tokens_per_step": 4}
    rt = runtime_block({}, point("llama.cpp", "Q8_0", "model:Q4_0"), info)
    assert rt["serve"].endswith("--spec-type draft-simple -md /c/x-Q4_0.gguf --spec-draft-n-max 4 --host 127.0.0.1")
    rt = runtime_block({}, point("llama.cpp", "Q8_0", "prompt_lookup:5"), LLAMA_INFO)
    assert "--spec-ngram-simple-size-m 5" in rt["serve"] and "serve_note" in rt


def test_llamacpp_trial_without_recorded_path_says_so() -> None:
    assert "note" in runtime_block({}, point("llama.cpp", "Q8_0"), {})


def test_transformers_block_gives_load_and_generate_arguments() -> None:
    model = {"source": "org/m", "gguf_file": "m.gguf"}
    info = {"dtype": "float32", "quant_backend": "torchao", "torch": "2.13.0", "transformers": "5.0"}
    rt = runtime_block(model, point("transformers", "int8", "prompt_lookup:3"), info)
    assert rt["load"] == {
        "pretrained": "org/m",
        "dtype": "float32",
        "gguf_file": "m.gguf",
        "weight_quantization": {"backend": "torchao", "type": "int8", "skip": "lm_head"},
    }
    assert rt["generate"] == {"do_sample": False, "prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 3}
    rt = runtime_block(model, point("transformers", "bf16", "model:org/small"), {"draft_same_tokenizer": False})
    assert rt["generate"]["assistant_model"] == rt["generate"]["assistant_tokenizer"] == "org/small"
    assert rt["generate"]["num_assistant_tokens"] == 4 and rt["generate"]["num_assistant_tokens_schedule"] == "constant"


def test_copy_files_ships_the_measured_bytes_or_refuses(tmp_path: Path) -> None:
    src = tmp_path / "cache" / "m-Q8_0.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF" + b"\x00" * 100)
    info = {**LLAMA_INFO, "gguf_path": str(src), "gguf_sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    rt = runtime_block({}, point("llama.cpp", "Q8_0"), info)
    ship = tmp_path / "ship"
    ship.mkdir()
    assert copy_files(rt, ship) == [ship / "m-Q8_0.gguf"]
    assert rt["gguf"]["path"] == "m-Q8_0.gguf" and " -m m-Q8_0.gguf " in rt["serve"]
    assert (ship / "m-Q8_0.gguf").read_bytes() == src.read_bytes()
    bad = runtime_block({}, point("llama.cpp", "Q8_0"), {**info, "gguf_sha256": "0" * 64})
    with pytest.raises(AutoinferError, match="does not match the sha256"):
        copy_files(bad, tmp_path / "cache")  # same dir: the file is there, but not what was measured
    assert copy_files(runtime_block({}, point("transformers", "bf16"), {}), ship) == []
