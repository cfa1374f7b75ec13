"""HF checkpoint -> GGUF, with llama.cpp's own converter, once per checkpoint.

The llama.cpp engine quantizes from a GGUF. When `model.source` is an HF checkpoint (a local
directory or a hub id, no `model.gguf_file`), we first write it as one unquantized GGUF (F16, or
BF16 for bf16 checkpoints, or F32 when that level is asked for) with `convert_hf_to_gguf.py` from
the llama.cpp sources that the installed llama-cpp-python was built from, so the converter knows
exactly the architectures and tokenizers that runtime can load. `scripts/build_llama_cpp.sh` copies
it to `<venv>/share/autoinfer/llama.cpp-<version>/`; AUTOINFER_LLAMACPP_CONVERTER overrides that.

The result is cached by (checkpoint content digest, base type, llama.cpp version) and written
atomically, like the quantized levels made from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from autoinfer.cache import atomic_file, cache_dir, tree_digest
from autoinfer.engines.sources import resolve_source
from autoinfer.errors import TrialError

if TYPE_CHECKING:
    from autoinfer.config import Config

CONVERTER_ENV = "AUTOINFER_LLAMACPP_CONVERTER"
CONVERT_TIMEOUT_S = 3600  # a 70B checkpoint takes tens of minutes; SmolLM2-135M ~10 s here
# Files a conversion reads from a hub repo (weights, config, tokenizer); skips other formats.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def converter_script() -> Path:
    """convert_hf_to_gguf.py matching the installed llama-cpp-python, or a TrialError saying how."""
    override = os.environ.get(CONVERTER_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise TrialError(f"{CONVERTER_ENV}={override} is not a file")
        return path
    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        raise TrialError("llama-cpp-python is not installed (run scripts/build_llama_cpp.sh)") from None
    path = Path(sys.prefix) / "share" / "autoinfer" / f"llama.cpp-{version}" / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise TrialError(
            f"no GGUF converter for llama-cpp-python {version} at {path}: run scripts/build_llama_cpp.sh, "
            f"or set {CONVERTER_ENV} to llama.cpp's convert_hf_to_gguf.py, or give model.gguf_file"
        )
    return path


def local_checkpoint(config: Config, source: str | None = None) -> Path:
    """The checkpoint as a local directory: a path as is, a hub id from the local hub cache/download."""
    is_model = source is None or source == config.model.source
    resolved = resolve_source(config, source)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    revision = config.model.revision if is_model else None
    try:
        # Network only if the user's hub cache lacks it; that is what the config asked for.
        return Path(snapshot_download(resolved, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # hub errors come in many types; the message is what matters
        where = "model.source" if is_model else "draft"
        raise TrialError(f"{where}: cannot get {resolved!r} as a local checkpoint: {e}") from e


def gguf_of_source(config: Config, source: str) -> tuple[Path, dict[str, str]]:
    """Any model source as one GGUF file: itself when it is one, else converted (unquantized)."""
    from autoinfer.engines.sources import source_as_gguf

    gguf = source_as_gguf(config, source)
    if gguf is not None:
        return gguf, {}
    checkpoint = local_checkpoint(config, source)
    return converted_gguf(checkpoint, base_type(checkpoint, "F16"))


def base_type(checkpoint: Path, level: str) -> str:
    """The unquantized GGUF type to convert to before quantizing to `level`."""
    if level in ("F32", "F16", "BF16"):
        return level
    try:
        cfg = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError):
        return "F16"
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    # bf16 weights can exceed f16's range (65504); keep their own type as the base.
    return "BF16" if dtype == "bfloat16" else "F16"


def converted_gguf(checkpoint: Path, outtype: str) -> tuple[Path, dict[str, str]]:
    """`checkpoint` as an unquantized GGUF of `outtype` (F32/F16/BF16), converted now or from cache."""
    script = converter_script()
    version = metadata.version("llama_cpp_python")
    digest = tree_digest(checkpoint)
    facts = {
        "source_format": "hf",
        "source_sha256": digest,
        "gguf_converted_to": outtype,
        "gguf_converter": f"convert_hf_to_gguf.py (llama.cpp of llama-cpp-python {version})",
    }
    target = cache_dir("gguf") / f"{digest[:20]}-hf-{outtype}-llamacpp{version}.gguf"
    if target.exists():
        facts["gguf_conversion_cache"] = "hit"
        return target, facts
    print(f"converting {checkpoint} to a {outtype} GGUF with llama.cpp's converter", flush=True)
    with atomic_file(target) as tmp:
        cmd = [sys.executable, str(script), str(checkpoint), "--outfile", str(tmp), "--outtype", outtype.lower()]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise TrialError(f"GGUF conversion of {checkpoint} took over {CONVERT_TIMEOUT_S} s") from None
        if r.returncode != 0:
            last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()][-1:] or [f"exit {r.returncode}"]
            print(r.stderr[-4000:], file=sys.stderr, flush=True)  # kept in the trial's log artifact
            raise TrialError(f"llama.cpp's converter could not convert {checkpoint}: {last[0]}")
    facts["gguf_conversion_cache"] = "miss"
    return target, facts
