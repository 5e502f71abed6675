"""The `text_stats` tool: character, word, line and sentence counts and the most frequent words of a text.

Words are runs of letters/digits (Unicode-aware, with inner apostrophes and hyphens: "don't", "well-known");
sentences end at `.`, `!`, `?` (or their CJK forms) or at the end of the text. It is a counter, not a
tokenizer for the model and not a readability scorer.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, Any

from pydantic import Field

from tools.base import ToolError, tool

MAX_TEXT_CHARS = 200_000
TOP_WORDS = 5
_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SENTENCE_END_RE = re.compile(r"[.!?。！？]+")


def count_sentences(text: str) -> int:
    """Pieces between sentence terminators that contain at least one word character."""
    return sum(1 for piece in _SENTENCE_END_RE.split(text) if _WORD_RE.search(piece))


def compute_stats(text: str, top_n: int = TOP_WORDS) -> dict[str, Any]:
    """The statistics as a plain dict (the tool returns it as JSON)."""
    if len(text) > MAX_TEXT_CHARS:
        raise ToolError(f"text too long ({len(text)} > {MAX_TEXT_CHARS} characters)")
    words = _WORD_RE.findall(text)
    counts = Counter(word.lower() for word in words)
    # Ties broken alphabetically so that the answer is deterministic.
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_n]
    return {
        "characters": len(text),
        "characters_no_spaces": sum(1 for ch in text if not ch.isspace()),
        "words": len(words),
        "unique_words": len(counts),
        "lines": len(text.splitlines()) if text else 0,
        "sentences": count_sentences(text),
        "top_words": [{"word": word, "count": n} for word, n in top],
    }


@tool(
    name="text_stats",
    description="Count characters, words, lines and sentences of a text and list its most frequent words.",
)
def text_stats(text: Annotated[str, Field(description="The text to analyse")]) -> dict[str, Any]:
    return compute_stats(text)
