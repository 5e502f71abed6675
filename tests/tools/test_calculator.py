"""The calculator: happy paths, evil inputs, and a hypothesis property test against a reference evaluator."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools import ToolArgumentError, ToolError
from tools.builtin.calculator import MAX_INT, calculator, evaluate, format_number


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", "3"),
        ("(3 + 4) * 2 ** 3", "56"),
        ("10 / 4", "2.5"),
        ("10 / 5", "2"),
        ("0.1 + 0.2", "0.3"),
        ("1 / 3", "0.333333333333"),
        ("2 ** 0.5", "1.41421356237"),
        ("2 ** -3", "0.125"),
        ("-7 // 2", "-4"),
        ("-7 % 3", "2"),
        ("+5 - -5", "10"),
        ("sqrt(16) + abs(-3)", "7"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("min(3, 1, 2) + max(4, 9)", "10"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("log(100, 10)", "2"),
        ("log(e)", "1"),
        ("exp(0)", "1"),
        ("sin(0) + cos(0)", "1"),
        ("tan(pi / 4)", "1"),
        ("pi", "3.14159265359"),
        ("2 ** 100", str(2**100)),
        ("10 ** 100", str(10**100)),
        ("1e20", "1e+20"),
        ("-0.0", "0"),
        ("  12  ", "12"),
        ("(" * 100 + "1" + ")" * 100, "1"),  # parentheses add no AST depth
    ],
)
def test_happy_path(expression: str, expected: str) -> None:
    assert calculator.call({"expression": expression}) == expected


def test_json_string_arguments() -> None:
    assert calculator.call('{"expression": "6 * 7"}') == "42"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "only these functions"),
        ("__import__('os').system('echo hi')", "only these functions"),
        ("().__class__", "unsupported syntax"),
        ("().__class__.__bases__[0].__subclasses__()", "only these functions"),
        ("x", "unknown name"),
        ("os", "unknown name"),
        ("open('/etc/passwd')", "only these functions"),
        ("lambda: 1", "unsupported syntax"),
        ("[i for i in (1, 2)]", "unsupported syntax"),
        ("(i for i in (1,))", "unsupported syntax"),
        ("{1: 2}", "unsupported syntax"),
        ("'a' * 10", "unsupported literal"),
        ("b'a'", "unsupported literal"),
        ("True + 1", "unsupported literal"),
        ("None", "unsupported literal"),
        ("1j * 1j", "unsupported literal"),
        ("1 if 1 else 2", "unsupported syntax"),
        ("1 < 2", "unsupported syntax"),
        ("1 and 2", "unsupported syntax"),
        ("~1", "unsupported syntax"),
        ("not 1", "unsupported syntax"),
        ("2 ^ 3", r"use \*\*"),
        ("1 << 400", "unsupported operator"),
        ("(x := 1)", "unsupported syntax"),
        ("f'{1}'", "unsupported syntax"),
        ("[1][0]", "unsupported syntax"),
        ("abs(x=1)", "positional"),
        ("max(*(1, 2))", "positional"),
        ("sqrt(1, 2)", "arguments"),
        ("sqrt.__call__(4)", "only these functions"),
        ("9**9**9", "exponent too large"),
        ("10**10000", "exponent too large"),
        ("2**1000", "too large"),
        ("99**999", "too large"),
        ("(10**50)**3", "too large"),
        ("10**100 + 1", "too large"),
        ("10**99 * 100", "too large"),
        ("9" * 101, "too large"),
        ("floor(1e300)", "too large"),
        ("1e400", "finite"),
        ("1e308 * 10", "finite"),
        ("10.0 ** 400", "overflow"),
        ("exp(1000)", "overflow"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0.0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("(-8) ** (1/3)", "not a real number"),
        ("sqrt(-1)", "math"),
        ("log(0)", "math"),
        ("round(1.5, 1.5)", "round"),
        ("-" * 60 + "1", "nested too deeply"),
        ("1" + "+1" * 60, "nested too deeply"),
        ("(" * 1000 + "1" + ")" * 1000, "too long"),
        ("1" * 501, "too long"),
        ("", "empty"),
        ("   ", "empty"),
        ("1 +", "not a valid"),
        ("1; import os", "not a valid"),
        ("import os", "not a valid"),
        ("1\x00", "not a valid"),
        ("2 + 2\n__import__('os')", "not a valid"),
        ("'); DROP TABLE users; --", "not a valid"),
    ],
)
def test_evil_input(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match=message):
        calculator.call({"expression": expression})
    assert time.perf_counter() - started < 1.0  # refused quickly, never computed


@pytest.mark.parametrize("arguments", [{"expression": ["1+1"]}, {"expression": 2}, {"expression": None}, {}])
def test_wrong_argument_types(arguments: dict[str, object]) -> None:
    with pytest.raises(ToolArgumentError):
        calculator.call(arguments)


def test_unknown_argument_and_bad_json() -> None:
    with pytest.raises(ToolArgumentError, match="unknown argument 'code'"):
        calculator.call({"expression": "1", "code": "__import__('os')"})
    with pytest.raises(ToolArgumentError, match="JSON object"):
        calculator.call('{"expression": "1"')
    with pytest.raises(ToolArgumentError, match="JSON object"):
        calculator.call('["1+1"]')


def test_format_number() -> None:
    assert format_number(3) == "3"
    assert format_number(2.0) == "2"
    assert format_number(-1.5) == "-1.5"
    assert format_number(1 / 7) == "0.142857142857"
    assert format_number(123456789012345.0) == "123456789012000"
    assert format_number(1e-7) == "1e-07"
    with pytest.raises(ToolError):
        format_number(float("nan"))


# ---- property test: generated expression trees against a reference evaluator ----


class _Overflow(Exception):
    pass


@dataclass(frozen=True)
class Node:
    op: str  # "num", "neg", "+", "-", "*", "**"
    value: int = 0
    left: Node | None = None
    right: Node | None = None


def render(node: Node) -> str:
    if node.op == "num":
        return str(node.value)
    if node.op == "neg":
        assert node.left is not None
        return f"(-{render(node.left)})"
    assert node.left is not None and node.right is not None
    return f"({render(node.left)} {node.op} {render(node.right)})"


def depth(node: Node) -> int:
    children = [c for c in (node.left, node.right) if c is not None]
    return 1 + max((depth(c) for c in children), default=0)


def reference(node: Node) -> int:
    """Exact integer arithmetic, with the calculator's 10**100 cap on every intermediate value."""
    if node.op == "num":
        result = node.value
    elif node.op == "neg":
        assert node.left is not None
        result = -reference(node.left)
    else:
        assert node.left is not None and node.right is not None
        a, b = reference(node.left), reference(node.right)
        if node.op == "+":
            result = a + b
        elif node.op == "-":
            result = a - b
        elif node.op == "*":
            result = a * b
        else:
            result = 1
            for _ in range(b):  # b is a small literal exponent, 0..4
                result *= a
                if abs(result) > MAX_INT:
                    raise _Overflow
    if abs(result) > MAX_INT:
        raise _Overflow
    return result


_numbers = st.integers(min_value=0, max_value=10**6).map(lambda v: Node("num", v))
_exponents = st.integers(min_value=0, max_value=4).map(lambda v: Node("num", v))


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        children.map(lambda c: Node("neg", left=c)),
        st.tuples(st.sampled_from(["+", "-", "*"]), children, children).map(
            lambda t: Node(t[0], left=t[1], right=t[2])
        ),
        st.tuples(children, _exponents).map(lambda t: Node("**", left=t[0], right=t[1])),
    )


_trees = st.recursive(_numbers, _extend, max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees)
def test_matches_reference_on_integer_trees(tree: Node) -> None:
    text = render(tree)
    if len(text) > 500:
        with pytest.raises(ToolError, match="too long"):
            evaluate(text)
        return
    if 1 + depth(tree) > 50:  # the ast.Expression wrapper adds one level
        with pytest.raises(ToolError, match="nested too deeply"):
            evaluate(text)
        return
    try:
        expected = reference(tree)
    except _Overflow:
        with pytest.raises(ToolError):
            evaluate(text)
        return
    result = evaluate(text)
    assert isinstance(result, int) and result == expected
    assert calculator.call({"expression": text}) == str(expected)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=-(10**6), max_value=10**6).filter(lambda v: v != 0),
)
def test_division_matches_python_within_tolerance(a: int, b: int) -> None:
    result = evaluate(f"({a}) / ({b})")
    assert math.isclose(result, a / b, rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(float(calculator.call({"expression": f"{a} / ({b})"})), a / b, rel_tol=1e-11)
    assert evaluate(f"({a}) // ({b})") == a // b and evaluate(f"({a}) % ({b})") == a % b
