"""Writes the bundled synthetic corpus to a folder, and reads its texts back for tokenizer training.

What it is: `generate_corpus(out_dir, seed, scale)`, which writes pretrain / SFT / DPO train and val JSONL files,
three held-out eval files and a `manifest.json` (counts, seed, and the registry of which phrasing templates went
to which split), deterministic for a seed; `iter_texts(out_dir)`, which yields every piece of text in them; and
`source_digest()`, the hash of what the corpus is made from (this package's modules and word lists, and the `tools`
package whose schemas and results the tool dialogues hold), which keys a cached corpus.
What it is not: a tokenizer or a data loader (training/shards.py reads these files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tools
from training.datagen import (
    api_tools,
    composed_tools,
    identity,
    math_dialogues,
    persona,
    smalltalk,
    tool_dialogues,
)
from training.datagen.base import SPLITS, TEMPLATE_REGISTRY, Conversation, Split, decorate, make_rng
from training.datagen.preference import preference_pair
from training.datagen.pretrain import pretrain_document

logger = logging.getLogger(__name__)

# Records per file at scale 1.0.
BASE_COUNTS: dict[str, int] = {
    "pretrain_train": 12000,
    "pretrain_val": 600,
    "sft_train": 6000,
    "sft_val": 600,
    "dpo_train": 2000,
    "dpo_val": 200,
    "eval_think": 200,
    "eval_tools": 200,
    "eval_identity": 100,
}

# Issue 18: tool dialogues are mostly composed tools (a new schema in nearly every row, so reading the schema pays
# and recalling one does not); the fixed API catalogue (36 tools), the built-in / verb_noun tools, identity and
# small talk (a few hundred distinct rows each, repeated thousands of times at the demo's scale) shrank.
SFT_KINDS: dict[str, tuple[float, Callable[[random.Random, Split], Conversation]]] = {
    "identity": (0.07, identity.identity_conversation),
    "persona": (0.04, persona.persona_conversation),  # system personas win; world questions are not identity
    "math_think": (0.16, lambda rng, split: math_dialogues.math_conversation(rng, split, think=True)),
    "math_direct": (0.10, lambda rng, split: math_dialogues.math_conversation(rng, split, think=False)),
    "tools": (0.17, tool_dialogues.tool_conversation),
    # realistic API schemas: reading names, descriptions and parameter types of tools written by others (issue 18)
    "api_tools": (0.10, api_tools.api_conversation),
    "composed_tools": (0.30, composed_tools.composed_conversation),
    "smalltalk": (0.06, smalltalk.smalltalk_conversation),
}


def sft_kind_conversation(rng: random.Random, split: Split) -> tuple[str, Conversation]:
    """One SFT dialogue of a kind drawn by the mix weights, and that kind (stats.py counts by it)."""
    names = list(SFT_KINDS)
    kind = rng.choices(names, weights=[SFT_KINDS[n][0] for n in names])[0]
    conversation = SFT_KINDS[kind][1](rng, split)
    if split == "train":
        for message in conversation:
            if message["role"] == "user" and isinstance(message.get("content"), str):
                message["content"] = decorate(rng, message["content"])
    return kind, conversation


def sft_conversation(rng: random.Random, split: Split) -> Conversation:
    """One SFT dialogue of a kind drawn by the mix weights."""
    return sft_kind_conversation(rng, split)[1]


SOURCE_SUFFIXES = (".py", ".txt", ".tsv", ".md")  # modules, word lists (vocabulary.py), the search_docs pages
TOOLS_DIR = Path(tools.__file__).parent  # the tool schemas and results the dialogues hold


def source_digest(package_dir: Path | None = None, tools_dir: Path | None = None) -> str:
    """sha256 over the relative path and bytes of every module and data file of the generator package (this one
    unless `package_dir` is given) and of the `tools` package (`TOOLS_DIR` unless `tools_dir` is given): any change
    to code or data that could change the corpus changes it."""
    digest = hashlib.sha256()
    datagen_dir = Path(__file__).parent if package_dir is None else Path(package_dir)
    roots = {"datagen": datagen_dir, "tools": Path(tools_dir) if tools_dir is not None else TOOLS_DIR}
    for label, root in roots.items():
        for f in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
            digest.update(f"{label}/{f.relative_to(root).as_posix()}".encode() + f.read_bytes())
    return digest.hexdigest()


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> int:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(records)


def _count(name: str, scale: float) -> int:
    return max(1, round(BASE_COUNTS[name] * scale))


def _unique(rng: random.Random, make: Callable[[random.Random], dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` eval records with distinct prompts (fewer if the held-out phrasings run out first)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for _ in range(count * 20):
        record = make(rng)
        key = json.dumps(record["messages"], ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            out.append(record)
            if len(out) == count:
                break
    return out


def build_records(seed: int, scale: float) -> dict[str, list[dict[str, Any]]]:
    """Every file's records in memory; each stream has its own RNG so one count does not shift another."""
    records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rng = make_rng(seed, "pretrain", split)
        records[f"pretrain_{split}"] = [
            {"text": pretrain_document(rng, split)} for _ in range(_count(f"pretrain_{split}", scale))
        ]
        rng = make_rng(seed, "sft", split)
        records[f"sft_{split}"] = [
            {"conversations": sft_conversation(rng, split)} for _ in range(_count(f"sft_{split}", scale))
        ]
        rng = make_rng(seed, "dpo", split)
        records[f"dpo_{split}"] = [preference_pair(rng, split) for _ in range(_count(f"dpo_{split}", scale))]
    records["eval_think"] = _unique(make_rng(seed, "eval_think"), math_dialogues.math_eval, _count("eval_think", scale))
    records["eval_tools"] = _unique(make_rng(seed, "eval_tools"), tool_dialogues.tool_eval, _count("eval_tools", scale))
    n_identity = _count("eval_identity", scale)
    identity_records = (
        _unique(make_rng(seed, "eval_identity"), identity.identity_eval, n_identity)
        # two eval lines beside identity: a system persona wins, and a world question is not an identity question
        + _unique(make_rng(seed, "eval_persona"), persona.persona_eval, max(1, n_identity * 2 // 5))
        + _unique(make_rng(seed, "eval_off_topic"), persona.off_topic_eval, max(1, n_identity // 5))
    )
    make_rng(seed, "eval_identity_order").shuffle(identity_records)  # `--limit N` samples every kind
    records["eval_identity"] = identity_records
    return records


def generate_corpus(out_dir: Path, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write the corpus into `out_dir` (created if needed); return the line count of each file (by stem)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {name: _write_jsonl(out_dir / f"{name}.jsonl", recs) for name, recs in build_records(seed, scale).items()}
    manifest = {
        "seed": seed,
        "scale": scale,
        "counts": counts,
        "templates": {family: dict(splits) for family, splits in sorted(TEMPLATE_REGISTRY.items())},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote synthetic corpus to %s: %s", out_dir, counts)
    return counts


def message_texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    """The text carried by chat messages: contents, reasoning, tool-call names/arguments and tool schemas."""
    for message in messages:
        for key in ("content", "reasoning_content"):
            if message.get(key):
                yield str(message[key])
        for call in message.get("tool_calls") or []:
            yield call["function"]["name"]
            yield call["function"]["arguments"]
        if message.get("tools"):
            yield json.dumps(message["tools"], ensure_ascii=False)


def iter_texts(out_dir: Path) -> Iterator[str]:
    """Every text of a generated corpus (pretrain documents and all message texts), e.g. for tokenizer training."""
    out_dir = Path(out_dir)
    for path in sorted(out_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if "text" in record:
                    yield record["text"]
                for key in ("conversations", "chosen", "rejected", "messages"):
                    yield from message_texts(record.get(key) or [])
                if record.get("tools"):
                    yield json.dumps(record["tools"], ensure_ascii=False)
