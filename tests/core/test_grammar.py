"""Grammar-constrained decoding: a RANDOM-weight model sampled under the constraints must still produce calls and
JSON that parse and validate, in the exact compact layout of the chat template."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from minigpt_core.chat_template import render
from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.constraints import AllOf, Constraint, ThinkBudget
from minigpt_core.errors import InvalidRequest
from minigpt_core.grammar import JsonConstraint, ToolCallConstraint, measure_overhead, warm_up
from minigpt_core.grammar_backend import DEFAULT_MAX_STRING_LENGTH, backend_for, json_rule, tighten_schema
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import (
    EOT_ID,
    IM_END_ID,
    THINK_END_ID,
    TOOL_CALL_END_ID,
    TOOL_CALL_ID,
    Tokenizer,
)

CALC = {
    "type": "object",
    "properties": {
        "expression": {"type": "string", "maxLength": 12},
        "precision": {"type": "integer", "minimum": 0, "maximum": 12},
        "exact": {"type": "boolean"},
    },
    "required": ["expression"],
}
CONVERT = {
    "type": "object",
    "properties": {
        "value": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "unit": {"enum": ["m", "km", "mile"]},
        "to": {"$ref": "#/$defs/unit"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["value", "unit", "to"],
    "$defs": {"unit": {"type": "string", "enum": ["m", "km"]}},
}
TOOLS = [
    {"type": "function", "function": {"name": "calculator", "parameters": CALC}},
    {"type": "function", "function": {"name": "unit_convert", "parameters": CONVERT}},
    {"type": "function", "function": {"name": "now"}},  # no parameters: arguments must be {}
]
SCHEMAS = {"calculator": CALC, "unit_convert": CONVERT, "now": {"type": "object", "properties": {}}}
SELF_REF = {"type": "function", "function": {"name": "loop", "parameters": {"$ref": "#"}}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_tok(tiny_checkpoint: Path) -> tuple[MiniGPT, Tokenizer]:
    return load_checkpoint(tiny_checkpoint)


# ----- a tiny JSON-schema validator (the subset the test schemas use) -----
def validate(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> None:
    root = schema if root is None else root
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(value, root["$defs"][name], root)
    if "enum" in schema:
        assert value in schema["enum"], (value, schema)
    kind = schema.get("type")
    checks = {"string": str, "boolean": bool, "object": dict, "array": list}
    if kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), value
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), value
    elif kind in checks:
        assert isinstance(value, checks[kind]), (value, kind)
    if kind == "string":
        assert len(value) <= schema.get("maxLength", len(value))
    if kind == "array":
        assert len(value) <= schema.get("maxItems", len(value))
        for item in value:
            validate(item, schema["items"], root)
    if kind == "object":
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), (value, schema)
        assert set(value) <= set(props), f"undeclared keys in {value}"
        for key, item in value.items():
            validate(item, props[key], root)
    return None


def assert_compact(text: str) -> None:
    """Outside string literals, the only whitespace is the single space of ", " and ": " (json.dumps layout)."""
    skeleton = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    assert re.sub(r"([,:]) ", r"\1", skeleton) == re.sub(r"\s", "", skeleton), text
    assert not re.search(r"[,:](?! )", skeleton), text


# ----- sampling loop: model forward, constraint mask, sample -----
def generate(
    model: MiniGPT,
    constraint: Constraint,
    *,
    seed: int,
    max_new_tokens: int = 120,
    bias: dict[int, float] | None = None,
    prompt: list[int] | None = None,
) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    ids = list(prompt or [1, 100, 101, 2, 1, 102])
    cache = KVCache(model.config, 1, len(ids) + max_new_tokens)
    out: list[int] = []
    step, pos = ids, 0
    with torch.no_grad():
        for _ in range(max_new_tokens):
            positions = torch.arange(pos, pos + len(step))[None]
            logits = model(torch.tensor([step]), cache=cache, positions=positions)[0, -1]
            pos += len(step)
            for token_id, b in (bias or {}).items():
                logits[token_id] += b
            mask = constraint.allowed()
            if mask is not None:
                assert mask.shape == logits.shape and mask.any()
                logits = logits.masked_fill(~mask, float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).item())
            constraint.advance(token)
            step = [token]
            out.append(token)
            if constraint.is_finished() or token in (IM_END_ID, EOT_ID):
                break
    return out


def calls_of(tok: Tokenizer, out: list[int]) -> list[dict[str, Any]]:
    """Every complete <tool_call> body, checked for layout, parsed and validated."""
    calls = []
    starts = [i for i, t in enumerate(out) if t == TOOL_CALL_ID]
    for start in starts:
        if TOOL_CALL_END_ID not in out[start:]:
            assert out[-1] not in (IM_END_ID, EOT_ID)  # only a call cut by max_new_tokens may stay open
            break
        end = out.index(TOOL_CALL_END_ID, start)
        body = tok.decode(out[start + 1 : end])
        assert body.startswith("\n{") and body.endswith("}\n"), repr(body)
        assert_compact(body.strip("\n"))
        call = json.loads(body)
        assert list(call) == ["name", "arguments"]
        assert call["name"] in SCHEMAS
        validate(call["arguments"], SCHEMAS[call["name"]])
        calls.append(call)
    return calls


def test_required_starts_with_one_valid_call(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    model, tok = model_and_tok
    names = set()
    for seed in range(16):
        constraint = ToolCallConstraint(tok, TOOLS, "required", parallel=False)
        out = generate(model, constraint, seed=seed)
        assert out[0] == TOOL_CALL_ID
        calls = calls_of(tok, out)
        assert len(calls) == 1 and out.count(TOOL_CALL_ID) == 1
        assert out[-1] in (IM_END_ID, EOT_ID) and constraint.is_finished()
        names.add(calls[0]["name"])
    assert len(names) >= 2  # the union of tools is offered, not only the first


def test_named_forces_the_name_in_every_call(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    model, tok = model_and_tok
    for seed in range(6):
        constraint = ToolCallConstraint(tok, TOOLS, {"type": "function", "function": {"name": "unit_convert"}})
        out = generate(model, constraint, seed=seed, bias={TOOL_CALL_ID: 8.0})
        calls = calls_of(tok, out)
        assert out[0] == TOOL_CALL_ID and len(calls) >= 1
        assert all(c["name"] == "unit_convert" for c in calls)


def test_auto_parallel_and_single(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    model, tok = model_and_tok
    most = 0
    for seed in range(3):  # the bias makes the random model open calls; the grammar does the rest
        out = generate(model, ToolCallConstraint(tok, TOOLS, "auto"), seed=seed, bias={TOOL_CALL_ID: 8.0})
        most = max(most, len(calls_of(tok, out)))
    assert most >= 2
    for seed in range(3):
        constraint = ToolCallConstraint(tok, TOOLS, "auto", parallel=False)
        out = generate(model, constraint, seed=seed, bias={TOOL_CALL_ID: 8.0})
        assert len(calls_of(tok, out)) == 1 and out.count(TOOL_CALL_ID) == 1
        tail = out[out.index(TOOL_CALL_END_ID) + 1 :]
        assert tail[-1] in (IM_END_ID, EOT_ID)
        assert all(not tok.decode([t]).strip() for t in tail[:-1])


def test_the_template_layout_is_accepted(tiny_tokenizer: Tokenizer) -> None:
    """Teacher-force what chat_template.py renders for two calls: the constraint allows every token of it."""
    # Arguments in the schema's `properties` order: llguidance enforces that order (another order is refused).
    args = [("calculator", {"expression": "café 2+3", "exact": True}), ("unit_convert", {"value": -5, "unit": "km"})]
    args[1][1]["to"] = "m"
    calls = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in args]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]
    prompt = render(messages[:1], TOOLS, add_generation_prompt=True, tokenizer=tiny_tokenizer).ids
    full = render(messages, TOOLS, tokenizer=tiny_tokenizer).ids
    assert full[: len(prompt)] == prompt
    answer = full[len(prompt) : full.index(IM_END_ID, len(prompt)) + 1]
    constraint = ToolCallConstraint(tiny_tokenizer, TOOLS, "required")
    for token in answer:
        mask = constraint.allowed()
        assert mask is None or mask[token], f"{tiny_tokenizer.decode([token])!r} refused"
        constraint.advance(token)
    assert constraint.calls == 2 and constraint.is_finished()


def test_properties_follow_the_schema_order(tiny_tokenizer: Tokenizer) -> None:
    def accepts(text: str) -> bool:
        constraint = JsonConstraint(tiny_tokenizer, CONVERT)
        for token in tiny_tokenizer.encode(text):
            mask = constraint.allowed()
            if mask is None or not mask[token]:
                return False
            constraint.advance(token)
        return True

    assert accepts('{"value": 1, "unit": "m", "to": "km"}')
    assert not accepts('{"unit": "m", "value": 1, "to": "km"}')
    assert not accepts('{"value":1,"unit": "m", "to": "km"}')  # the compact json.dumps layout only
    assert not accepts('{"value": 1, "unit": "m", "to": "km", "extra": 1}')  # tightened: declared keys only


def test_none_never_calls(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    model, tok = model_and_tok
    constraint = ToolCallConstraint(tok, TOOLS, "none")
    out = generate(model, constraint, seed=0, max_new_tokens=60, bias={TOOL_CALL_ID: 50.0, TOOL_CALL_END_ID: 50.0})
    assert TOOL_CALL_ID not in out and TOOL_CALL_END_ID not in out


def test_required_after_a_think_block(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    model, tok = model_and_tok
    inner = ToolCallConstraint(tok, TOOLS, "required", parallel=False, inside_think=True)
    think_mask = inner.allowed()
    assert think_mask is not None and not think_mask[TOOL_CALL_ID] and not think_mask[IM_END_ID]
    budget = ThinkBudget(5, THINK_END_ID, vocab_size=tok.vocab_size)
    out = generate(model, AllOf([inner, budget]), seed=1, bias={TOOL_CALL_ID: 30.0})
    end = out.index(THINK_END_ID)
    assert end == 5 and TOOL_CALL_ID not in out[:end]
    between = out[end + 1 : out.index(TOOL_CALL_ID)]
    assert tok.decode(between) in ("", "\n", "\n\n")
    assert len(calls_of(tok, out)) == 1


@pytest.mark.parametrize("thinking", [False, True])
def test_json_schema_output_validates(model_and_tok: tuple[MiniGPT, Tokenizer], thinking: bool) -> None:
    model, tok = model_and_tok
    for seed in range(6):
        constraint = JsonConstraint(tok, CONVERT, inside_think=thinking)
        if thinking:
            constraint.advance(tok.encode("hm")[0])
            constraint.advance(THINK_END_ID)
        out = generate(model, constraint, seed=seed)
        assert out[-1] == IM_END_ID and constraint.is_finished()
        text = tok.decode(out[:-1])
        assert_compact(text.lstrip("\n"))
        validate(json.loads(text), CONVERT)


def test_json_object_mode(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    model, tok = model_and_tok
    # Nudge the random model towards closing brackets so that an unbounded object ends within the budget.
    closers = {i: 6.0 for i, b in enumerate(tok.all_token_bytes()) if b and b[:1] in (b"}", b'"', b"]")}
    constraint = JsonConstraint(tok, None)
    out = generate(model, constraint, seed=0, bias=closers, max_new_tokens=300)
    assert out[-1] == IM_END_ID and isinstance(json.loads(tok.decode(out[:-1])), dict)


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda tok: JsonConstraint(tok, {"type": "string", "not": {"const": "x"}}), "response_format"),
        (lambda tok: JsonConstraint(tok, {"type": "string", "format": "no-such-format"}), "response_format"),
        (lambda tok: JsonConstraint(tok, {"$ref": "https://example.com/schema.json"}), "response_format"),
        (lambda tok: JsonConstraint(tok, "nope"), "response_format"),  # type: ignore[arg-type]
        (
            lambda tok: ToolCallConstraint(
                tok, [{"type": "function", "function": {"name": "f", "parameters": {"if": {"type": "string"}}}}]
            ),
            "tools[0].function.parameters",
        ),
        # compiles, but admits no value: found by the first mask (or the forced tokens) before any generation
        (lambda tok: JsonConstraint(tok, {"$ref": "#"}), "response_format"),
        (lambda tok: JsonConstraint(tok, {"$ref": "#"}, inside_think=True), "response_format"),
        (
            lambda tok: JsonConstraint(
                tok, {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}, "required": ["a"]}
            ),
            "response_format",
        ),
        (lambda tok: ToolCallConstraint(tok, [*TOOLS, SELF_REF], "auto"), "tools[3].function.parameters"),
        (
            lambda tok: ToolCallConstraint(tok, [SELF_REF], "required", inside_think=True),
            "tools[0].function.parameters",
        ),
        (lambda tok: ToolCallConstraint(tok, [{"type": "function", "function": {"name": "a b"}}]), "tools"),
        (lambda tok: ToolCallConstraint(tok, TOOLS, {"name": "missing"}), "tool_choice"),
        (lambda tok: ToolCallConstraint(tok, [], "required"), "tool_choice"),
        (lambda tok: ToolCallConstraint(tok, TOOLS, "sometimes"), "tool_choice"),  # type: ignore[arg-type]
    ],
)
def test_unenforceable_requests_are_invalid(tiny_tokenizer: Tokenizer, make: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        make(tiny_tokenizer)
    assert info.value.param == param


def test_a_failed_compile_is_cached_and_a_recursive_schema_that_can_end_is_fine(tiny_tokenizer: Tokenizer) -> None:
    backend = backend_for(tiny_tokenizer)
    lark = f"start: {json_rule({'$ref': '#'})}"
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="admits no JSON value"):
            backend.matcher(lark, "response_format")
    assert isinstance(backend._matchers[lark], str)  # the reason is kept: a repeat costs no compile
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": []}
    constraint = JsonConstraint(tiny_tokenizer, tree)
    mask = constraint.allowed()
    assert mask is not None and bool(mask[tiny_tokenizer.encode("{")[0]])


def test_tighten_schema_closes_declared_objects_only() -> None:
    tight = tighten_schema(CONVERT)
    assert tight["additionalProperties"] is False
    assert "additionalProperties" not in CONVERT  # the caller's schema is not mutated
    loose = tighten_schema({"type": "object", "additionalProperties": {"type": "integer"}})
    inner = loose["additionalProperties"]
    assert inner["type"] == "integer" and "additionalProperties" not in inner
    nested = tighten_schema({"anyOf": [{"properties": {"a": {"properties": {}}}}]})
    assert nested["anyOf"][0]["properties"]["a"]["additionalProperties"] is False


def test_unbounded_integers_stop_at_the_safe_range(tiny_tokenizer: Tokenizer) -> None:
    """A digit loop cannot run past 16 digits (I-JSON's range), while a bound the schema sets itself wins."""

    def accepts(schema: dict[str, Any], text: str) -> bool:
        constraint = JsonConstraint(tiny_tokenizer, schema)
        for token in [*tiny_tokenizer.encode(text), IM_END_ID]:
            mask = constraint.allowed()
            if mask is None or not mask[token]:
                return False
            constraint.advance(token)
        return constraint.is_finished()

    plain = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert accepts(plain, '{"n": 9007199254740991}') and accepts(plain, '{"n": -9007199254740991}')
    assert not accepts(plain, '{"n": 9007199254740992}')
    assert not accepts(plain, '{"n": 11111111111111111}')
    nullable = {"type": ["integer", "null"]}
    assert accepts(nullable, "null") and not accepts(nullable, "11111111111111111")
    own = {"type": "integer", "maximum": 10**17}
    assert accepts(own, str(10**17)) and not accepts(own, str(10**17 + 1))
    assert accepts(own, str(-(2**53 - 1))) and not accepts(own, str(-(2**53)))  # only the missing side is added
    assert tighten_schema({"type": "integer", "exclusiveMinimum": 0}) == {
        "type": "integer",
        "exclusiveMinimum": 0,
        "maximum": 2**53 - 1,
    }
    assert tighten_schema({"type": "number"}) == {"type": "number"}


def test_mask_overhead_is_small(tiny_tokenizer: Tokenizer) -> None:
    assert warm_up(tiny_tokenizer) < 5.0
    stats = measure_overhead(tiny_tokenizer, TOOLS, n_tokens=200)
    print(f"\ngrammar mask overhead per token: {stats}")
    assert stats["median_us"] < 2000  # generous: ~30-60 µs measured on a 2-core CPU


def test_free_strings_are_bounded_so_constrained_json_closes(model_and_tok: tuple[MiniGPT, Tokenizer]) -> None:
    """A model stuck repeating one letter inside a free string (a strong bias stands in for the loop) must still
    close the string and the JSON within max_tokens: free strings get DEFAULT_MAX_STRING_LENGTH; a schema's own
    `maxLength` wins, both lower and higher."""
    model, tok = model_and_tok
    (letter,) = tok.encode("a")
    budget = DEFAULT_MAX_STRING_LENGTH + 40

    def answer(note: dict[str, Any]) -> tuple[str, list[int]]:
        schema = {"type": "object", "properties": {"note": note}, "required": ["note"]}
        out = generate(model, JsonConstraint(tok, schema), seed=0, max_new_tokens=budget, bias={letter: 50.0})
        return tok.decode([t for t in out if t != IM_END_ID]), out

    text, out = answer({"type": "string"})
    assert out[-1] == IM_END_ID and len(out) < budget
    assert json.loads(text) == {"note": "a" * DEFAULT_MAX_STRING_LENGTH}
    text, out = answer({"type": "string", "maxLength": 7})
    assert out[-1] == IM_END_ID and json.loads(text) == {"note": "a" * 7}
    text, out = answer({"type": "string", "maxLength": 10_000})  # the client asked for long strings: no cut
    assert len(out) == budget and out[-1] != IM_END_ID and text.endswith("a" * 100)
    assert tighten_schema({"type": "string", "enum": ["x"]}) == {"type": "string", "enum": ["x"]}
    assert "maxLength" not in tighten_schema({"type": "string", "format": "date"})
    assert tighten_schema({"type": ["string", "null"]})["maxLength"] == DEFAULT_MAX_STRING_LENGTH
    assert "maxLength" not in tighten_schema({"type": "string", "minLength": DEFAULT_MAX_STRING_LENGTH + 1})
