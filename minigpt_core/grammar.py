"""Grammar-constrained decoding for tool calls and structured outputs (llguidance behind the `Constraint` protocol).

What it is: `ToolCallConstraint` (OpenAI `tool_choice` auto / none / required / named, `parallel_tool_calls`)
and `JsonConstraint` (`response_format` json_object / json_schema), both implementing `allowed` / `advance` /
`is_finished` of `minigpt_core.constraints`; `warm_up` (call at load: the first mask is slow) and
`measure_overhead` (the per-token cost of the mask on this machine).

What it is not: no sampling, no parsing of the produced calls (see `output_parser.py`), no HTTP. The Lark and
llguidance plumbing lives in `grammar_backend.py`.

The layout enforced is the one `chat_template.py` renders and the model learns:
`<tool_call>` "\\n" `{"name": "<name>", "arguments": {...}}` "\\n" `</tool_call>`, JSON compact with ", " / ": ".

Think blocks: when generation starts inside `<think>` (`inside_think=True`, see
`constraints.prompt_ends_inside_think`), the block is free text except that tool-call tags are banned (and,
where an answer is mandatory, so are `<|im_end|>` / `<|endoftext|>`). After `</think>`, the template's "\\n\\n"
may come (optional, nothing else), then the constrained part: for required / named tool choice that is
`<tool_call>` itself; for `JsonConstraint` it is the JSON value followed by `<|im_end|>`.

After a call in auto / required mode, text is free again: another call is allowed only when `parallel` is
True; otherwise `<tool_call>` is banned and the model may only end (`<|im_end|>`, `<|endoftext|>`, up to
`MAX_TRAILING_WHITESPACE` whitespace tokens before).
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from typing import Any, Literal

import torch

from minigpt_core.errors import InvalidRequest
from minigpt_core.grammar_backend import GrammarBackend, GrammarRun, backend_for, json_rule, tool_call_rules
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, THINK_END_ID, TOOL_CALL_END_ID, TOOL_CALL_ID, Tokenizer

logger = logging.getLogger(__name__)

ToolChoice = Literal["auto", "none", "required"] | dict[str, Any]
Phase = Literal["think", "free", "grammar", "end", "done"]

MAX_TRAILING_WHITESPACE = 4
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENDS = frozenset({IM_END_ID, EOT_ID})
_CALL_TAGS = frozenset({TOOL_CALL_ID, TOOL_CALL_END_ID})
# The body after `<tool_call>`: exactly what chat_template.py renders, closed by `</tool_call>`.
_BODY = f'"\\n" call "\\n" <[{TOOL_CALL_END_ID}]>'
_AFTER_THINK = '"\\n\\n"?'


def _tool_schemas(tools: Any) -> list[tuple[str, dict[str, Any]]]:
    """OpenAI tool dicts -> [(name, parameters schema)], InvalidRequest(param="tools") on anything malformed."""
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    out: list[tuple[str, dict[str, Any]]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidRequest(f"tools[{i}].function.name must match [A-Za-z0-9_-]{{1,64}}", param="tools")
        if any(name == seen for seen, _ in out):
            raise InvalidRequest(f"tools[{i}]: duplicate function name {name!r}", param="tools")
        # OpenAI: omitting `parameters` defines a function with an empty parameter list.
        params = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        out.append((name, params))
    return out


def _forced_name(mode: Any) -> str | None:
    """The function name of a named tool_choice ({"name": n} or OpenAI's {"type": "function", ...}), else None."""
    if not isinstance(mode, dict):
        return None
    inner = mode.get("function", mode)
    name = inner.get("name") if isinstance(inner, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest("a named tool_choice needs a function name", param="tool_choice")
    return name


class ToolCallConstraint:
    """Constrains tool calls to the offered tools' schemas, following OpenAI's `tool_choice` semantics."""

    def __init__(
        self,
        tok: Tokenizer,
        tools: list[dict[str, Any]],
        mode: ToolChoice = "auto",
        *,
        parallel: bool = True,
        inside_think: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        schemas = _tool_schemas(tools)
        forced = _forced_name(mode)
        if forced is None and mode not in ("auto", "none", "required"):
            raise InvalidRequest(f"unknown tool_choice {mode!r}", param="tool_choice")
        if forced is not None:
            schemas = [(n, s) for n, s in schemas if n == forced]
            if not schemas:
                raise InvalidRequest(f"tool_choice names {forced!r}, which is not in tools", param="tool_choice")
        if mode != "none" and not schemas:
            raise InvalidRequest("tool_choice needs at least one tool in tools", param="tool_choice")
        self.backend: GrammarBackend = backend_for(tok, vocab_size)
        self.mode: str = "named" if forced is not None else str(mode)
        self.forced_name = forced
        self.parallel = parallel
        self.calls = 0
        self._rules = tool_call_rules(schemas) if mode != "none" else ""
        self._must_call = self.mode in ("required", "named")
        self._trailing_left = MAX_TRAILING_WHITESPACE
        self._run: GrammarRun | None = None
        self._phase: Phase = "free"
        if self._rules:
            self._check(tools, [name for name, _ in schemas], inside_think)
        if inside_think:
            self._phase = "think"
        elif self._must_call:
            self._start(f"<[{TOOL_CALL_ID}]> {_BODY}")

    def _check(self, tools: list[dict[str, Any]], used: list[str], inside_think: bool) -> None:
        """Build now every grammar this constraint may start later, so an unenforceable schema is a 400 before
        anything is generated: each used tool's arguments alone (its error names that tool), then the call body
        (after `<tool_call>` in free text) and, after a think block, the forced call."""
        for i, (name, schema) in enumerate(_tool_schemas(tools)):
            if name in used:
                self.backend.matcher(f"start: {json_rule(schema)}", param=f"tools[{i}].function.parameters")
        self.backend.matcher(f"start: {_BODY}\n{self._rules}", param="tools")
        if inside_think and self._must_call:
            self.backend.matcher(f"start: {_AFTER_THINK} <[{TOOL_CALL_ID}]> {_BODY}\n{self._rules}", param="tools")

    def _start(self, start: str) -> None:
        self._run = GrammarRun(self.backend, f"start: {start}\n{self._rules}", param="tools")
        self._phase = "grammar"

    def allowed(self) -> torch.Tensor | None:
        if self._phase == "grammar":
            assert self._run is not None
            return self._run.mask()
        if self._phase == "think":
            banned = _CALL_TAGS | _ENDS if self._must_call else _CALL_TAGS
            return self.backend.static_mask(banned, allow=False)
        if self._phase == "free":
            banned = _CALL_TAGS if self.mode == "none" else frozenset({TOOL_CALL_END_ID})
            return self.backend.static_mask(banned, allow=False)
        if self._phase == "end":
            ws = frozenset(self.backend.whitespace_ids) if self._trailing_left > 0 else frozenset()
            return self.backend.static_mask(_ENDS | ws, allow=True)
        return None

    def advance(self, token_id: int) -> None:
        if self._phase == "grammar":
            assert self._run is not None
            self._run.consume(token_id)
            if self._run.finished():
                self.calls += 1
                self._run = None
                self._phase = "free" if self.parallel else "end"
                logger.debug("tool call %d complete", self.calls)
        elif self._phase == "think":
            if token_id == THINK_END_ID:
                if self._must_call:
                    self._start(f"{_AFTER_THINK} <[{TOOL_CALL_ID}]> {_BODY}")
                else:
                    self._phase = "free"
        elif token_id in _ENDS:
            self._phase = "done"
        elif self._phase == "free" and token_id == TOOL_CALL_ID and self.mode != "none":
            self._start(_BODY)
        elif self._phase == "end":
            self._trailing_left -= 1

    def is_finished(self) -> bool:
        return self._phase == "done"


class JsonConstraint:
    """The whole answer (after a think block, if any) is one JSON value matching `schema`, then `<|im_end|>`.

    `schema=None` is OpenAI's `json_object`: any JSON object. Unenforceable schemas raise
    InvalidRequest(param="response_format") here, at construction.
    """

    def __init__(
        self,
        tok: Tokenizer,
        schema: dict[str, Any] | None = None,
        *,
        inside_think: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        if schema is not None and not isinstance(schema, dict):
            raise InvalidRequest("response_format schema must be a JSON object", param="response_format")
        self.backend = backend_for(tok, vocab_size)
        rule = json_rule(schema if schema is not None else {"type": "object"})
        self._value = f"value <[{IM_END_ID}]>\nvalue: {rule}"
        self._run: GrammarRun | None = None
        self._phase: Phase = "grammar"
        if inside_think:  # the grammar starts after </think>: build it now all the same, for the 400
            self.backend.matcher(f"start: {_AFTER_THINK} {self._value}", "response_format")
            self._phase = "think"
        else:
            self._run = GrammarRun(self.backend, f"start: {self._value}", "response_format")

    def allowed(self) -> torch.Tensor | None:
        if self._phase == "think":
            return self.backend.static_mask(_CALL_TAGS | _ENDS, allow=False)
        if self._run is not None:
            return self._run.mask()
        return None

    def advance(self, token_id: int) -> None:
        if self._phase == "think":
            if token_id == THINK_END_ID:
                self._run = GrammarRun(self.backend, f"start: {_AFTER_THINK} {self._value}", "response_format")
                self._phase = "grammar"
        elif self._run is not None:
            self._run.consume(token_id)
            if self._run.finished():
                self._run = None
                self._phase = "done"

    def is_finished(self) -> bool:
        return self._phase == "done"


def warm_up(tok: Tokenizer, vocab_size: int | None = None) -> float:
    """Build the tokenizer's grammar backend and compute a first mask (llguidance initialises lazily).

    Call once at server load. Returns the seconds it took.
    """
    t0 = time.perf_counter()
    tools = [{"type": "function", "function": {"name": "warm_up", "parameters": {"type": "object"}}}]
    constraint = ToolCallConstraint(tok, tools, "required", vocab_size=vocab_size)
    constraint.allowed()
    JsonConstraint(tok, None, vocab_size=vocab_size).allowed()
    elapsed = time.perf_counter() - t0
    logger.info("grammar engine warmed up in %.3f s", elapsed)
    return elapsed


def measure_overhead(
    tok: Tokenizer,
    tools: list[dict[str, Any]],
    *,
    n_tokens: int = 300,
    seed: int = 0,
    vocab_size: int | None = None,
) -> dict[str, float]:
    """Per-token cost (µs) of `allowed()` + `advance()` inside tool calls, sampling uniformly among allowed tokens.

    No model is involved: this is the constraint's own overhead on this CPU (after warm-up).
    """
    warm_up(tok, vocab_size)
    gen = torch.Generator().manual_seed(seed)
    constraint = ToolCallConstraint(tok, tools, "required", parallel=True, vocab_size=vocab_size)
    times_us: list[float] = []
    while len(times_us) < n_tokens:
        in_call = constraint._phase == "grammar"
        t0 = time.perf_counter()
        mask = constraint.allowed()
        t1 = time.perf_counter()
        if in_call and mask is not None:
            allowed = mask.nonzero().flatten()
            token = int(allowed[torch.randint(len(allowed), (1,), generator=gen)].item())
        else:
            token = TOOL_CALL_ID  # between calls: open the next one, to keep measuring inside calls
        t2 = time.perf_counter()
        constraint.advance(token)
        t3 = time.perf_counter()
        if in_call:  # the harness's own sampling (t1..t2) is not the constraint's cost
            times_us.append(((t1 - t0) + (t3 - t2)) * 1e6)
    return {
        "median_us": statistics.median(times_us),
        "mean_us": statistics.fmean(times_us),
        "p90_us": statistics.quantiles(times_us, n=10)[-1],
        "tokens": float(len(times_us)),
    }
