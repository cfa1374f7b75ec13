"""GGUF quantization levels for the llama.cpp engine, made with llama.cpp's own quantizer.

Each (source file digest, level, llama.cpp version) is quantized once and cached. A source that
is already quantized (SmolLM2 ships as Q4_1) is requantized: llama.cpp dequantizes each tensor to
f32 and quantizes it again, so the result also carries the source's rounding; trials record it.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from autoinfer.cache import atomic_file, cache_dir, file_digest
from autoinfer.errors import TrialError
from autoinfer.spaces.dimensions import LLAMACPP_LEVELS

# llama_ftype values (llama.h); upper-case names as llama.cpp's quantize tool spells them.
LEVELS: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "BF16": 32,
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K_M": 17,
    "Q5_0": 8,
    "Q4_K_M": 15,
    "Q4_K_S": 14,
    "Q4_1": 3,
    "Q4_0": 2,
    "IQ4_NL": 25,
    "Q3_K_M": 12,
    "Q2_K": 10,
}
assert set(LEVELS) == set(LLAMACPP_LEVELS)
_FTYPE_NAMES = {v: k for k, v in LEVELS.items()}


def source_level(path: Path) -> str:
    """The level a GGUF was saved at (general.file_type), e.g. Q4_1, or 'unknown'."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return "unknown"
    return _FTYPE_NAMES.get(int(field.contents()), f"ftype{int(field.contents())}")


def quantized_gguf(source: Path, level: str, threads: int) -> tuple[Path, dict[str, str]]:
    """Path of `source` at `level` (made now if not cached) and facts worth logging."""
    if level not in LEVELS:
        raise TrialError(f"unknown llama.cpp level {level!r}")
    src_level = source_level(source)
    facts = {"gguf_source_level": src_level, "gguf_level": level}
    if src_level != "unknown" and src_level not in ("F32", "F16", "BF16"):
        facts["requantized_from"] = src_level  # the source was already quantized
    if level == src_level:
        facts["gguf_cache"] = "source file used as is"
        return source, facts
    version = metadata.version("llama_cpp_python")
    target = cache_dir("gguf") / f"{file_digest(source)[:20]}-{level}-llamacpp{version}.gguf"
    if target.exists():
        facts["gguf_cache"] = "hit"
        return target, facts
    import llama_cpp

    from autoinfer.engines.llamacpp.runtime import quiet_llama_logs

    quiet_llama_logs()  # one line per tensor otherwise: hundreds of lines in the trial log
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LEVELS[level]
    params.nthread = threads
    params.allow_requantize = True
    with atomic_file(target) as tmp:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise TrialError(f"llama.cpp could not quantize {source.name} to {level} (code {rc})")
    facts["gguf_cache"] = "miss"
    return target, facts
