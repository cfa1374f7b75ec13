"""Functions the isolation tests run in a spawned child (importable by module path)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any


def ok(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    stage("working")
    print("hello from the child")
    return {"pid": os.getpid(), "x": payload["x"] * 2}


def raises(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    raise RuntimeError("draft model not found")


def segfaults(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    stage("about to crash")
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def hangs(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    time.sleep(600)
    return {}


def staged(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    for name, seconds in (("a", 0.3), ("b", 0.2), ("a", 0.1)):
        stage(name)
        time.sleep(seconds)
    return {}


def leaves_a_child(payload: dict[str, Any], stage: Callable[[str], None]) -> dict[str, Any]:
    """Start a long-lived child (as vLLM starts its engine core), say its pid, then hang."""
    import subprocess

    child = subprocess.Popen(["sleep", "600"])
    stage(f"child {child.pid}")
    time.sleep(600)
    return {}
