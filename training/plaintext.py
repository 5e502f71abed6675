"""Plain-text pretraining files (`.txt`): what nanoGPT users bring (Shakespeare, TinyStories, a book dump).

What it is: `is_text_file` and `iter_text_pieces`, which cut a text file into documents and the documents into
pieces that tokenize independently. A line holding only `<|endoftext|>` separates documents (the TinyStories /
GPT-2 convention); without one the whole file is one document. Only the last piece of a document ends with
`<|endoftext|>`; the pieces (about `PIECE_CHARS` characters, cut after a blank line when there is one) keep memory
flat on large files and give the held-out split (every 50th document or piece) something to choose from.
A line that is not UTF-8 is a bad line (reported as file:line and counted) like a bad JSONL line.
What it is not: tokenization or caching (training.shards) nor JSONL parsing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt",)
DOC_SEPARATOR = "<|endoftext|>"
PIECE_CHARS = 1 << 15  # ~8k tokens: far above any row length, small enough to encode without a memory spike


def is_text_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


@dataclass(frozen=True)
class TextPiece:
    line: int  # first line of the piece (1-based), or the bad line
    n_lines: int  # lines this item accounts for (blank lines and separators included)
    text: str | None  # None: a bad line, see `error`
    ends_document: bool = False
    error: str | None = None


def iter_text_pieces(path: Path, piece_chars: int = PIECE_CHARS) -> Iterator[TextPiece]:
    """The pieces of a text file in order, streaming; every document's last piece has `ends_document`."""
    buf: list[str] = []
    size, start, counted, pending = 0, 1, 0, False  # pending: a piece of this document was yielded already
    lineno = 0

    def flush(end: bool) -> Iterator[TextPiece]:
        nonlocal buf, size, start, counted, pending
        text = "".join(buf)
        if text.strip() or (end and pending):  # an empty tail still closes a document that has pieces
            yield TextPiece(start, lineno - counted, text, end)
            counted = lineno
        pending = (pending or bool(text.strip())) and not end
        buf, size, start = [], 0, lineno + 1

    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield TextPiece(lineno, 1, None, error="not valid UTF-8")
                counted += 1
                continue
            if line.strip() == DOC_SEPARATOR:
                yield from flush(end=True)
                continue
            buf.append(line)
            size += len(line)
            if size >= piece_chars and (not line.strip() or size >= 4 * piece_chars):
                yield from flush(end=False)
    yield from flush(end=True)
