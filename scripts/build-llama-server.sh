#!/usr/bin/env bash
# Build llama.cpp's `llama-server` for `minigpt-bench serve --device cpu` (the llama.cpp peer, issue 17).
#
# What it is: a benchmark-only extra. It builds the llama.cpp sources vendored in the llama-cpp-python sdist
# (a pinned, known version), Release, CPU only, the server target only, into .llama/ (git-ignored).
# What it is not: a runtime dependency; nothing in minigpt_core/ or the server needs it.
#
# usage: scripts/build-llama-server.sh [SDIST.tar.gz]
#   without SDIST it runs `pip download --no-binary :all: --no-deps llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION`.
#   env: LLAMA_DIR (default .llama), JOBS (default: nproc), LLAMA_CPP_PYTHON_VERSION (default 0.3.36).
# The binary lands at $LLAMA_DIR/build/bin/llama-server; the bench finds it there, or pass
# `--llama-server PATH` / set MINIGPT_LLAMA_SERVER.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_DIR="${LLAMA_DIR:-$ROOT/.llama}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"

for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "build-llama-server: needs $tool" >&2; exit 1; }
done

mkdir -p "$LLAMA_DIR"
SDIST="${1:-}"
if [ -z "$SDIST" ]; then
    $PIP download --no-binary :all: --no-deps --dest "$LLAMA_DIR" "llama-cpp-python==$VERSION"
    SDIST="$(ls "$LLAMA_DIR"/llama_cpp_python-"$VERSION".tar.gz)"
fi
[ -f "$SDIST" ] || { echo "build-llama-server: $SDIST: no such file" >&2; exit 1; }

# Only the vendored llama.cpp tree; the Python package around it is not needed.
SRC="$LLAMA_DIR/src"
rm -rf "$SRC"
mkdir -p "$SRC"
TOP="$(tar tzf "$SDIST" | sed -n 1p | cut -d/ -f1)"  # sed reads it all: no SIGPIPE under pipefail
tar xzf "$SDIST" -C "$SRC" --strip-components=3 "$TOP/vendor/llama.cpp"

# Static, CPU only, tuned for this CPU (GGML_NATIVE), no HTTPS/CURL, no web UI (the prebuilt one is a download).
cmake -S "$SRC" -B "$LLAMA_DIR/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF
cmake --build "$LLAMA_DIR/build" --target llama-server -j "$JOBS"

BIN="$LLAMA_DIR/build/bin/llama-server"
"$BIN" --version 2>&1 | head -2
echo "built $BIN (llama.cpp from llama-cpp-python $VERSION)"
