"""Where autoinfer keeps expensive derived files (dequantized GGUFs, quantized GGUFs, bandwidth)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("AUTOINFER_CACHE", Path.home() / ".cache" / "autoinfer"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (a 100 MB GGUF hashes in well under a second)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
