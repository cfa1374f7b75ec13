#!/usr/bin/env bash
# Build llama-cpp-python from source with pinned CPU flags, once per (version, flags), install it,
# and keep the matching llama.cpp converter (convert_hf_to_gguf.py) beside the venv.
#
# Why pinned flags: a default build uses -march=native; on this project's CI VMs that build
# segfaulted in quantized prompt evaluation with n_batch > 1. A portable build with AMX off ran the
# same models cleanly (tests/engines/test_llamacpp.py::test_quantized_batched_prompt_eval_is_sound keeps checking).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_VERSION=0.3.36
# AVX-512 only where this CPU has every part of it ggml compiles for (F, CD, VL, DQ, BW): these VMs
# come both as Sapphire Rapids / EPYC with AVX-512 and as EPYC with AVX2 only, where an AVX-512
# build dies with SIGILL on its first matrix product. The level is part of the cache key.
AVX512=ON
for f in avx512f avx512cd avx512vl avx512dq avx512bw; do grep -qw "$f" /proc/cpuinfo || AVX512=OFF; done
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=$AVX512 -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"

# The CUDA variant (llama.cpp x cuda:I trials offload every layer to that GPU): built where nvcc and
# an NVIDIA GPU are both present. AUTOINFER_LLAMACPP_CUDA=1 forces it (set AUTOINFER_CUDA_ARCHS, e.g.
# "80;90", when no GPU is visible at build time), =0 keeps the CPU build. It is cached under its own
# key like the CPU build; expect a much longer first build. `autoinfer validate` says when the
# installed build cannot offload, and the space then leaves llama.cpp x cuda out.
cuda="${AUTOINFER_LLAMACPP_CUDA:-auto}"
if [ "$cuda" = auto ]; then
  cuda=0
  if command -v nvcc >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then cuda=1; fi
fi
if [ "$cuda" = 1 ]; then
  FLAGS="$FLAGS -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${AUTOINFER_CUDA_ARCHS:-native}"
  echo "llama.cpp: building the CUDA variant ($FLAGS)"
fi
PIP=.venv/bin/pip
PYBIN=.venv/bin/python

SHARE=".venv/share/autoinfer/llama.cpp-$LLAMA_CPP_VERSION"  # the converter, beside the venv

if [ "$($PYBIN -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)" = "$LLAMA_CPP_VERSION" ] \
   && [ -f .venv/.llama_cpp_flags ] && [ "$(cat .venv/.llama_cpp_flags)" = "$FLAGS" ] \
   && [ -f "$SHARE/convert_hf_to_gguf.py" ]; then
  exit 0
fi
key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
wheels="${AUTOINFER_CACHE:-$HOME/.cache/autoinfer}/wheels/llama-cpp-$key"
mkdir -p "$wheels"
# One source archive serves twice: the wheel is built from it, and its vendored llama.cpp
# supplies convert_hf_to_gguf.py (HF checkpoint -> GGUF) of exactly the version we run.
sdist="$wheels/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  $PIP download -q --no-cache-dir --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$wheels"
fi
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_VERSION from source (4-12 min on 2 cores)..."
  # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and could hand back a native build.
  CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    $PIP wheel -q --no-cache-dir --no-deps "$sdist" -w "$wheels"
fi
$PIP install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
$PIP install -q "diskcache>=5.6" "jinja2>=2.11" "numpy>=1.20" "typing-extensions>=4.5"

# The converter and what it imports beyond our own dependencies (torch, transformers, numpy,
# pyyaml, tqdm, requests): its package (conversion/), the matching gguf-py, and sentencepiece.
rm -rf "$SHARE.tmp" && mkdir -p "$SHARE.tmp"
vendor="llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
tar -xzf "$sdist" -C "$SHARE.tmp" --strip-components=3 \
  "$vendor/convert_hf_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py" "$vendor/LICENSE"
rm -rf "$SHARE" && mv "$SHARE.tmp" "$SHARE"
$PIP install -q "sentencepiece>=0.1.98,<0.3.0"
echo "$FLAGS" > .venv/.llama_cpp_flags
