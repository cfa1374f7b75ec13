"""Storage URLs: where studies and runs live, and how they are shown without secrets."""

from __future__ import annotations

import re
from pathlib import Path


def redact(url: str) -> str:
    """Drop any password from a database URL before it is logged or printed."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its folder (e.g. mlruns/ on a fresh clone)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
