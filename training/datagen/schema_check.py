"""A small JSON-schema checker for the subset the generator and tool evals use.

What it is: `schema_errors(schema, value)` for type (string, integer, number, boolean, array, object, null),
enum, required, properties, additionalProperties: false, items, minimum/maximum and minItems. Enough to check
that generated or predicted tool arguments fit the offered schema, without a `jsonschema` dependency.
What it is not: a full JSON-schema implementation ($ref, oneOf, patterns and formats are not checked).
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _type_ok(expected: str | list[str], value: Any) -> bool:
    names = [expected] if isinstance(expected, str) else expected
    for name in names:
        kinds = _TYPES.get(name)
        if kinds is None:
            return True  # unknown type keyword: not ours to judge
        if isinstance(value, bool) and name in ("integer", "number"):
            continue  # JSON booleans are not numbers
        if isinstance(value, kinds):
            return True
    return False


def _object_errors(schema: dict[str, Any], value: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    properties: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    for name, item in value.items():
        if name in properties:
            errors += schema_errors(properties[name], item, f"{path}.{name}")
        elif schema.get("additionalProperties") is False:
            errors.append(f"{path}: unexpected property {name!r}")
    return errors


def schema_errors(schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
    """Every way `value` breaks `schema` (empty when it validates)."""
    if "type" in schema and not _type_ok(schema["type"], value):
        return [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        errors += _object_errors(schema, value, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                errors += schema_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def arguments_valid(tool: dict[str, Any], arguments: Any) -> bool:
    """Whether `arguments` (a decoded dict) validates against an OpenAI tool dict's parameters."""
    return not schema_errors(tool["function"].get("parameters", {"type": "object"}), arguments)
