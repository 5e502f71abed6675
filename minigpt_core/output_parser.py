"""Generated token ids -> typed segments (reasoning text, content text, tool calls), streaming.

What it is: a small state machine fed one token id at a time. Text goes through one UTF-8-safe
`IncrementalDetokenizer`; special tokens switch the mode:

    reasoning --</think>--> content --<tool_call>--> tool call --</tool_call>--> content --> ...

- `thinking=True`: the answer starts inside the think block (a leading `<think>` the model writes itself is
  accepted too) and stays there until `</think>`. With `thinking=False`, a stray `<think>...</think>` block
  at the start of the answer (e.g. an empty one) is swallowed, unless `swallow_think=False` (/v1/completions:
  the text is every generated token's text, tags dropped, so that its logprobs can line up with it). Tags
  never reach the text.
- Tool calls (`parse_tools=True`), streamed the way OpenAI streams them: once the text after `<tool_call>`
  reads `{"name": "<name>", "arguments": {`, a `ToolCallStart` carries the name, then every token adds a
  `ToolCallArgs` fragment of the arguments object exactly as the model writes it (a string/escape-aware scan
  finds where the object ends, so the call's closing `}` and whitespace are not part of it), and
  `</tool_call>` (or the end of generation) emits `ToolCallEnd` whose `arguments_json` is the fragments joined.
  Such a call stays a call even if its arguments turn out not to be JSON (cut by max_tokens): it has been
  streamed already; `tool_parse_failed` is set. A call in another shape (arguments first, arguments as a JSON
  string) is buffered and parsed with `json.loads` at its end, then emitted as `ToolCallStart`, one
  `ToolCallArgs` (`json.dumps(arguments, ensure_ascii=False)`) and `ToolCallEnd`; if that fails the raw text
  comes back as `Content` (nothing is lost) and `tool_parse_failed` is set. Whitespace around calls is not
  content.
- Stop strings apply to reasoning and content text (not to tool-call JSON); a match ends the output with a
  `Finished("stop")` segment, which tells the caller to cancel generation.

What it is not: it does not decide when generation ends (the engine owns EOS, `stop_token_ids` and
`max_new_tokens`; end-of-turn ids are ignored here), and it renders no wire format (server/streaming.py).
Non-streaming callers use `parse_all`, which accumulates the very same segments.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from minigpt_core.detokenizer import IncrementalDetokenizer, StopStringMatcher, TokenBytes
from minigpt_core.tokenizer import NUM_SPECIAL, THINK_END_ID, THINK_ID, TOOL_CALL_END_ID, TOOL_CALL_ID

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Finished:
    reason: Literal["stop"]


Segment = Reasoning | Content | ToolCallStart | ToolCallArgs | ToolCallEnd | Finished
Mode = Literal["reasoning", "content", "tool_call", "swallow", "done"]


class _Channel:
    """One run of reasoning or content text: stop-string matching, then whitespace shaping.

    Leading whitespace is dropped when `strip_leading` (after `</think>` or `</tool_call>`); trailing
    whitespace is held back so it can be dropped if the run ends at a tag (`close(keep_trailing=False)`).
    """

    def __init__(self, stops: Sequence[str], *, strip_leading: bool) -> None:
        self._matcher = StopStringMatcher(stops)
        self._strip_leading = strip_leading
        self._pending_ws = ""

    def feed(self, text: str) -> tuple[str, bool]:
        emit, stopped = self._matcher.push(text)
        out = self._shape(emit)
        if stopped:  # text right before a stop string is kept as the model wrote it
            out, self._pending_ws = out + self._pending_ws, ""
        return out, stopped

    def close(self, *, keep_trailing: bool) -> str:
        out = self._shape(self._matcher.flush())
        tail, self._pending_ws = self._pending_ws, ""
        return out + tail if keep_trailing else out

    def _shape(self, text: str) -> str:
        if self._strip_leading:
            text = text.lstrip()
            self._strip_leading = not text
        if not text:
            return ""
        full = self._pending_ws + text
        kept = full.rstrip()
        self._pending_ws = full[len(kept) :]
        return kept


# The start of a call in the template's layout, up to the `{` that opens its arguments object.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\{)')


class _ObjectEnd:
    """Finds where a JSON object ends in text fed piece by piece: counts brackets outside strings."""

    def __init__(self) -> None:
        self.depth = 0
        self.closed = False
        self._in_string = False
        self._escape = False

    def feed(self, text: str) -> int:
        """How many characters of `text` still belong to the object (all of them until it closes)."""
        if self.closed:
            return 0
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.closed = True
                    return i + 1
        return len(text)


def _json_name(literal: str) -> str | None:
    try:
        name = json.loads(literal)
    except ValueError:
        return None
    return name if isinstance(name, str) and name else None


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    arguments_json: str


def parse_tool_call(raw: str) -> _Call | None:
    """`{"name": str, "arguments": object | JSON string}` -> call, or None when it is not a valid call."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return _Call(name=obj["name"], arguments_json=json.dumps(arguments, ensure_ascii=False))


class OutputParser:
    """Feed generated ids with `push`, then call `finish` once; both return the new segments."""

    def __init__(
        self,
        tokenizer_like: TokenBytes,
        *,
        thinking: bool,
        parse_tools: bool,
        stops: Sequence[str] = (),
        swallow_think: bool = True,
    ) -> None:
        self._detok = IncrementalDetokenizer(tokenizer_like.token_bytes)
        self._parse_tools = parse_tools
        self._swallow_think = swallow_think
        self._stops = tuple(stops)
        self.mode: Mode = "reasoning" if thinking else "content"
        self._channel = _Channel(self._stops, strip_leading=thinking)
        self._call_parts: list[str] = []  # raw text of the open call
        self._call_index: int | None = None  # set once the open call's name is out and its arguments stream
        self._args_end = _ObjectEnd()
        self._args_parts: list[str] = []
        self._text_seen = False  # any non-whitespace reasoning/content text so far
        self.reasoning_tokens = 0  # tokens inside the think block, not counting its tags (OpenAI's usage figure)
        self.tool_calls = 0
        self.tool_parse_failed = False
        self.stopped = False  # a stop string matched

    @property
    def in_reasoning(self) -> bool:
        return self.mode in ("reasoning", "swallow")

    def push(self, token_id: int) -> list[Segment]:
        if self.mode == "done":
            return []
        if token_id < NUM_SPECIAL:  # a tag; encode() never returns these ids for plain text
            segments = self._route(self._detok.flush())  # a tag ends any partial character
            if self.mode != "done":
                segments += self._on_special(token_id)
            return segments
        if self.in_reasoning:
            self.reasoning_tokens += 1
        return self._route(self._detok.push(token_id))

    def push_many(self, token_ids: Sequence[int], *, stop_at_call_end: bool = False) -> tuple[list[Segment], int]:
        """`push` each id in turn, in one call: the segments, and how many ids were taken. That is all of them
        unless the output ended on one (a stop string; with `stop_at_call_end`, the end of a tool call): the ids
        after it are not taken. A run of text tokens in reasoning or content with no stop strings to watch is
        decoded at once (the same text: the detokenizer and the whitespace shaping do not depend on how the
        text is cut)."""
        segments: list[Segment] = []
        n, i = len(token_ids), 0
        while i < n and self.mode != "done":
            token_id = token_ids[i]
            if token_id >= NUM_SPECIAL and not self._stops and self.mode in ("reasoning", "content"):
                j = i + 1
                while j < n and token_ids[j] >= NUM_SPECIAL:
                    j += 1
                if self.mode == "reasoning":
                    self.reasoning_tokens += j - i
                segments += self._route(self._detok.push_many(token_ids[i:j]))
                i = j
                continue
            new = self.push(token_id)
            segments += new
            i += 1
            if stop_at_call_end and any(isinstance(seg, ToolCallEnd) for seg in new):
                break
        return segments, i

    def finish(self) -> list[Segment]:
        """End of generation: release held text, close an open tool call. Idempotent."""
        segments = self._route(self._detok.flush())
        if self.mode == "reasoning":
            segments += self._text(self._channel.close(keep_trailing=False))
        elif self.mode == "content":
            segments += self._text(self._channel.close(keep_trailing=True))
        elif self.mode == "tool_call":  # no </tool_call>: accept a complete call, else fall back
            segments += self._end_call()
        self.mode = "done"
        return segments

    def _route(self, text: str) -> list[Segment]:
        if not text or self.mode in ("done", "swallow"):
            return []
        if self.mode == "tool_call":
            self._call_parts.append(text)
            return self._stream_call(text)
        self._text_seen = self._text_seen or bool(text.strip())
        emit, stopped = self._channel.feed(text)
        segments = self._text(emit)
        if stopped:
            self.mode, self.stopped = "done", True
            segments.append(Finished("stop"))
        return segments

    def _text(self, text: str) -> list[Segment]:
        if not text:
            return []
        return [Reasoning(text) if self.mode == "reasoning" else Content(text)]

    def _on_special(self, token_id: int) -> list[Segment]:
        if self.mode == "tool_call":
            return self._end_call() if token_id == TOOL_CALL_END_ID else []
        if token_id == TOOL_CALL_ID and self._parse_tools:
            segments = self._text(self._channel.close(keep_trailing=False))  # also ends an open think block
            self.mode, self._call_parts = "tool_call", []
            return segments
        if self.mode == "swallow":
            if token_id == THINK_END_ID:
                self._start_content()
            return []
        if self.mode == "reasoning":
            if token_id != THINK_END_ID:
                return []  # `<think>` the model writes itself, or a stray tag
            segments = self._text(self._channel.close(keep_trailing=False))
            self._start_content()
            return segments
        if token_id == THINK_ID and not self._text_seen and self._swallow_think:  # stray block at the start
            self._channel.close(keep_trailing=False)
            self.mode = "swallow"
        return []  # any other tag inside content is dropped

    def _start_content(self) -> None:
        self.mode = "content"
        self._channel = _Channel(self._stops, strip_leading=True)

    def _stream_call(self, text: str) -> list[Segment]:
        """New text inside a call: the name once the head is complete, then argument fragments."""
        segments: list[Segment] = []
        if self._call_index is None:
            raw = "".join(self._call_parts)
            head = _CALL_HEAD.match(raw)
            name = _json_name(head.group(1)) if head is not None else None
            if head is None or name is None:
                return []  # not (yet) in the template's layout: wait, and parse the whole call at its end
            self._call_index, self.tool_calls = self.tool_calls, self.tool_calls + 1
            segments.append(ToolCallStart(self._call_index, name))
            text = raw[head.end() :]
        fragment = text[: self._args_end.feed(text)]
        if fragment:
            self._args_parts.append(fragment)
            segments.append(ToolCallArgs(self._call_index, fragment))
        return segments

    def _end_call(self) -> list[Segment]:
        raw, index, arguments = "".join(self._call_parts), self._call_index, "".join(self._args_parts)
        closed = self._args_end.closed
        self._call_parts, self._call_index, self._args_parts = [], None, []
        self._args_end = _ObjectEnd()
        self._start_content()
        if index is not None:  # streamed already: it stays a call whatever its arguments turned out to be
            if not (closed and _is_json_object(arguments)):
                self.tool_parse_failed = True
                logger.debug("streamed tool call has arguments that are not a JSON object: %r", arguments)
            return [ToolCallEnd(index, arguments)]
        call = parse_tool_call(raw) if self._parse_tools else None
        if call is None:
            self.tool_parse_failed = True
            logger.debug("tool call did not parse, returned as content: %r", raw)
            return [Content(raw.strip())] if raw.strip() else []
        index, self.tool_calls = self.tool_calls, self.tool_calls + 1
        return [
            ToolCallStart(index, call.name),
            ToolCallArgs(index, call.arguments_json),
            ToolCallEnd(index, call.arguments_json),
        ]


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    index: int
    name: str
    arguments_json: str


@dataclass(slots=True)
class ParsedOutput:
    """All segments of one answer, accumulated (the non-streaming view)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    stopped: bool = False  # a stop string ended the answer


def accumulate(segments: Iterable[Segment]) -> ParsedOutput:
    """Fold a segment stream into one `ParsedOutput`; streaming and non-streaming share this path."""
    out = ParsedOutput()
    names: dict[int, str] = {}
    fragments: dict[int, list[str]] = {}
    for seg in segments:
        if isinstance(seg, Reasoning):
            out.reasoning += seg.text
        elif isinstance(seg, Content):
            out.content += seg.text
        elif isinstance(seg, ToolCallStart):
            names[seg.index], fragments[seg.index] = seg.name, []
        elif isinstance(seg, ToolCallArgs):
            fragments[seg.index].append(seg.fragment)
        elif isinstance(seg, ToolCallEnd):
            args = "".join(fragments.pop(seg.index))
            if args != seg.arguments_json:
                raise AssertionError("tool-call fragments do not add up to arguments_json")  # invariant
            out.tool_calls.append(ParsedToolCall(seg.index, names.pop(seg.index), seg.arguments_json))
        elif isinstance(seg, Finished):
            out.stopped = True
    return out


def parse_all(
    tokenizer_like: TokenBytes,
    token_ids: Iterable[int],
    *,
    thinking: bool,
    parse_tools: bool,
    stops: Sequence[str] = (),
) -> tuple[ParsedOutput, OutputParser]:
    """Parse a finished generation in one go; returns the output and the parser (for its counters)."""
    parser = OutputParser(tokenizer_like, thinking=thinking, parse_tools=parse_tools, stops=stops)
    segments: list[Segment] = []
    for token_id in token_ids:
        segments += parser.push(token_id)
        if parser.mode == "done":
            break
    segments += parser.finish()
    return accumulate(segments), parser
