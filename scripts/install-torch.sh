#!/usr/bin/env bash
# Install the pinned torch into a Python environment: the CUDA build where an NVIDIA GPU is present, else the
# CPU build (about 200 MB instead of several GB of CUDA libraries that a machine without a GPU never uses).
#
#   scripts/install-torch.sh PYTHON          # e.g. .venv/bin/python; nothing to do when that torch is there
#
# PyTorch's CPU wheel index is tried first without a GPU; when it cannot be reached (offline mirror, proxy,
# firewall) pip gives up at once (--timeout, --retries 0) and the default index is used instead.
# Environment:
#   TORCH_VERSION          the pinned version (default 2.13.0; the Dockerfile pins the same)
#   TORCH_CPU_INDEX        the CPU wheel index (default https://download.pytorch.org/whl/cpu)
#   MINIGPT_GPU            auto (default: nvidia-smi on PATH or /proc/driver/nvidia), yes, or no
#   MINIGPT_INSTALL_DRY_RUN=1   print the pip commands instead of running them
set -euo pipefail

PY=${1:?usage: scripts/install-torch.sh PYTHON}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
GPU=${MINIGPT_GPU:-auto}
DRY_RUN=${MINIGPT_INSTALL_DRY_RUN:-0}

have_gpu() {
    case "$GPU" in
        yes | 1 | true) return 0 ;;
        no | 0 | false) return 1 ;;
        auto) command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ] ;;
        *) echo "install-torch: MINIGPT_GPU must be auto, yes or no (got '$GPU')" >&2; exit 2 ;;
    esac
}

pip_install() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "$PY -m pip install $*"
        return 0
    fi
    "$PY" -m pip install "$@"
}

installed=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$installed" = "$TORCH_VERSION" ]; then
    echo "install-torch: torch $TORCH_VERSION is already installed"
    exit 0
fi

if have_gpu; then
    echo "install-torch: NVIDIA GPU found: torch $TORCH_VERSION from the default index (CUDA build)"
    pip_install -q "torch==$TORCH_VERSION"
    exit 0
fi

echo "install-torch: no NVIDIA GPU: the CPU build of torch $TORCH_VERSION from $TORCH_CPU_INDEX"
if pip_install -q --timeout 10 --retries 0 --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"; then
    if [ "$DRY_RUN" != 1 ]; then
        exit 0
    fi
    echo "# if that fails (index unreachable):"
else
    echo "install-torch: $TORCH_CPU_INDEX could not be used; trying the default index" >&2
fi
pip_install -q "torch==$TORCH_VERSION"
