"""A user's Jinja chat template (`minigpt-serve --chat-template FILE`, as vLLM's flag) in place of the built-in one.

What it is: `load_chat_template` (a file, or the template itself when the text holds `{`, `}` or a newline, as
vLLM reads the flag), compiled in Jinja's immutable sandbox with the settings and helpers HF's
`apply_chat_template` gives a template (`trim_blocks`, `lstrip_blocks`, `loopcontrols`, a `tojson` that keeps
non-ASCII, `raise_exception`, `strftime_now`, and `bos_token` / `eos_token` / `pad_token`), tried once on a
one-message chat so a broken template fails at startup; and `render_prompt`, which renders with the custom
template when one is given and with `chat_template.render` otherwise.

What it is not: the built-in template (`chat_template.py`, unchanged: the default path is byte-identical) nor a
training renderer. A custom template's output has no assistant mask (serving needs none).

Special tokens: the rendered text is split at the special-token strings (`<|im_start|>`, `<think>`, ...), which
become their ids; the text between them is encoded as plain text. A template cannot tell us which characters came
from a message, so message text that itself holds a special-token string is refused (400) rather than letting it
forge a turn; with the built-in template such text stays plain. vLLM tokenizes the rendered text with specials
anywhere; this is the stricter choice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.sandbox

from minigpt_core.chat_template import _SPECIAL_ID, _SPECIAL_RE, RenderedChat, _validate, render
from minigpt_core.errors import ConfigError, InvalidRequest
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, IM_START_ID, SPECIAL_TOKENS, Tokenizer

# Names the template sees besides the chat itself (HF passes its special tokens map the same way).
TOKEN_VARIABLES = {
    "bos_token": SPECIAL_TOKENS[IM_START_ID],
    "eos_token": SPECIAL_TOKENS[IM_END_ID],
    "pad_token": SPECIAL_TOKENS[EOT_ID],
}
RESERVED = frozenset({"messages", "tools", "add_generation_prompt", *TOKEN_VARIABLES})
_TRIAL_MESSAGES = [{"role": "user", "content": "Hello"}]


class _TemplateRaised(Exception):
    """`raise_exception(...)` called by the template."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class CustomTemplate:
    """A compiled user template; `origin` names it in error messages (the file, or "the inline template")."""

    origin: str
    source: str
    template: jinja2.Template

    def render_text(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text; a template error (its own `raise_exception` included) is an InvalidRequest."""
        extra = {k: v for k, v in (template_kwargs or {}).items() if k not in RESERVED}
        try:
            return self.template.render(
                **extra,
                **TOKEN_VARIABLES,
                messages=[dict(m) for m in messages],
                tools=[dict(t) for t in tools] if tools else None,
                add_generation_prompt=add_generation_prompt,
            )
        except (jinja2.TemplateError, _TemplateRaised, TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidRequest(f"the chat template ({self.origin}) failed on this request: {exc}") from exc


def load_chat_template(value: str) -> CustomTemplate:
    """Read and compile `--chat-template`, then try it on a one-message chat; ConfigError says what is wrong."""
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # a long inline template is not a valid file name
        is_file = False
    if is_file:
        origin = str(path)
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--chat-template {origin}: cannot read it ({exc})") from exc
    elif any(ch in value for ch in "{}\n"):
        origin, source = "the inline template", value
    else:
        raise ConfigError(f"--chat-template {value}: no such file (give a Jinja template file or the template itself)")
    try:
        template = _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"--chat-template {origin}: line {exc.lineno}: {exc.message}") from exc
    custom = CustomTemplate(origin, source, template)
    try:
        trial = custom.render_text(_TRIAL_MESSAGES, add_generation_prompt=True)
    except InvalidRequest as exc:
        raise ConfigError(f"--chat-template {origin}: fails on a one-message chat: {exc.__cause__}") from exc
    if not trial.strip():
        raise ConfigError(f"--chat-template {origin}: renders nothing for a one-message chat")
    return custom


def _forged_special(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The `param` of the first message or tool text holding a special-token string, else None."""
    msgs, tool_lines = _validate(messages, tools)
    for i, m in enumerate(msgs):
        texts = [m.content, m.reasoning, *(c.name + c.arguments for c in m.tool_calls)]
        if any(_SPECIAL_RE.search(text) for text in texts):
            return f"messages[{i}]"
    for k, line in enumerate(tool_lines):
        if _SPECIAL_RE.search(line):
            return f"tools[{k}]"
    return None


def _encode(text: str, tokenizer: Tokenizer) -> list[int]:
    ids: list[int] = []
    for piece in _SPECIAL_RE.split(text):
        if piece in _SPECIAL_ID:
            ids.append(_SPECIAL_ID[piece])
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids


def render_prompt(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool,
    enable_thinking: bool = False,
    tokenizer: Tokenizer,
    custom: CustomTemplate | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> RenderedChat:
    """A prompt through `custom` when given, else the built-in template. Raises InvalidRequest on bad messages."""
    if custom is None:
        return render(
            messages,
            tools,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            tokenizer=tokenizer,
        )
    param = _forged_special(messages, tools)  # also validates the message shapes, as the built-in path does
    if param is not None:
        raise InvalidRequest(
            f"{param} holds a special-token string such as <|im_start|>; with a custom --chat-template this server "
            "cannot keep it plain text, so it refuses it",
            param=param,
        )
    kwargs = {**(template_kwargs or {}), "enable_thinking": enable_thinking}
    text = custom.render_text(messages, tools, add_generation_prompt=add_generation_prompt, template_kwargs=kwargs)
    ids = _encode(text, tokenizer)
    if not ids:
        raise InvalidRequest(f"the chat template ({custom.origin}) rendered an empty prompt for these messages")
    return RenderedChat(ids=ids, mask=[False] * len(ids), text=text)
