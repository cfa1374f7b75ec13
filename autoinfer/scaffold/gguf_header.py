"""Read a GGUF file's header (metadata and tensor list) without reading its weights.

`autoinfer init` needs the architecture, parameter count, file type and vocabulary of a model
before anything is assembled or loaded. gguf's own GGUFReader memory-maps one whole file; this
reads the header as a stream, so a GGUF split over chunk packages is read straight from its
pieces (the header lies in the first), and a 262k-token vocabulary takes a fraction of a second.
Every length is bounded, so a corrupt or hostile file fails with a ValueError, not a huge
allocation.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
# Bounds far above any real model's header, far below what a corrupt length would ask for.
MAX_STRING = 1 << 24  # chat templates are kilobytes
MAX_ARRAY = 1 << 24  # vocabularies are < 1M tokens
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20
MAX_DIMS = 8

# GGUF value types (gguf.GGUFValueType): struct format of each scalar.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Arrays whose contents we keep; others (scores, token types, merges) are read past.
KEEP_ARRAYS = ("tokenizer.ggml.tokens", "general.languages")


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # scalars and the KEEP_ARRAYS lists; other arrays as their length
    tensor_count: int
    params: int  # elements over all tensors

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped key, e.g. arch("block_count") reads llama.block_count."""
        return self.metadata.get(f"{self.get('general.architecture', '')}.{key}", default)


class _Chain:
    """The concatenation of several files, read front to back (a chunk set's pieces)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._file: BinaryIO | None = None

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self._file is None:
                if not self._paths:
                    raise ValueError("the file ends inside its GGUF header (truncated)")
                self._file = open(self._paths.pop(0), "rb")  # closed when exhausted, or by close()
            got = self._file.read(n - len(out))
            if not got:
                self._file.close()
                self._file = None
            out += got
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _unpack(f: _Chain, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, f.read(size))[0]


def _string(f: _Chain) -> str:
    n = _unpack(f, "Q")
    if n > MAX_STRING:
        raise ValueError(f"a header string claims {n} bytes")
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: _Chain, kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, n = _unpack(f, "I"), _unpack(f, "Q")
    if n > MAX_ARRAY:
        raise ValueError(f"a header array claims {n} items")
    if item in _SCALARS and not keep:  # fixed-size items: skip them in one read
        f.read(n * struct.calcsize("<" + _SCALARS[item]))
        return n
    values = [_value(f, item, keep) for _ in range(n)]
    return values if keep else n


def read_header(paths: Sequence[Path]) -> GGUFHeader:
    """The header of the GGUF file made of `paths` in order (one path for an ordinary file)."""
    f = _Chain(paths)
    try:
        if f.read(4) != MAGIC:
            raise ValueError("not a GGUF file (it does not start with the GGUF magic)")
        version = _unpack(f, "I")
        if version not in (2, 3):  # v1 (2023) used 32-bit counts and is no longer written
            raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
        tensors, kvs = _unpack(f, "Q"), _unpack(f, "Q")
        if tensors > MAX_TENSORS or kvs > MAX_KV:
            raise ValueError(f"the header claims {tensors} tensors and {kvs} metadata keys")
        meta: dict[str, Any] = {}
        for _ in range(kvs):
            key = _string(f)
            meta[key] = _value(f, _unpack(f, "I"), keep=key in KEEP_ARRAYS)
        params = 0
        for _ in range(tensors):
            _string(f)  # name
            dims = _unpack(f, "I")
            if dims > MAX_DIMS:
                raise ValueError(f"a tensor claims {dims} dimensions")
            params += math.prod(_unpack(f, "Q") for _ in range(dims))
            f.read(4 + 8)  # ggml type, data offset
        return GGUFHeader(version, meta, tensors, params)
    finally:
        f.close()
