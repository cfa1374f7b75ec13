"""Where autoinfer keeps expensive derived files (dequantized GGUFs, quantized GGUFs, bandwidth)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("AUTOINFER_CACHE", Path.home() / ".cache" / "autoinfer"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime).

    Hashing runs at ~1 GB/s here: nothing for SmolLM2, but seconds per trial for a 10 GB
    checkpoint, so the digest is kept and reused until the file changes.
    """
    st = path.stat()
    memo_key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    memo = cache_dir("digests") / memo_key
    if memo.is_file():
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    with atomic_file(memo) as tmp:  # concurrent trials never read half a digest
        tmp.write_text(digest)
    return digest


def tree_digest(directory: Path) -> str:
    """One sha256 over a checkpoint directory's top-level files (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.name}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it only if the block finishes.

    Concurrent trials make the same cache entries; a rename is atomic, so a reader sees a whole
    file or none, and a crash (or Ctrl-C) mid-write leaves no half file under the real name.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; cached and exported files are ordinary readable files
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
