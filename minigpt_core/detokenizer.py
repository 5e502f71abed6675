"""Streaming text out of token ids: a UTF-8-safe incremental detokenizer and a stop-string matcher.

What it is: `IncrementalDetokenizer` turns token ids into text one token at a time and returns only whole
characters (a byte-level BPE can split one character, e.g. an emoji, across several tokens);
`StopStringMatcher` holds back any tail of the stream that could still grow into a stop string, so a stop
string never leaks to the client, not even partially.

What it is not: it does not know the special tokens or the chat structure (output_parser.py routes text into
reasoning / content / tool calls and uses these two pieces for each).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable
from typing import Protocol


class TokenBytes(Protocol):
    """The one thing the streaming pieces need from a tokenizer: the raw bytes of a token."""

    def token_bytes(self, token_id: int) -> bytes: ...


class IncrementalDetokenizer:
    """Token ids -> text, holding back a partial multi-byte character until its last byte arrives.

    Invalid bytes become U+FFFD as soon as they are known to be invalid; an incomplete character still
    buffered at `flush()` becomes U+FFFD too. The concatenated output always equals
    `b"".join(bytes).decode("utf-8", errors="replace")`.
    """

    def __init__(self, token_bytes_fn: Callable[[int], bytes], skip_ids: Iterable[int] = frozenset()) -> None:
        self._token_bytes = token_bytes_fn
        self._skip_ids = frozenset(skip_ids)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        if token_id in self._skip_ids:
            return ""
        return self._decoder.decode(self._token_bytes(token_id))

    def push_many(self, token_ids: Iterable[int]) -> str:
        """Add several tokens at once; the same text as pushing them one by one, joined."""
        token_bytes, skip = self._token_bytes, self._skip_ids
        return self._decoder.decode(b"".join([token_bytes(t) for t in token_ids if t not in skip]))

    def push_bytes(self, data: bytes) -> str:
        """Add raw bytes directly (used by tests and by callers that already hold bytes)."""
        return self._decoder.decode(data)

    @property
    def has_pending(self) -> bool:
        """True while a partial character is buffered."""
        return bool(self._decoder.getstate()[0])

    def flush(self) -> str:
        """End of stream (or a special token boundary): release the buffer, U+FFFD for an incomplete char."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class StopStringMatcher:
    """Finds stop strings in a stream of text pushed piece by piece.

    `push(text)` returns `(emit, stopped)`: `emit` is the text that is now safe to show. Text that could be
    the start of a stop string is held back until it either completes one (then `stopped` is True, `emit` is
    everything before the match and the rest is dropped) or can no longer match (then it is emitted).
    With several stop strings the earliest match in the stream wins. Empty stop strings are ignored.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buffer = self._held + text
        match_at, match = self._earliest_match(buffer)
        if match is not None:
            self.stopped, self.matched, self._held = True, match, ""
            return buffer[:match_at], True
        keep = self._partial_suffix_len(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """End of stream: the held text did not become a stop string, so release it."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _earliest_match(self, buffer: str) -> tuple[int, str | None]:
        best_at, best = len(buffer) + 1, None
        for stop in self.stops:
            at = buffer.find(stop)
            if at != -1 and at < best_at:
                best_at, best = at, stop
        return best_at, best

    def _partial_suffix_len(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest
