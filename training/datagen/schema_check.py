"""Tool arguments against a JSON Schema, through the `jsonschema` package: what the generator tests and the tool
evals score with.

What it is: `schema_errors(schema, value)`, every way a decoded value breaks a schema as "path: message" strings
(empty when it validates), and `arguments_valid(tool, arguments)` for an OpenAI tool dict. Draft 2020-12, with one
narrowing: "integer" means a JSON integer, not also a float such as 3.0, because a tool call whose argument
decodes to a float has not written an integer. Formats are not checked (as jsonschema does by default); a schema
naming a type that JSON Schema does not know yields an error rather than an exception.
What it is not: a check of the schema itself, or the constrained decoder that makes a model's arguments fit one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import UnknownType


def _is_integer(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = validators.extend(
    Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
)


def _path(parts: Iterable[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Every way `value` breaks `schema` (empty when it validates), each as "$.path: message"."""
    try:
        errors = sorted(_Validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except UnknownType as exc:
        return [f"$: the schema names an unknown type {exc.type!r}"]
    return [f"{_path(error.absolute_path)}: {error.message}" for error in errors]


def arguments_valid(tool: dict[str, Any], arguments: Any) -> bool:
    """Whether `arguments` (a decoded dict) validates against an OpenAI tool dict's parameters."""
    return not schema_errors(tool["function"].get("parameters", {"type": "object"}), arguments)
