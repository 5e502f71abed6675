# MiniGPT server image: the OpenAI-compatible API on the bundled demo model.
#
#   docker build -t minigpt .                                   # CPU (default)
#   docker build -t minigpt:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
#   docker run --rm -p 8000:8000 minigpt                        # then: curl localhost:8000/health
#   docker run --rm -p 8000:8000 -v $PWD/ckpt:/models/my minigpt minigpt-serve --host 0.0.0.0 --model /models/my
#
# Settings come from flags or MINIGPT_* environment variables (MINIGPT_API_KEY, MINIGPT_MAX_NUM_SEQS, ...).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
# CPU wheels by default; pass a CUDA index (e.g. .../whl/cu126) for the GPU variant.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MINIGPT_HOST=0.0.0.0 \
    MINIGPT_PORT=8000

WORKDIR /app

# Torch first, from the chosen index: an unpinned torch from PyPI would pull a multi-GB CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md ./
COPY minigpt_core ./minigpt_core
COPY server ./server
COPY tools ./tools
COPY training ./training
# The demo model ships inside minigpt_core/assets (package data), so the image serves out of the box. Serving needs no
# extras; `pip install '.[gguf]'` (minigpt-export --format gguf) or '.[plot]' (loss.png) would add them.
RUN pip install . && python -c "from minigpt_core.checkpoint import DEMO_MODEL_DIR; print(DEMO_MODEL_DIR)"

RUN useradd --create-home --uid 10001 minigpt
USER minigpt

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"MINIGPT_PORT\", \"8000\")}/health', timeout=4)" || exit 1

CMD ["minigpt-serve", "--host", "0.0.0.0"]
