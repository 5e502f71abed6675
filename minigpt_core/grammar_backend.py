"""The llguidance side of constrained decoding: per-tokenizer state, grammar compilation and token masks.

What it is: `backend_for(tok)` gives the cached `GrammarBackend` of a tokenizer (its `llguidance.LLTokenizer`,
compiled grammars, reusable static masks); `GrammarRun` follows one grammar through generated tokens and turns
llguidance's bitmask into the bool (V,) mask of the `Constraint` protocol; `json_rule`, `tool_call_rules` and
`lark_literal` build the Lark text. `GrammarBackend.matcher` maps what llguidance cannot enforce to
`InvalidRequest`: a grammar is compiled, then tried (see "Choices"), before any request may use it.

What it is not: no request semantics (tool_choice, think blocks, ...): those live in `grammar.py`.

Choices:
- The `LLTokenizer` is built from our `tokenizer.json` text (llguidance parses it with the Rust `tokenizers`
  crate), which needs no transformers wrapper and marks ids 0..8 as special tokens.
- JSON is forced into the exact compact layout the model is trained on (`json.dumps` defaults: ", " and ": ",
  no other whitespace), through llguidance's `x-guidance` options on every `%json` rule.
- Objects that declare `properties` but say nothing of `additionalProperties` get `additionalProperties: false`:
  the model only ever sees declared keys in training, and the output still validates against the original schema.
- Integers without a bound of their own are bounded to I-JSON's interoperable range, +-(2**53 - 1) (RFC 7493:
  larger ones lose precision in JavaScript clients): a small model that starts repeating a digit then stops
  after 16 digits instead of running to `max_tokens` with JSON that never closes.
- Strings without a bound of their own get `maxLength` `DEFAULT_MAX_STRING_LENGTH` (256 characters; the schema's
  own `maxLength` wins, and strings with `enum`, `const`, `pattern`, `format` or a larger `minLength` are left
  as they are): a small model looping inside a free string then has to close it, and the JSON, instead of
  running to `max_tokens`. A client that wants longer strings says so with `maxLength`.
- llguidance compiles lazily: a schema can pass its checks and fail only at a mask or a token later (a `$ref`
  that only refers to itself admits no value; `"pattern": "^(a{1000}){1000}$"` exhausts the lexer at the
  string's first character). So a new grammar is tried once before it is used: its first mask, then the
  tokens it forces, one at a time (up to `_PROBE_TOKENS`), each with its mask. A failure is a 400 before the
  response starts, and is cached like a success, so the same bad schema costs its (seconds of) compile once.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import OrderedDict
from typing import Any

import llguidance
import torch

from minigpt_core.errors import GrammarError, InvalidRequest
from minigpt_core.tokenizer import IM_END_ID, NUM_SPECIAL, Tokenizer

logger = logging.getLogger(__name__)

JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MAX_CACHED_GRAMMARS = 128
_PROBE_TOKENS = 64
_WHITESPACE = frozenset(b" \t\n\r")
# Keywords whose value is a schema / a list of schemas / a map of name -> schema.
_SUB_SCHEMA = ("items", "additionalItems", "contains", "additionalProperties", "propertyNames")
_SUB_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUB_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def _engine_error(matcher: llguidance.LLMatcher) -> str:
    """A failed matcher's reason in one line; an empty language (`NoExtensionBias`) said in schema terms."""
    reason = _first_line(matcher.get_error())
    if reason.startswith("NoExtensionBias"):
        return "it admits no JSON value (a $ref that can only refer to itself?)"
    return reason


MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_MAX_STRING_LENGTH = 256
_STRING_BOUNDED_BY = ("maxLength", "enum", "const", "pattern", "format")


def _is_integer_type(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "integer" or (isinstance(kind, list) and "integer" in kind)


def _is_string_type(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def tighten_schema(schema: Any) -> Any:
    """A copy of `schema` where objects with `properties` default to `additionalProperties: false`, unbounded
    integers to the range +-MAX_SAFE_INTEGER and free strings to `maxLength` DEFAULT_MAX_STRING_LENGTH (a bound
    the schema sets itself is kept)."""
    if isinstance(schema, list):
        return [tighten_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = dict(schema)
    for key in _SUB_SCHEMA:
        if isinstance(out.get(key), dict | list):
            out[key] = tighten_schema(out[key])
    for key in _SUB_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [tighten_schema(s) for s in out[key]]
    for key in _SUB_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: tighten_schema(s) for name, s in out[key].items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if _is_integer_type(out):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -MAX_SAFE_INTEGER
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = MAX_SAFE_INTEGER
    if _is_string_type(out) and not any(key in out for key in _STRING_BOUNDED_BY):
        min_length = out.get("minLength", 0)
        if not isinstance(min_length, int) or min_length <= DEFAULT_MAX_STRING_LENGTH:
            out["maxLength"] = DEFAULT_MAX_STRING_LENGTH
    return out


def json_rule(schema: dict[str, Any]) -> str:
    """A Lark `%json` expansion for `schema` in our compact layout (the schema's own x-guidance is replaced)."""
    body = tighten_schema(schema)
    body["x-guidance"] = dict(JSON_OPTIONS)
    return "%json " + json.dumps(body, ensure_ascii=True)


def lark_literal(text: str) -> str:
    """`text` as a Lark string literal (JSON escapes, ASCII only)."""
    return json.dumps(text, ensure_ascii=True)


def tool_call_rules(tools: list[tuple[str, dict[str, Any]]]) -> str:
    """Lark rules defining `call`: `{"name": <name>, "arguments": <that tool's schema>}`, one alternative a tool.

    Each tool's schema is its own `%json` root, so its `$ref: "#/$defs/..."` pointers keep resolving.
    """
    lines = ["call: " + " | ".join(f"call_{i}" for i in range(len(tools)))]
    for i, (name, schema) in enumerate(tools):
        head = lark_literal(f'{{"name": {json.dumps(name)}, "arguments": ')
        lines.append(f'call_{i}: {head} args_{i} "}}"')
        lines.append(f"args_{i}: {json_rule(schema)}")
    return "\n".join(lines)


class GrammarBackend:
    """Everything llguidance needs for one tokenizer: built once, shared by every request (thread-safe)."""

    def __init__(self, tok: Tokenizer, vocab_size: int) -> None:
        if vocab_size < tok.vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
        self.vocab_size = vocab_size
        self.ll_tokenizer = llguidance.LLTokenizer(tok.to_json_str(), n_vocab=vocab_size, eos_token=IM_END_ID)
        self.whitespace_ids = [
            i for i, b in enumerate(tok.all_token_bytes()) if i >= NUM_SPECIAL and b and set(b) <= _WHITESPACE
        ]
        self._lock = threading.Lock()
        # lark text -> template matcher, or the reason it cannot be enforced (failures are cached too)
        self._matchers: OrderedDict[str, llguidance.LLMatcher | str] = OrderedDict()
        self._masks: dict[tuple[bool, frozenset[int]], torch.Tensor] = {}
        # (256, 8) bool: byte value -> its 8 bits, least significant first (llguidance's bit order).
        self._bit_table = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1 == 1

    def matcher(self, lark: str, param: str) -> llguidance.LLMatcher:
        """A fresh matcher for `lark` (compiled and tried once, then deep-copied); InvalidRequest(param) if the
        grammar engine cannot enforce it. Also the way to check a grammar ahead of its use."""
        compiled = self._compiled(lark)
        if isinstance(compiled, str):
            raise InvalidRequest(f"the schema cannot be enforced: {compiled}", param=param)
        return compiled.deep_copy()

    def _compiled(self, lark: str) -> llguidance.LLMatcher | str:
        """The cached template matcher of `lark`, or why it cannot be used."""
        with self._lock:
            cached = self._matchers.get(lark)
            if cached is not None:
                self._matchers.move_to_end(lark)
                return cached
        compiled = self._compile(lark)
        with self._lock:
            self._matchers[lark] = compiled
            while len(self._matchers) > _MAX_CACHED_GRAMMARS:
                self._matchers.popitem(last=False)
        return compiled

    def _compile(self, lark: str) -> llguidance.LLMatcher | str:
        try:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        except ValueError as exc:
            return _first_line(str(exc))
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer)
        if is_error:
            return _first_line(messages[0]) if messages else "unknown error"
        template = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if template.is_error():
            return _first_line(template.get_error())
        for warning in template.get_grammar_warnings():
            logger.debug("grammar warning: %s", warning)
        problem = self._probe(template.deep_copy())
        return template if problem is None else problem

    def _probe(self, matcher: llguidance.LLMatcher) -> str | None:
        """Run `matcher` along its forced path (first mask, then every token that is the only one allowed, up to
        `_PROBE_TOKENS`); the error llguidance reports on the way, or None."""
        bits = torch.zeros((self.vocab_size + 31) // 32, dtype=torch.int32)
        for _ in range(_PROBE_TOKENS):
            if matcher.is_stopped():
                return None
            matcher.unsafe_compute_mask_ptr(bits.data_ptr(), bits.numel() * bits.element_size())
            if matcher.is_error():
                return _engine_error(matcher)
            allowed = self.unpack(bits).nonzero().flatten()
            if len(allowed) == 0:
                return "the grammar allows no token at all"
            if len(allowed) > 1:
                return None
            if not matcher.consume_token(int(allowed[0])):
                return _engine_error(matcher)
        return None

    def static_mask(self, ids: frozenset[int], *, allow: bool) -> torch.Tensor:
        """A shared, read-only bool (V,) mask: only `ids` allowed (allow=True) or all but `ids` (allow=False)."""
        key = (allow, ids)
        with self._lock:
            mask = self._masks.get(key)
            if mask is None:
                mask = torch.full((self.vocab_size,), not allow, dtype=torch.bool)
                mask[list(ids)] = allow
                self._masks[key] = mask
        return mask

    def unpack(self, bits: torch.Tensor) -> torch.Tensor:
        """llguidance's int32 bitmask (W,) -> bool (V,)."""
        return torch.index_select(self._bit_table, 0, bits.view(torch.uint8).long()).view(-1)[: self.vocab_size]


_BACKENDS: weakref.WeakKeyDictionary[Tokenizer, dict[int, GrammarBackend]] = weakref.WeakKeyDictionary()
_BACKENDS_LOCK = threading.Lock()


def backend_for(tok: Tokenizer, vocab_size: int | None = None) -> GrammarBackend:
    """The cached backend of `tok` for a model vocabulary of `vocab_size` (default: the tokenizer's)."""
    size = tok.vocab_size if vocab_size is None else vocab_size
    with _BACKENDS_LOCK:
        per_size = _BACKENDS.setdefault(tok, {})
        backend = per_size.get(size)
        if backend is None:
            backend = GrammarBackend(tok, size)
            per_size[size] = backend
    return backend


class GrammarRun:
    """One grammar followed through the generated tokens; finished once the grammar can take nothing more."""

    def __init__(self, backend: GrammarBackend, lark: str, param: str) -> None:
        self.backend = backend
        self.matcher = backend.matcher(lark, param)
        self._bits = torch.zeros((backend.vocab_size + 31) // 32, dtype=torch.int32)

    def mask(self) -> torch.Tensor:
        nbytes = self._bits.numel() * self._bits.element_size()
        self.matcher.unsafe_compute_mask_ptr(self._bits.data_ptr(), nbytes)
        if self.matcher.is_error():
            raise GrammarError(f"grammar engine failed: {self.matcher.get_error()}")
        return self.backend.unpack(self._bits)

    def consume(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise GrammarError(f"token {token_id} breaks the grammar: {self.matcher.get_error()}")

    def finished(self) -> bool:
        return self.matcher.is_stopped()
