"""`minigpt-serve [MODEL]`: command-line flags -> `Settings` -> `create_app` -> uvicorn.

Each field of `server.settings.Settings` is a flag (`add_settings_flags`: its type, its description as help), so a
new setting needs no edit here. Flags override `MINIGPT_*` environment variables, which override the defaults in
`server.settings`. This is the only place that configures logging handlers and torch's CPU threads for the server.
It checks a `--chat-template` and binds the port before anything is loaded (a busy port fails at once), checks the
device, then serves while the model loads behind /health; a model that cannot be loaded stops the server. Every
failure ends with one `minigpt-serve: error: ...` line and a non-zero exit status, as vLLM and llama.cpp's server do.

SIGTERM drains (what a load balancer or Kubernetes expects): /ready and every new request answer 503 while the
requests in flight run to their end (at most `--drain-timeout` seconds), then the server closes and exits 0.
A second SIGTERM, or Ctrl-C, stops at once as uvicorn does. It holds no server logic.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
import types
import typing
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import BaseModel, ValidationError

from server.settings import Settings

if TYPE_CHECKING:
    from server.state import ServerState

logger = logging.getLogger(__name__)

# The few flags that differ from the rule (a field `max_num_seqs` is `--max-num-seqs`, one value, the field's type),
# kept as users know them. A new setting needs no entry here: adding the field to `Settings` adds its flag.
FLAG_EXCEPTIONS: dict[str, dict[str, Any]] = {
    "threads": {"names": ("-t", "--threads")},  # -t as llama.cpp and minigpt-train
    "body_timeout_s": {"names": ("--body-timeout",)},
    "drain_timeout_s": {"names": ("--drain-timeout",)},
    "lora_modules": {"nargs": "+"},  # NAME=PATH [NAME=PATH ...], as vLLM
}


def flag_names(field: str) -> tuple[str, ...]:
    """The option strings of a Settings field, the long name last."""
    names: tuple[str, ...] = FLAG_EXCEPTIONS.get(field, {}).get("names", ("--" + field.replace("_", "-"),))
    return names


def parse_bool(text: str) -> bool:
    """`--compile-decode false`: the words pydantic-settings accepts for a boolean environment variable."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _value_type(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """(the type a flag's value parses as, the Literal's choices) of a field annotation; `X | None` is X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _value_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str, tuple(args)
    return annotation, ()


def add_settings_flags(parser: argparse.ArgumentParser, settings: type[BaseModel]) -> None:
    """One flag per field of `settings`: its type, its description as help. Every flag defaults to None, so an
    unset flag leaves the environment variable or the field's default alone."""
    for name, info in settings.model_fields.items():
        kind, choices = _value_type(info.annotation)
        notes = [" | ".join(map(str, choices))] if choices else []
        if info.default not in (None, ()):
            notes.append(f"default: {str(info.default).lower() if kind is bool else info.default}")
        help_ = (info.description or "").replace("%", "%%") + (f" ({'; '.join(notes)})" if notes else "")
        options: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if kind is bool:  # `--compile-decode false` as before; `--compile-decode` alone is true
            options.update(type=parse_bool, nargs="?", const=True, metavar="true|false")
        elif kind in (int, float):
            options["type"] = kind
        # the rest (str, Path, Literal, and the tuples whose validators split a string) stay text: pydantic checks them
        options.update({k: v for k, v in FLAG_EXCEPTIONS.get(name, {}).items() if k != "names"})
        parser.add_argument(*flag_names(name), **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigpt-serve",
        description="Serve a MiniGPT checkpoint through an OpenAI-compatible HTTP API.",
        epilog="Every flag can also be set as an environment variable MINIGPT_<FIELD> (e.g. MINIGPT_API_KEY).",
    )
    parser.add_argument(
        "model_arg", nargs="?", metavar="MODEL", default=None, help="checkpoint directory (the same as --model)"
    )
    add_settings_flags(parser, Settings)
    return parser


def fail(message: str, status: int = 1) -> int:
    """The one-line error every failure of minigpt-serve ends with (the last line on stderr)."""
    print(f"minigpt-serve: error: {message}", file=sys.stderr, flush=True)
    return status


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Parse flags into Settings; a bad value exits with status 2 and a readable message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    positional = overrides.pop("model_arg", None)
    if positional is not None:
        if overrides.get("model", positional) != positional:
            sys.exit(fail("the model is given twice (MODEL and --model); give one", 2))
        overrides["model"] = positional
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        flag = flag_names(where)[-1] if where in Settings.model_fields else where
        sys.exit(fail(f"{flag}: {first['msg']}" if where else first["msg"], 2))


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (OSError when it is taken); uvicorn listens on it.

    The protocol is named (IPPROTO_TCP, not 0): asyncio turns Nagle's algorithm off only on accepted sockets
    whose proto says TCP, and with it on, each SSE event waited for the client's delayed ACK (TTFT 3 -> 45 ms).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return serve(settings, settings.uvicorn_options())


def serve(settings: Settings, uvicorn_options: dict[str, Any]) -> int:
    """Check the template, bind, check the device, serve while the model loads; the exit status."""
    from minigpt_core.errors import ConfigError

    if settings.chat_template is not None:  # before the port and torch: a typo in the file fails at once
        from minigpt_core.custom_template import load_chat_template

        try:
            load_chat_template(settings.chat_template)
        except ConfigError as exc:
            return fail(str(exc), 2)
    for name, path in settings.lora_modules:  # like the template: a wrong path fails before the port is taken
        if not (path / "adapter_config.json").is_file():
            return fail(f"--lora-modules {name}={path}: not a LoRA adapter directory (no adapter_config.json)", 2)
    try:  # first, before torch is even imported: a busy port fails within a second
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        return fail(f"cannot listen on {settings.host}:{settings.port}: {reason} (choose another --port)")
    with sock:
        return _serve_on(sock, settings, uvicorn_options)


def _serve_on(sock: socket.socket, settings: Settings, uvicorn_options: dict[str, Any]) -> int:
    import torch

    from minigpt_core.errors import ConfigError
    from minigpt_core.resources import resolve_device
    from minigpt_core.threads import configure_threads
    from server.app import create_app

    try:  # the same check training makes (`--device mps` where there is no MPS, `cuda` without CUDA)
        resolve_device(settings.device)
    except ConfigError as exc:
        return fail(str(exc), 2)
    configure_threads(settings.threads)  # before the engine's thread exists; Settings already checked >= 1
    app = create_app(settings)
    server = DrainingServer(uvicorn.Config(app, **uvicorn_options), app.state.server, settings.drain_timeout_s)
    failures: list[str] = []

    def on_load_error(reason: str) -> None:  # on the event loop, from the lifespan's loader task
        failures.append(reason)
        server.should_exit = True

    app.state.server.on_load_error = on_load_error
    logger.info(
        "minigpt-serve on http://%s:%d (model %s, %d CPU threads)",
        settings.host,
        settings.port,
        settings.model_name(),
        torch.get_num_threads(),
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down gracefully: no traceback
        return 130
    if failures:
        return fail(failures[0])
    if not server.started:
        return fail("the server did not start (see the log above)")
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM drains instead of closing the listening socket at once.

    While draining, the socket stays open so that a client that still reaches this replica gets a 503 in
    OpenAI's envelope (the SDK retries it) rather than a refused connection; `on_tick` (every 0.1 s) ends the
    drain when no request is running, or when the drain timeout is up (the rest are then cancelled after 1 s).
    The signal is not re-raised afterwards (uvicorn re-raises those it handled), so the exit status is 0.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app_state = state
        self.drain_timeout_s = drain_timeout_s
        self.drain_started: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # in the signal handler: only flags here, the logging happens in on_tick
        if sig == signal.SIGTERM and self.started and not self.should_exit and self.drain_started is None:
            self.app_state.draining = True
            self.drain_started = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            self._drain_step(time.monotonic() - self.drain_started)
        return await super().on_tick(counter)

    def _drain_step(self, waited_s: float) -> None:
        running = len(self.server_state.tasks)
        if not self._drain_logged:
            self._drain_logged = True
            logger.info(
                "SIGTERM: draining: %d request(s) in flight finish, new ones get 503 (at most %g s)",
                running,
                self.drain_timeout_s,
            )
        if running == 0:
            logger.info("drained: no request in flight, shutting down")
            self.should_exit = True
        elif waited_s >= self.drain_timeout_s:
            logger.warning("drain timeout: %d request(s) still in flight are cancelled", running)
            self.config.timeout_graceful_shutdown = 1
            self.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
