"""`minigpt-serve`: command-line flags -> `Settings` -> `create_app` -> `uvicorn.run`.

Flags override `MINIGPT_*` environment variables, which override the defaults in `server.settings`. This is
the only place that configures logging handlers for the server. It holds no server logic.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from server.settings import Settings

logger = logging.getLogger(__name__)

# flag -> Settings field; every flag defaults to None so that unset flags leave env / defaults alone
FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--model", "model", str, "checkpoint directory (default: the bundled demo model)"),
    ("--host", "host", str, "bind address (default 127.0.0.1)"),
    ("--port", "port", int, "port (default 8000)"),
    ("--api-key", "api_key", str, "require `Authorization: Bearer KEY` on every route but /health"),
    ("--served-model-name", "served_model_name", str, "the model id clients send"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--dtype", "dtype", str, "auto | float32 | bfloat16 | float16"),
    (
        "--compile-decode",
        "compile_decode",
        str,
        "true | false: CUDA only, torch.compile the decode step (slower start)",
    ),
    ("--max-num-seqs", "max_num_seqs", int, "sequences decoded at once (KV-cache slots)"),
    ("--max-model-len", "max_model_len", int, "context length per sequence (default: the model's)"),
    ("--max-queued", "max_queued", int, "waiting requests beyond which the server answers 429"),
    ("--max-body-bytes", "max_body_bytes", int, "request bodies above this get 413"),
    ("--default-max-tokens", "default_max_tokens", int, "completion budget when a request sets none"),
    ("--log-level", "log_level", str, "debug | info | warning | error (debug logs prompt text)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigpt-serve",
        description="Serve a MiniGPT checkpoint through an OpenAI-compatible HTTP API.",
        epilog="Every flag can also be set as an environment variable MINIGPT_<FIELD> (e.g. MINIGPT_API_KEY).",
    )
    for flag, dest, type_, help_ in FLAGS:
        parser.add_argument(flag, dest=dest, type=type_, default=None, help=help_)
    return parser


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Parse flags into Settings; a bad value exits with status 2 and a readable message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    raise AssertionError("unreachable")  # parser.error exits


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from server.app import create_app

    settings = settings_from_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app = create_app(settings)
    logger.info("minigpt-serve on http://%s:%d (model %s)", settings.host, settings.port, settings.model_name())
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
