"""The `calculator` tool: arithmetic on an `ast` allow-list, with bounded cost and bounded results.

The expression is parsed with `ast.parse(mode="eval")` (parsing only) and then walked by a small interpreter
that knows numbers, `+ - * / // % **`, unary `+`/`-`, parentheses, a few `math` functions and the constants
`pi` and `e`. Everything else (names, attributes, calls to anything else, subscripts, lambdas, comprehensions,
strings, booleans, complex numbers) is refused with a `ToolError`. It never calls `eval`, `exec` or `compile`
on user text.

It is not a CAS, not a big-number engine (integer results are capped at 10**100) and not a unit converter.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from tools.base import ToolError, tool

MAX_EXPRESSION_CHARS = 500
MAX_AST_DEPTH = 50
MAX_EXPONENT = 1000
MAX_INT = 10**100
SIGNIFICANT_DIGITS = 12

Number = int | float

_BINARY_OPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > 20:
        raise ToolError("round(x, n): n must be an integer between -20 and 20")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, 50),
    "max": (lambda *xs: max(xs), 1, 50),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "log": (_log, 1, 2),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}


def format_number(value: Number) -> str:
    """Ints as they are; floats with up to 12 significant digits and no trailing zeros (`2.0` -> `2`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"result is not a number: {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ToolError("result is not a finite number")
    text = format(value, f".{SIGNIFICANT_DIGITS}g")
    rounded = float(text)
    if rounded == 0:
        return "0"  # also turns -0.0 into 0
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    return text


def _check(value: Number) -> Number:
    """Every intermediate value passes here: bounded ints, finite real floats."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("result is not a real number")
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise ToolError("integer result too large (limit 10**100)")
    elif not math.isfinite(value):
        raise ToolError("result overflows or is not a finite number")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (|exponent| must be <= {MAX_EXPONENT})")
    # Estimate an integer power's size before computing it, so that 10**1000 never gets built.
    exact = isinstance(base, int) and isinstance(exponent, int)
    if exact and exponent > 0 and abs(base) > 1 and exponent * math.log10(abs(base)) > 101:
        raise ToolError("integer result too large (limit 10**100)")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero (zero to a negative power)")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("result is not a real number (negative base with a fractional exponent)")
    return result


def _binary(op: str, left: Number, right: Number) -> Number:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "**":
        return _power(left, right)
    if right == 0:
        raise ToolError("division by zero")
    if op == "/":
        return left / right
    if op == "//":
        return left // right
    return left % right


class _Evaluator:
    """Walks an allow-listed AST. Any node type not handled here is an error."""

    def visit(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise ToolError(f"unknown name {node.id!r}; allowed: {', '.join(sorted(_CONSTANTS))}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            value = self.visit(node.operand)
            return _check(-value if isinstance(node.op, ast.USub) else +value)
        if isinstance(node, ast.BinOp):
            return self._binop(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ToolError(f"unsupported syntax: {type(node).__name__}")

    def _constant(self, node: ast.Constant) -> Number:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"unsupported literal: {type(value).__name__}")
        return _check(value)

    def _binop(self, node: ast.BinOp) -> Number:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            if isinstance(node.op, ast.BitXor):
                raise ToolError("'^' is not supported; use ** for powers")
            raise ToolError(f"unsupported operator: {type(node.op).__name__}")
        left = self.visit(node.left)
        right = self.visit(node.right)
        return _check(_binary(op, left, right))

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            allowed = ", ".join(sorted(_FUNCTIONS))
            raise ToolError(f"only these functions may be called: {allowed}")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ToolError("functions take plain positional arguments only")
        fn, min_args, max_args = _FUNCTIONS[node.func.id]
        if not min_args <= len(node.args) <= max_args:
            raise ToolError(f"{node.func.id}() takes {min_args} to {max_args} arguments, got {len(node.args)}")
        args = [self.visit(arg) for arg in node.args]
        return _check(fn(*args))


def _depth(tree: ast.AST) -> int:
    """Depth of the tree, iteratively (a recursive walk could itself hit the recursion limit)."""
    deepest = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_AST_DEPTH:
            break
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression on the allow-list; raise `ToolError` on anything else."""
    if not isinstance(expression, str):
        raise ToolError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long ({len(expression)} > {MAX_EXPRESSION_CHARS} characters)")
    text = expression.strip()
    if not text:
        raise ToolError("expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolError(f"not a valid arithmetic expression: {type(exc).__name__}") from None
    if _depth(tree) > MAX_AST_DEPTH:
        raise ToolError(f"expression nested too deeply (limit {MAX_AST_DEPTH})")
    try:
        return _Evaluator().visit(tree)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result overflows (too large for a float)") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error: {exc}") from None


@tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly: numbers, + - * / // % **, parentheses, "
    "sqrt, abs, round, min, max, floor, ceil, log, exp, sin, cos, tan, pi, e.",
)
def calculator(
    expression: Annotated[str, Field(description="The arithmetic expression, e.g. '(3 + 4) * 2 ** 3'")],
) -> str:
    return format_number(evaluate(expression))
