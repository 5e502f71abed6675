"""The `Tool` type, its error tree and the `@tool` decorator.

A tool is a name, a description, a JSON schema for its parameters and a Python function. The schema and the
argument validation both come from the function's typed signature through one pydantic model, so what the
model is told (`openai_schema()`) and what `call()` accepts cannot drift apart.

This module is not a registry (see `tools.registry`), not a tool-call parser for model output (that lives in
`minigpt_core.output_parser`) and knows nothing about chat templates or HTTP.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

logger = logging.getLogger(__name__)

# Arguments arrive from a model's output: cap their size before parsing so that a runaway generation cannot
# make a tool burn CPU or memory.
MAX_ARGUMENTS_CHARS = 100_000
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ToolError(Exception):
    """Base of every error a tool raises on purpose; its message is safe to show to the model and the user."""


class ToolArgumentError(ToolError, ValueError):
    """The arguments are not valid JSON, not an object, or do not match the tool's schema."""


class UnknownToolError(ToolError, KeyError):
    """No tool of that name is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ToolExecutionError(ToolError):
    """The tool's function failed with an unexpected exception (wrapped, with the original as `__cause__`)."""


def _reject_constant(token: str) -> float:
    raise ToolArgumentError(f"arguments must be valid JSON: {token} is not allowed")


def parse_arguments(arguments: dict[str, Any] | str | None) -> dict[str, Any]:
    """Turn a JSON string (or an already decoded dict) into an argument dict, or raise ToolArgumentError."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if len(arguments) > MAX_ARGUMENTS_CHARS:
            raise ToolArgumentError(f"arguments are too long ({len(arguments)} > {MAX_ARGUMENTS_CHARS} chars)")
        if not arguments.strip():
            return {}
        try:
            arguments = json.loads(arguments, parse_constant=_reject_constant)
        except ToolArgumentError:
            raise
        except (ValueError, RecursionError) as exc:  # ValueError also: an integer past sys.get_int_max_str_digits()
            raise ToolArgumentError(f"arguments must be a JSON object: {exc}") from None
    if not isinstance(arguments, dict):
        raise ToolArgumentError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments


def _clean_schema(node: Any) -> Any:
    """Drop pydantic's auto-generated `title` keys (noise for a small model) but keep property *names*."""
    if isinstance(node, list):
        return [_clean_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {name: _clean_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _clean_schema(value)
    return out


def model_from_function(fn: Callable[..., Any], model_name: str) -> type[BaseModel]:
    """Build a strict pydantic model whose fields are `fn`'s keyword parameters (types and defaults kept).

    `Annotated[int, Field(description=...)]` carries through. Every parameter must be annotated; *args/**kwargs
    are refused because they cannot be described by a JSON schema.
    """
    signature = inspect.signature(fn)
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"tool function {fn!r} may not take *args or **kwargs")
        if name not in hints:
            raise TypeError(f"tool function {fn!r}: parameter {name!r} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints[name], default)
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    model: type[BaseModel] = create_model(model_name, __config__=config, **fields)
    return model


def _render_result(result: Any) -> str:
    """Strings pass through; numbers become plain text; anything structured becomes JSON."""
    if isinstance(result, str):
        return result
    if isinstance(result, bool) or result is None:
        return json.dumps(result)
    if isinstance(result, int):
        return str(result)
    if isinstance(result, float):
        if not math.isfinite(result):
            raise ToolExecutionError("tool produced a non-finite number")
        return format(result, ".12g")
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return json.dumps(result, ensure_ascii=False, allow_nan=False)


def _format_validation_error(tool_name: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown argument {where!r}")
        elif err["type"] == "missing":
            problems.append(f"missing required argument {where!r}")
        else:
            problems.append(f"{where}: {err['msg']}")
    return f"invalid arguments for tool {tool_name!r}: " + "; ".join(problems)


@dataclass
class Tool:
    """A callable tool. `parameters` is derived from `fn`'s signature when left empty.

    `call()` is the only way the agent loop and the server should run a tool: it validates, runs and turns the
    result into a string, and it raises only `ToolError`s.
    """

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Any] | None = field(default=None, repr=False)
    _model: type[BaseModel] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 chars of ASCII letters, digits, '_' or '-'")
        if self.fn is None:
            raise TypeError(f"tool {self.name!r} needs a function")
        self._model = model_from_function(self.fn, f"{self.name}_arguments")
        if not self.parameters:
            schema = _clean_schema(self._model.model_json_schema())
            # Conventional key order (type, properties, required first) reads better in a prompt.
            self.parameters = {"type": "object", "properties": schema.pop("properties", {})}
            if "required" in schema:
                self.parameters["required"] = schema.pop("required")
            self.parameters.update(schema)
            self.parameters["additionalProperties"] = False

    def validate(self, arguments: dict[str, Any] | str | None) -> dict[str, Any]:
        """Parse and validate arguments; return them as keyword arguments for `fn`."""
        raw = parse_arguments(arguments)
        try:
            model = self._model.model_validate(raw)
        except ValidationError as exc:
            raise ToolArgumentError(_format_validation_error(self.name, exc)) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def call(self, arguments: dict[str, Any] | str | None = None) -> str:
        """Validate `arguments` (a dict or a JSON string), run the tool and return its result as a string."""
        kwargs = self.validate(arguments)
        assert self.fn is not None  # checked in __post_init__
        try:
            result = self.fn(**kwargs)
        except ToolError:
            raise
        except Exception as exc:  # a bug or an unexpected input in the tool: never crash the caller
            logger.warning("tool %s failed: %s: %s", self.name, type(exc).__name__, exc)
            raise ToolExecutionError(f"tool {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        return _render_result(result)

    def openai_schema(self) -> dict[str, Any]:
        """The tool in OpenAI's `tools` list form."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _description_of(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    # The first paragraph only: the rest of a docstring is usually for developers.
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Build a `Tool` from a typed function: `@tool` or `@tool(name=..., description=...)`.

    The description falls back to the first paragraph of the docstring.
    """

    def build(func: Callable[..., Any]) -> Tool:
        desc = description if description is not None else _description_of(func)
        if not desc:
            raise TypeError(f"tool {func.__name__!r} needs a description or a docstring")
        return Tool(name=name or func.__name__, description=desc, fn=func)

    if fn is not None:
        return build(fn)
    return build
