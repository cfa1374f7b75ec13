#!/usr/bin/env bash
# Build llama-server and llama-bench from the very llama.cpp sources and CPU flags the Python
# binding was built from (scripts/build_llama_cpp.sh), once per (version, flags), into .venv/bin.
#
# Why: `autoinfer export` hands users a llama-server command and `autoinfer verify` runs it; a
# server of another llama.cpp version or other kernels could round differently and produce other
# greedy outputs than the trial measured. Static binaries, no network at build time (no HTTPS,
# no prebuilt web UI download).
set -euo pipefail
cd "$(dirname "$0")/.."
# Version and flags come from the binding's build (which records its flags), so they cannot drift apart.
eval "$(grep -m1 '^LLAMA_CPP_VERSION=' scripts/build_llama_cpp.sh)"
[ -f .venv/.llama_cpp_flags ] || { echo "run scripts/build_llama_cpp.sh first" >&2; exit 1; }
FLAGS=$(cat .venv/.llama_cpp_flags)

key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
cache="${AUTOINFER_CACHE:-$HOME/.cache/autoinfer}/wheels/llama-cpp-$key"
stamp="$LLAMA_CPP_VERSION $key"
if [ -x .venv/bin/llama-server ] && [ -x .venv/bin/llama-bench ] \
   && [ "$(cat .venv/.llama_tools 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
if [ ! -x "$cache/llama-server" ] || [ ! -x "$cache/llama-bench" ]; then
  sdist="$cache/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
  [ -f "$sdist" ] || { echo "no $sdist: run scripts/build_llama_cpp.sh first" >&2; exit 1; }
  echo "building llama-server and llama-bench $LLAMA_CPP_VERSION (3-10 min on 2 cores)..."
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tar -xzf "$sdist" -C "$work" --strip-components=3 "llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
  # shellcheck disable=SC2086  # FLAGS is a list of -D options
  cmake -S "$work" -B "$work/build" -DCMAKE_BUILD_TYPE=Release $FLAGS -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF > "$work/configure.log" || { tail -20 "$work/configure.log" >&2; exit 1; }
  cmake --build "$work/build" --target llama-server llama-bench -j "$(nproc)" > "$work/build.log" \
    || { tail -30 "$work/build.log" >&2; exit 1; }
  for tool in llama-server llama-bench; do
    cp "$work/build/bin/$tool" "$cache/$tool.tmp" && mv "$cache/$tool.tmp" "$cache/$tool"
  done
fi
install -m 755 "$cache/llama-server" "$cache/llama-bench" .venv/bin/
echo "$stamp" > .venv/.llama_tools
