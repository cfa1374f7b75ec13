"""Resolve `model.source` to something loadable, and turn GGUF files into cached HF checkpoints.

transformers dequantizes a GGUF on every load (~36 s for SmolLM2-135M on 2 cores, plus ~15 s to
rebuild the tokenizer). We do it once per file digest and store the result as a plain checkpoint
(config + safetensors + tokenizer), which later trials load in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autoinfer.cache import cache_dir, file_digest
from autoinfer.errors import TrialError

if TYPE_CHECKING:
    from autoinfer.config import Config


def package_dir(name: str) -> Path:
    """The directory of an installed Python package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise TrialError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(config: Config, source: str | None = None) -> str:
    """`package:x` -> that package's directory; an existing relative path -> absolute; else a hub id."""
    source = source or config.model.source
    if source.startswith("package:"):
        return str(package_dir(source.removeprefix("package:")))
    local = config.resolve(source)
    if local.exists():
        return str(local.resolve())
    return source


def gguf_path(config: Config) -> Path | None:
    if not config.model.gguf_file:
        return None
    base = Path(resolve_source(config))
    path = base / config.model.gguf_file
    if not path.is_file():
        raise TrialError(f"model.gguf_file: {path} does not exist")
    return path


def dequantized_checkpoint(config: Config) -> tuple[str, dict[str, str]]:
    """Return (loadable directory or hub id, facts to log). GGUFs become a cached HF checkpoint."""
    gguf = gguf_path(config)
    if gguf is None:
        return resolve_source(config), {"source_format": "hf"}
    digest = file_digest(gguf)
    target = cache_dir("dequantized") / digest[:20]
    facts = {"source_format": f"gguf:{gguf.name}", "source_sha256": digest}
    if (target / "done.json").exists():
        facts["dequantized_cache"] = "hit"
        return str(target), facts

    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "trust_remote_code": config.model.trust_remote_code}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    # Build in a temporary sibling and rename, so a crash never leaves a half-written cache entry.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # save_model drops tied duplicates (lm_head = embed_tokens) that save_file refuses.
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        (tmp / "done.json").write_text(json.dumps(facts))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    facts["dequantized_cache"] = "miss"
    return str(target), facts
