"""Model sources: files split over numbered PyPI packages (`chunks:`), and drafts from any source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from autoinfer.config import parse_config
from autoinfer.engines.sources import ChunkSet, gguf_path, source_as_gguf
from autoinfer.errors import ConfigError
from autoinfer.identity import study_identity
from autoinfer.preflight import check

MINIMAL = {"objectives": [{"name": "tokens_per_s"}]}


def chunk_packages(site: Path, name: str, pieces: list[bytes]) -> str:
    """Packages name1 ... nameN, each with its piece as data/partNN.bin, as the PyPI ones ship them."""
    for i, piece in enumerate(pieces, 1):
        pkg = site / f"{name}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(piece)
    return f"chunks:{name.replace('_', '-')}{{1..{len(pieces)}}}"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def test_chunks_assemble_in_package_order_once(site: Path) -> None:
    pieces = [f"piece {i};".encode() for i in range(1, 12)]  # 11 packages: part10 comes after part9
    text = chunk_packages(site, "fakechunk_part", pieces)
    chunks = ChunkSet.parse(text)
    assert chunks.packages[:2] == ("fakechunk-part1", "fakechunk-part2") and len(chunks.packages) == 11
    path = chunks.assemble("model.gguf")
    assert path.read_bytes() == b"".join(pieces)
    made = path.stat().st_mtime_ns
    assert chunks.assemble("model.gguf") == path and path.stat().st_mtime_ns == made  # not made twice
    cfg = parse_config({**MINIMAL, "model": {"source": text, "gguf_file": "m.gguf"}})
    assert gguf_path(cfg) is not None and gguf_path(cfg).read_bytes() == b"".join(pieces)  # type: ignore[union-attr]
    # the study records the assembled file's own digest (no checksum ships with the pieces)
    assert study_identity(cfg)["model.weights"] == "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()
    assert source_as_gguf(cfg, text) == path


def test_a_missing_chunk_package_is_a_one_line_error(site: Path) -> None:
    text = chunk_packages(site, "partial_part", [b"a", b"b"])
    missing = text.replace("{1..2}", "{1..3}")
    cfg = parse_config({**MINIMAL, "model": {"source": missing}})
    with pytest.raises(ConfigError) as e:
        check(cfg, "c.yaml")
    assert e.value.where == "model.source" and "1 of the 3 packages" in e.value.message
    assert "partial-part3" in e.value.message and "pip install" in e.value.message
    space = {"engine": ["llama.cpp"], "quantization": ["Q8_0"], "draft": ["none", f"model:{missing}@Q4_0"]}
    draft = parse_config({**MINIMAL, "model": {"source": "m"}, "space": space})
    with pytest.raises(ConfigError) as e:
        check(draft, "c.yaml")
    assert e.value.where == "space.draft[1]"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("chunks:abc", "not a chunk set"), ("chunks:a{3..1}", "increasing range"), ("chunks:a{1..2000}", "at most 1000")],
)
def test_chunk_syntax_errors_name_the_path(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**MINIMAL, "model": {"source": text}}, "c.yaml")
    assert e.value.where == "model.source" and fragment in str(e.value)
