"""How to run a measured configuration outside autoinfer, per engine.

Built only from what the trial recorded (its point and `info`), so the export describes the
exact files and settings that were measured, not a re-derivation of them.
"""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from autoinfer.cache import atomic_file, file_digest, tree_digest
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import AutoinferError
from autoinfer.export.server import with_option


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
    model: dict[str, Any],
    point: dict[str, Any],
    info: dict[str, Any],
    engine_config: dict[str, Any] | None = None,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """`engine_config`: the study settings the engine reads (model, workload, transformers,
    base_dir), so `autoinfer serve` can load the configuration exactly as the trial did. The server
    command listens on `host` and takes its API key from the environment variable the recipe names
    (`api_key_env`): never a key in the file."""
    from autoinfer.engines import ENGINES

    point = TrialPoint(**point).as_dict()  # fills what older records left out (draft_tokens)
    spec = ENGINES.get(point["engine"])
    if not spec.export:
        return {"note": f"the {spec.name} engine has no export recipe"}
    module, _, func = spec.export.partition(":")  # the engine package owns its recipe
    recipe = getattr(importlib.import_module(module), func)
    block: dict[str, Any] = recipe(model, point, info, engine_config)
    if "serve" in block:
        # Appended as text: re-joining the line would quote the <deploy.yaml> placeholder export fills in.
        block["serve"] = f"{block['serve']} --host {shlex.quote(host)}"
        if "argv" in block:
            block["argv"] = with_option(block["argv"], "--host", host)
        block["host"] = host
    if block.get("api_key_env"):
        block["api_key_note"] = (
            f"set {block['api_key_env']} in the server's environment to require that key "
            "('Authorization: Bearer KEY'); autoinfer writes no key into this file"
        )
    return block


# Where `export --copy-files` puts a vLLM trial's checkpoint directories, beside the config.
CHECKPOINT_DIRS = {"checkpoint": "checkpoint", "draft_checkpoint": "draft-checkpoint"}


def copy_files(runtime: dict[str, Any], dest: Path) -> list[Path]:
    """Copy the model files a runtime block names into `dest` and point the block at the copies:
    a llama.cpp trial's GGUF(s), a vLLM trial's checkpoint directories. Checked against the digests
    the trial recorded, so what ships is byte for byte what was measured. Returns the copied paths;
    a transformers block names no files."""
    if runtime.get("gguf"):
        return _copy_ggufs(runtime, dest)
    if runtime.get("checkpoint"):
        return _copy_checkpoints(runtime, dest)
    return []


def _copy_ggufs(runtime: dict[str, Any], dest: Path) -> list[Path]:
    gguf = runtime["gguf"]
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


def _copy_checkpoints(runtime: dict[str, Any], dest: Path) -> list[Path]:
    """The vLLM case: each directory is copied to `dest/<CHECKPOINT_DIRS name>` and the command
    names it relative to the config (verify, like a deployment, starts the server there). A local
    tokenizer directory other than the checkpoint goes along as `tokenizer/`; it has no digest."""
    renamed: dict[str, str] = {}
    copied = []
    for key, name in CHECKPOINT_DIRS.items():
        src_text = runtime.get(key)
        if not src_text:
            continue
        target = _copy_dir(Path(src_text), dest / name)
        want = runtime.get(f"{key}_sha256")
        if want and tree_digest(target) != want:
            raise AutoinferError(f"{target} does not match the digest the trial recorded for {src_text}")
        renamed[src_text], runtime[key] = f"./{name}", name
        copied.append(target)
    argv = runtime["argv"]
    if "--tokenizer" in argv:
        tok = argv[argv.index("--tokenizer") + 1]
        if tok not in renamed and Path(tok).is_absolute() and Path(tok).is_dir():
            copied.append(_copy_dir(Path(tok), dest / "tokenizer"))
            renamed[tok] = "./tokenizer"
    runtime["argv"] = [_renamed(a, renamed) for a in argv]
    runtime["serve"] = shlex.join(_renamed(a, renamed) for a in shlex.split(runtime["serve"]))
    return copied


def _renamed(arg: str, renamed: dict[str, str]) -> str:
    """An argument with copied paths replaced, the draft model's path inside the JSON of
    --speculative-config included."""
    if arg.startswith("{") and '"model"' in arg:
        spec = json.loads(arg)
        if spec.get("model") in renamed:
            return json.dumps({**spec, "model": renamed[spec["model"]]}, sort_keys=True)
    return renamed.get(arg, arg)


def _copy_dir(src: Path, target: Path) -> Path:
    """Copy a flat checkpoint directory's files (what tree_digest covers), each atomically; files
    already there with the same bytes are kept, files the source lacks are removed."""
    if not src.is_dir():
        raise AutoinferError(f"{src} is gone from the cache; re-run that trial to make it again")
    target.mkdir(parents=True, exist_ok=True)
    wanted = {f.name: f for f in src.iterdir() if f.is_file() and not f.name.startswith(".")}
    for old in target.iterdir():
        if old.is_file() and old.name not in wanted:
            old.unlink()
    for name, f in sorted(wanted.items()):
        there = target / name
        if not there.is_file() or file_digest(there) != file_digest(f):
            with atomic_file(there) as tmp:
                shutil.copyfile(f, tmp)
    return target
