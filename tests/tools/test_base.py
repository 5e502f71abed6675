"""`Tool`, `@tool` and argument validation: schemas come from signatures, bad arguments become ToolErrors."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field

from tools import Tool, ToolArgumentError, ToolError, ToolExecutionError, parse_arguments, tool


@tool(name="greet", description="Greet someone.")
def greet(
    name: Annotated[str, Field(description="Who to greet")],
    times: Annotated[int, Field(description="How often", ge=1, le=5)] = 1,
    style: Literal["plain", "loud"] = "plain",
    ratio: float = 1.0,
) -> str:
    text = " ".join([f"hello {name}"] * times)
    return text.upper() if style == "loud" else text


@tool
def stats(values: list[int]) -> dict[str, Any]:
    """Sum and count of a list of integers.

    Developer notes that should not reach the model.
    """
    return {"sum": sum(values), "count": len(values)}


def test_schema_from_signature() -> None:
    schema = greet.openai_schema()
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "greet" and function["description"] == "Greet someone."
    params = function["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert params["required"] == ["name"]
    assert params["properties"]["name"] == {"description": "Who to greet", "type": "string"}
    assert params["properties"]["times"]["minimum"] == 1 and params["properties"]["times"]["maximum"] == 5
    assert params["properties"]["style"]["enum"] == ["plain", "loud"]
    assert "title" not in json.dumps(params)  # pydantic's titles are stripped
    json.dumps(schema)  # plain JSON


def test_docstring_fallback_and_default_name() -> None:
    assert stats.name == "stats"
    assert stats.description == "Sum and count of a list of integers."
    assert stats.parameters["properties"]["values"] == {"items": {"type": "integer"}, "type": "array"}


def test_property_named_title_survives() -> None:
    @tool(description="Make a note.")
    def note(title: str, body: str = "") -> str:
        return title + body

    assert set(note.parameters["properties"]) == {"title", "body"}
    assert note.call({"title": "a", "body": "b"}) == "ab"


def test_call_with_dict_and_json_string() -> None:
    assert greet.call({"name": "Ada"}) == "hello Ada"
    assert greet.call('{"name": "Ada", "times": 2, "style": "loud"}') == "HELLO ADA HELLO ADA"
    assert greet.call({"name": "Ada", "ratio": 2}) == "hello Ada"  # an int is a valid JSON number
    assert json.loads(stats.call({"values": [1, 2, 3]})) == {"sum": 6, "count": 3}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "missing required argument 'name'"),
        ({"name": "a", "extra": 1}, "unknown argument 'extra'"),
        ({"name": 5}, "name"),
        ({"name": ["a"]}, "name"),
        ({"name": "a", "times": "2"}, "times"),
        ({"name": "a", "times": 2.5}, "times"),
        ({"name": "a", "times": True}, "times"),
        ({"name": "a", "times": 0}, "greater than or equal"),
        ({"name": "a", "times": 10**30}, "less than or equal"),
        ({"name": "a", "style": "evil"}, "style"),
        ({"name": "a", "ratio": float("inf")}, "ratio"),
        ('{"name": "a", "ratio": NaN}', "NaN is not allowed"),
        ('{"name": "a"', "JSON object"),
        ("[1, 2]", "JSON object, got list"),
        ('"name"', "JSON object, got str"),
        ("x" * 200_000, "too long"),
        ("[" * 100_001, "too long"),
        ("[" * 50_000, "JSON object"),
    ],
)
def test_bad_arguments(arguments: dict[str, Any] | str, message: str) -> None:
    with pytest.raises(ToolArgumentError, match=message):
        greet.call(arguments)


def test_argument_error_is_a_tool_error() -> None:
    with pytest.raises(ToolError):
        stats.call({"values": "1,2,3"})


def test_parse_arguments_empty() -> None:
    assert parse_arguments(None) == {}
    assert parse_arguments("  ") == {}
    assert parse_arguments('{"a": 1}') == {"a": 1}


def test_unexpected_exception_is_wrapped() -> None:
    @tool(description="Always fails.")
    def broken(x: int) -> int:
        return x // 0

    with pytest.raises(ToolExecutionError, match="ZeroDivisionError") as info:
        broken.call({"x": 1})
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_tool_error_passes_through() -> None:
    @tool(description="Refuses.")
    def refuse() -> str:
        raise ToolError("no, because")

    with pytest.raises(ToolError, match="^no, because$"):
        refuse.call(None)


def test_direct_construction_and_bad_definitions() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    made = Tool("add", "Add two integers.", {}, add)
    assert made.call({"a": 2, "b": 3}) == "5"
    assert made.parameters["required"] == ["a", "b"]
    with pytest.raises(ValueError, match="tool name"):
        Tool("bad name!", "x", {}, add)
    with pytest.raises(TypeError, match="type annotation"):
        tool(name="lam", description="x")(lambda a: a)
    with pytest.raises(TypeError, match=r"\*args"):

        @tool(description="x")
        def variadic(*values: int) -> int:
            return sum(values)

    with pytest.raises(TypeError, match="description"):

        @tool
        def undocumented(a: int) -> int:
            return a


def test_result_rendering() -> None:
    @tool(description="Returns whatever it is given as a kind.")
    def echo(kind: str) -> Any:
        return {"none": None, "bool": True, "float": 2.5, "list": [1, "é"], "int": 7}[kind]

    assert echo.call({"kind": "none"}) == "null"
    assert echo.call({"kind": "bool"}) == "true"
    assert echo.call({"kind": "float"}) == "2.5"
    assert echo.call({"kind": "int"}) == "7"
    assert echo.call({"kind": "list"}) == '[1, "é"]'
