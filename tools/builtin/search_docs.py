"""The `search_docs` tool: BM25 ranking over a local folder of `.txt` / `.md` files.

The folder comes from the environment variable `MINIGPT_DOCS_DIR`, read at call time; without it, the small
corpus bundled in `tools/docs_corpus/` (notes about MiniGPT itself) is searched. Files are split into passages
(paragraphs merged up to ~600 characters) and each passage is a BM25 document, so that a hit points at the
relevant part of a long file. The index is cached per folder and rebuilt when a file's size or mtime changes.

This is lexical search (no embeddings, no stemming beyond lower-casing) and never reaches the network.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from tools.base import ToolError, tool

logger = logging.getLogger(__name__)

DOCS_DIR_ENV = "MINIGPT_DOCS_DIR"
BUNDLED_DOCS_DIR = Path(__file__).resolve().parent.parent / "docs_corpus"
MAX_FILES = 2000
MAX_FILE_BYTES = 1_000_000
MAX_QUERY_CHARS = 1000
PASSAGE_CHARS = 600
SNIPPET_CHARS = 300
BM25_K1 = 1.5
BM25_B = 0.75
_TOKEN_RE = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN_RE.findall(text)]


@dataclass
class Passage:
    source: str  # path relative to the folder
    text: str
    term_counts: Counter[str]
    length: int


@dataclass
class BM25Index:
    """An in-memory BM25 index over passages."""

    passages: list[Passage]
    doc_freq: Counter[str] = field(default_factory=Counter)
    avg_length: float = 0.0

    def __post_init__(self) -> None:
        for passage in self.passages:
            self.doc_freq.update(passage.term_counts.keys())
        total = sum(p.length for p in self.passages)
        self.avg_length = total / len(self.passages) if self.passages else 0.0

    def idf(self, term: str) -> float:
        n = len(self.passages)
        df = self.doc_freq.get(term, 0)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def score(self, passage: Passage, terms: list[str]) -> float:
        total = 0.0
        norm = BM25_K1 * (1.0 - BM25_B + BM25_B * passage.length / (self.avg_length or 1.0))
        for term in terms:
            tf = passage.term_counts.get(term, 0)
            if tf:
                total += self.idf(term) * tf * (BM25_K1 + 1.0) / (tf + norm)
        return total

    def search(self, query: str, top_k: int) -> list[tuple[float, Passage]]:
        terms = list(dict.fromkeys(tokenize(query)))  # each query term once
        scored = [(self.score(p, terms), i, p) for i, p in enumerate(self.passages)]
        hits = sorted((item for item in scored if item[0] > 0), key=lambda item: (-item[0], item[1]))
        return [(score, passage) for score, _, passage in hits[:top_k]]


def split_passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs (blank-line separated) merged greedily up to `max_chars`; over-long paragraphs are cut."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    passages: list[str] = []
    current = ""
    for paragraph in paragraphs:
        while len(paragraph) > max_chars:
            cut = paragraph.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            if current:
                passages.append(current)
                current = ""
            passages.append(paragraph[:cut].strip())
            paragraph = paragraph[cut:].strip()
        if current and len(current) + len(paragraph) + 2 > max_chars:
            passages.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        passages.append(current)
    return passages


def _list_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
    if len(files) > MAX_FILES:
        logger.warning("search_docs: %d files in %s, indexing the first %d", len(files), folder, MAX_FILES)
    return files[:MAX_FILES]


def build_index(folder: Path) -> BM25Index:
    passages: list[Passage] = []
    for path in _list_files(folder):
        if path.stat().st_size > MAX_FILE_BYTES:
            logger.warning("search_docs: skipping %s (larger than %d bytes)", path, MAX_FILE_BYTES)
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        source = path.relative_to(folder).as_posix()
        for chunk in split_passages(text):
            tokens = tokenize(chunk)
            if tokens:
                passages.append(Passage(source, chunk, Counter(tokens), len(tokens)))
    return BM25Index(passages)


_CACHE: dict[Path, tuple[tuple[tuple[str, int, int], ...], BM25Index]] = {}


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _list_files(folder))


def docs_folder() -> Path:
    configured = os.environ.get(DOCS_DIR_ENV)
    folder = Path(configured).expanduser() if configured else BUNDLED_DOCS_DIR
    if not folder.is_dir():
        raise ToolError(f"documents folder {str(folder)!r} does not exist (set {DOCS_DIR_ENV})")
    return folder.resolve()


def get_index(folder: Path) -> BM25Index:
    fingerprint = _fingerprint(folder)
    cached = _CACHE.get(folder)
    if cached is None or cached[0] != fingerprint:
        _CACHE[folder] = (fingerprint, build_index(folder))
    return _CACHE[folder][1]


def _snippet(passage: str, terms: set[str]) -> str:
    """The passage, or a window of it around the first query term when it is long."""
    flat = " ".join(passage.split())
    if len(flat) <= SNIPPET_CHARS:
        return flat
    lower = flat.lower()
    positions = [m.start() for t in terms if (m := re.search(rf"\b{re.escape(t)}\b", lower))]
    start = max(0, min(positions) - SNIPPET_CHARS // 4) if positions else 0
    if start:  # begin at a word boundary
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 30 else start
    window = flat[start : start + SNIPPET_CHARS]
    return ("…" if start else "") + window + ("…" if start + SNIPPET_CHARS < len(flat) else "")


@tool(
    name="search_docs",
    description="Search the local documentation (MiniGPT notes by default) and return the best matching passages.",
)
def search_docs(
    query: Annotated[str, Field(description="What to look for, in a few words")],
    top_k: Annotated[int, Field(description="How many passages to return (1-10)", ge=1, le=10)] = 3,
) -> list[dict[str, Any]]:
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"query too long ({len(query)} > {MAX_QUERY_CHARS} characters)")
    terms = tokenize(query)
    if not terms:
        raise ToolError("query has no words to search for")
    hits = get_index(docs_folder()).search(query, top_k)
    return [
        {"source": passage.source, "score": round(score, 3), "text": _snippet(passage.text, set(terms))}
        for score, passage in hits
    ]
