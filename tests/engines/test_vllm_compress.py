"""vLLM's compressed levels without llmcompressor or vLLM running: the cache around llmcompressor's
subprocess (a stand-in interpreter plays it), and what validation refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoinfer.engines.vllm import compress
from autoinfer.errors import TrialError
from tests.requires import requires
from tests.test_preflight import validate_error

# Stands in for llmcompressor's interpreter: called as `python oneshot.py SCHEME SOURCE OUT`, it
# counts its runs, writes a file into OUT and prints oneshot.py's line of facts (or fails).
FAKE = """#!/bin/sh
echo run >> "{log}"
[ "$2" = w4a16 ] && {{ echo "no kernel for $2" >&2; exit 3; }}
echo "$3" > "$4/source.txt"
echo 'progress bars and such'
echo '{{"scheme": "'"$2"'", "method": "stand-in"}}'
"""


@pytest.fixture
def fake_quantizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "runs.log"
    exe = tmp_path / "python"
    exe.write_text(FAKE.format(log=log))
    exe.chmod(0o755)
    monkeypatch.setenv(compress.ENV_VAR, str(exe))
    return log


def dense(tmp_path: Path) -> str:
    d = tmp_path / "dense"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (d / "model.safetensors").write_bytes(b"weights")
    return str(d)


def test_a_level_is_made_once_and_then_found(tmp_path: Path, fake_quantizer: Path) -> None:
    src = dense(tmp_path)
    path, facts = compress.compressed(src, "w8a8")
    assert facts["compression_cache"] == "miss" and facts["compression_scheme"] == "w8a8"
    assert facts["compression_source"] == src and Path(path, "source.txt").read_text().strip() == src
    again, facts2 = compress.compressed(src, "w8a8")
    assert again == path and facts2["compression_cache"] == "hit" and facts2["compression_method"] == "stand-in"
    assert fake_quantizer.read_text().count("run") == 1
    # Other weights, another entry: the key is the source's digest.
    Path(src, "model.safetensors").write_bytes(b"other weights")
    assert compress.compressed(src, "w8a8")[0] != path


def test_a_failed_run_says_why_and_leaves_no_entry(tmp_path: Path, fake_quantizer: Path) -> None:
    src = dense(tmp_path)
    with pytest.raises(TrialError, match=r"llmcompressor w4a16 of .* failed \(exit 3\): no kernel for w4a16"):
        compress.compressed(src, "w4a16")
    root = Path(compress.cache_dir("compressed"))
    assert not [p for p in root.iterdir() if "w4a16" in p.name or p.name.startswith(".tmp-")]


def test_an_unknown_level_is_refused(tmp_path: Path, fake_quantizer: Path) -> None:
    with pytest.raises(TrialError, match="unknown compressed level 'w2a16'"):
        compress.compressed(dense(tmp_path), "w2a16")


@pytest.mark.parametrize(
    ("flags", "refused"),
    [("fpu avx2 fma", True), ("fpu avx2 avx512f avx512bw", False), ("fp asimd", False)],
)
def test_int4_on_cpu_needs_avx512(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, refused: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(compress, "CPUINFO", str(info))
    assert bool(compress.cpu_int4_problem()) == refused


needs_vllm = requires("vllm")


def space(level: str) -> dict[str, object]:
    return {
        "model": {"source": "some/model"},
        "space": {"engine": ["vllm"], "quantization": ["bf16", level], "hardware": ["cpu:1"]},
        "objectives": [{"name": "tokens_per_s"}],
    }


@needs_vllm
def test_validate_needs_llmcompressor_for_w8a8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compress.ENV_VAR, str(tmp_path / "nowhere" / "python"))
    line = validate_error(tmp_path, space("w8a8"))
    assert "space.quantization[1]: vLLM's w8a8/w4a16 levels need llmcompressor's environment" in line


@needs_vllm
def test_validate_refuses_w4a16_on_avx2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_quantizer: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2\n")
    monkeypatch.setattr(compress, "CPUINFO", str(info))
    from autoinfer.config import parse_config
    from autoinfer.errors import ConfigError
    from autoinfer.preflight import check

    with pytest.raises(ConfigError, match=r"space.quantization\[1\].*w4a16 on a CPU target: .*AVX2"):
        check(parse_config(space("w4a16"), "c.yaml", base_dir=str(tmp_path)), "c.yaml")
