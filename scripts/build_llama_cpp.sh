#!/usr/bin/env bash
# Build llama-cpp-python from source with pinned CPU flags, once per (version, flags), and install it.
#
# Why pinned flags: a default build uses -march=native; on this project's CI VMs that build
# segfaulted in quantized prompt evaluation with n_batch > 1. A portable build with AVX512 on and
# AMX off ran the same models cleanly (tests/engines/test_llamacpp_build.py keeps checking).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"
PIP=.venv/bin/pip
PYBIN=.venv/bin/python

if [ "$($PYBIN -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)" = "$LLAMA_CPP_VERSION" ] \
   && [ -f .venv/.llama_cpp_flags ] && [ "$(cat .venv/.llama_cpp_flags)" = "$FLAGS" ]; then
  exit 0
fi
key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
wheels="${AUTOINFER_CACHE:-$HOME/.cache/autoinfer}/wheels/llama-cpp-$key"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_VERSION from source (4-12 min on 2 cores)..."
  mkdir -p "$wheels"
  # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and could hand back a native build.
  CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    $PIP wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$wheels"
fi
$PIP install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
$PIP install -q "diskcache>=5.6" "jinja2>=2.11" "numpy>=1.20" "typing-extensions>=4.5"
echo "$FLAGS" > .venv/.llama_cpp_flags
