"""How to run a measured configuration outside autoinfer, per engine.

Built only from what the trial recorded (its point and `info`), so the export describes the
exact files and settings that were measured, not a re-derivation of them.
"""

from __future__ import annotations

import importlib
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from autoinfer.cache import atomic_file, file_digest
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import AutoinferError


def llama_server() -> str:
    """The llama-server built beside this venv in the binding's own build
    (scripts/build_llama_cpp.sh), else one on PATH, else the bare name."""
    here = Path(sys.prefix) / "bin" / "llama-server"
    if here.is_file():
        return str(here)
    return shutil.which("llama-server") or "llama-server"


# Stands for the deployment config's own file name in a command; `export --out` fills it in.
THIS_FILE = "<deploy.yaml>"


def runtime_block(
    model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], engine_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`engine_config`: the study settings the engine reads (model, workload, transformers,
    base_dir), so `autoinfer serve` can load the configuration exactly as the trial did."""
    from autoinfer.engines import ENGINES

    point = TrialPoint(**point).as_dict()  # fills what older records left out (draft_tokens)
    spec = ENGINES.get(point["engine"])
    if not spec.export:
        return {"note": f"the {spec.name} engine has no export recipe"}
    module, _, func = spec.export.partition(":")  # the engine package owns its recipe
    recipe = getattr(importlib.import_module(module), func)
    block: dict[str, Any] = recipe(model, point, info, engine_config)
    return block


def copy_files(runtime: dict[str, Any], dest: Path) -> list[Path]:
    """Copy the GGUF files a llama.cpp runtime block names into `dest` and point the block at them.

    The copies are checked against the sha256 recorded by the trial, so what ships is byte for
    byte what was measured. Returns the copied paths; a transformers block names no files.
    """
    gguf = runtime.get("gguf")
    if not gguf:
        return []
    copied = []
    for src_text in filter(None, [gguf.get("path"), runtime.get("draft_gguf")]):
        src = Path(src_text)
        if not src.is_file():
            raise AutoinferError(f"{src} is gone from the cache; re-run that trial to make it again")
        target = dest / src.name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            with atomic_file(target) as tmp:
                shutil.copyfile(src, tmp)
        runtime["serve"] = shlex.join(target.name if a == src_text else a for a in shlex.split(runtime["serve"]))
        copied.append(target)
    if file_digest(copied[0]) != gguf.get("sha256"):
        raise AutoinferError(f"{copied[0]} does not match the sha256 the trial recorded")
    gguf["path"] = copied[0].name  # relative to the deployment config
    if runtime.get("draft_gguf"):
        runtime["draft_gguf"] = copied[-1].name
    return copied
