"""Which files a run reads, the train/held-out document sets, and the resumable packed loader.

What it is: `resolve_data_files` (a file, a folder, or the bundled synthetic corpus generated into a cache),
`load_datasets` (token shards → train and validation `DocumentSet`s, holding out documents when there is no
validation file) and `PackedLoader`, which turns documents into (x, y) rows: pretrain packs a shuffled document
stream into full rows (documents end with `<|endoftext|>`), SFT packs whole conversations and pads the rest.
Its position (epoch, cursor, offset) goes into the checkpoint so that `--resume` continues exactly; each rank of a
torchrun job reads every world-th document of the same shuffled order.
What it is not: tokenization (`training.shards`) or anything that touches the model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minigpt_core.tokenizer import EOT_ID, NUM_SPECIAL, Tokenizer
from training.errors import DataError
from training.plaintext import TEXT_SUFFIXES
from training.shards import TokenShard, detect_format, open_shard

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
HOLDOUT_EVERY = 50  # without a validation file, every 50th document is held out
_VAL_MARKERS = ("val", "valid", "eval", "test", "heldout")


@dataclass(frozen=True)
class DataFiles:
    train: list[Path]
    val: list[Path]


def bundled_data_dir() -> Path:
    """The bundled synthetic corpus, generated once into the user cache (keyed by the generator's modules and word
    lists: `datagen.source_digest`)."""
    from training import datagen  # local: only needed when no --data is given

    root = Path(os.environ.get("MINIGPT_CACHE_DIR", Path.home() / ".cache" / "minigpt"))
    out = root / "data" / datagen.source_digest()[:12]
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".corpus.tmp-", dir=out.parent))
    try:
        logger.info("generating the bundled corpus into %s", out)
        datagen.generate_corpus(tmp, seed=0)
        (tmp / ".complete").write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_val_file(path: Path) -> bool:
    """Whether a file name marks held-out data (…_val.jsonl, eval_….jsonl, test.jsonl, ...)."""
    stem = path.stem.lower().replace("-", "_").replace(".", "_")
    return any(marker in stem.split("_") for marker in _VAL_MARKERS)


def training_files(folder: Path) -> list[Path]:
    """Every data file of `folder` that is not held out (pretrain, SFT, DPO, plain text): what a tokenizer learns
    from."""
    return sorted(p for p in _data_files(folder, "pretrain") if not is_val_file(p))


def _data_files(folder: Path, mode: str) -> list[Path]:
    """JSONL files of a folder, and for pretraining its plain-text files too."""
    patterns = ("*.jsonl", *(f"*{s}" for s in TEXT_SUFFIXES)) if mode == "pretrain" else ("*.jsonl",)
    return sorted(p for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def _folder_files(root: Path, mode: str) -> list[Path]:
    """This mode's files of a folder: those named after the mode (pretrain_*.jsonl) if any, else by content."""
    found = _data_files(root, mode)
    mine = [p for p in found if p.name.lower().startswith(mode)]
    return mine if mine else [p for p in found if detect_format(p) == mode]


def resolve_data_files(data: str | Path | None, mode: str, val_data: str | Path | None = None) -> DataFiles:
    """Train and validation files for `mode`; `data` is a file, a folder, or None (bundled corpus).

    `val_data` (a file or a folder) replaces the validation files found next to the training data.
    """
    root = bundled_data_dir() if data is None else Path(data)
    if root.is_file():
        sibling = root.with_name(root.name.replace("train", "val"))
        val = [sibling] if sibling != root and sibling.is_file() else []
        files = DataFiles([root], val)
    elif root.is_dir():
        found = _folder_files(root, mode)
        files = DataFiles([p for p in found if not is_val_file(p)], [p for p in found if is_val_file(p)])
        if not files.train:
            raise DataError(f"{root}: no {mode} training files (*.jsonl{', *.txt' if mode == 'pretrain' else ''})")
    else:
        raise DataError(f"{root}: data file or folder not found")
    if val_data is not None:
        files = DataFiles(files.train, _val_files(Path(val_data), mode))
        overlap = {p.resolve() for p in files.val} & {p.resolve() for p in files.train}
        if overlap:
            raise DataError(f"--val-data {sorted(overlap)[0]} is also a training file")
    for path in files.train + files.val:
        fmt = detect_format(path)
        if fmt is not None and fmt != mode:
            raise DataError(f"{path}: looks like {fmt} data, but --mode is {mode}")
    return files


def _val_files(path: Path, mode: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: validation file or folder not found")
    found = _folder_files(path, mode)
    if not found:
        raise DataError(f"{path}: no {mode} validation files in this folder")
    return found


class DocumentSet:
    """An ordered list of documents drawn from one or more token shards."""

    def __init__(self, shards: list[TokenShard], shard_ids: np.ndarray, doc_ids: np.ndarray) -> None:
        self.shards = shards
        self.shard_ids = shard_ids.astype(np.int32)
        self.doc_ids = doc_ids.astype(np.int64)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def get(self, i: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        return self.shards[self.shard_ids[i]].doc(int(self.doc_ids[i]), start, stop)

    def length(self, i: int) -> int:
        offsets = self.shards[self.shard_ids[i]].offsets
        d = int(self.doc_ids[i])
        return int(offsets[d + 1] - offsets[d])

    def n_tokens(self) -> int:
        return sum(self.length(i) for i in range(len(self)))


def documents_of(shards: list[TokenShard], keep: Any = None) -> DocumentSet:
    """All documents of `shards` (or those whose ids `keep(ids)` selects), in file order."""
    sids, dids = [], []
    for s, shard in enumerate(shards):
        ids = np.arange(shard.n_docs, dtype=np.int64)
        if keep is not None:
            ids = ids[keep(ids)]
        sids.append(np.full(len(ids), s, dtype=np.int32))
        dids.append(ids)
    if not sids:
        return DocumentSet([], np.zeros(0, np.int32), np.zeros(0, np.int64))
    return DocumentSet(shards, np.concatenate(sids), np.concatenate(dids))


def load_datasets(
    files: DataFiles, mode: str, tokenizer: Tokenizer, max_bad_fraction: float = 0.05
) -> tuple[DocumentSet, DocumentSet]:
    """Tokenize (cached) and open the train and validation documents."""
    train_shards = [open_shard(p, mode, tokenizer, max_bad_fraction) for p in files.train]
    if files.val:
        val_shards = [open_shard(p, mode, tokenizer, max_bad_fraction) for p in files.val]
        return documents_of(train_shards), documents_of(val_shards)
    total = sum(s.n_docs for s in train_shards)
    if total < 2:
        logger.warning("only %d document(s) and no validation file: validating on the training data", total)
        return documents_of(train_shards), documents_of(train_shards)
    every = min(HOLDOUT_EVERY, total)
    logger.info("no validation file: holding out every %d-th training document", every)
    train = documents_of(train_shards, lambda ids: ids % every != every - 1)
    val = documents_of(train_shards, lambda ids: ids % every == every - 1)
    return train, val


class PackedLoader:
    """Rows of seq_len + 1 tokens → (x, y) LongTensors (B, T); y is IGNORE_INDEX where no loss is taken.

    `pack="stream"` (pretrain) fills every row completely, continuing a document into the next row;
    `pack="docs"` (SFT) puts whole conversations into a row (truncating one longer than a row) and pads the rest.
    With `repeat=True` it loops over epochs, reshuffling each; otherwise it stops after one pass.
    """

    def __init__(
        self,
        docs: DocumentSet,
        seq_len: int,
        batch_size: int,
        *,
        pack: str = "stream",
        shuffle: bool = True,
        repeat: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if pack not in ("stream", "docs"):
            raise ValueError(f"pack must be 'stream' or 'docs', got {pack!r}")
        if repeat and len(docs) < world_size:
            raise DataError(f"{len(docs)} documents cannot be shared by {world_size} ranks")
        self.docs, self.seq_len, self.batch_size = docs, seq_len, batch_size
        self.pack, self.shuffle, self.repeat, self.seed = pack, shuffle, repeat, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor, self.offset = 0, 0, 0
        self.truncated = 0
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    # --- position ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "offset": self.offset, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            logger.warning("resuming with a different number of ranks: the data order will differ")
        self.epoch, self.cursor, self.offset = int(state["epoch"]), int(state["cursor"]), int(state["offset"])

    def order(self) -> np.ndarray:
        """This rank's document order for the current epoch."""
        if self._order_epoch != self.epoch:
            n = len(self.docs)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            else:
                perm = np.arange(n)
            self._order, self._order_epoch = perm[self.rank :: self.world_size], self.epoch
        return self._order

    def _advance_doc(self) -> bool:
        """Move to the next document; False when a non-repeating loader is exhausted."""
        self.cursor, self.offset = self.cursor + 1, 0
        if self.cursor >= len(self.order()):
            if not self.repeat:
                return False
            self.epoch, self.cursor = self.epoch + 1, 0
        return True

    # --- rows ----------------------------------------------------------------------------------
    def _row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """tokens, loss mask and document index (0, 1, ... per piece of a document; the padding its own) of a row."""
        need = self.seq_len + 1
        tokens = np.full(need, EOT_ID, dtype=np.int64)
        mask = np.zeros(need, dtype=np.uint8)
        docs = np.zeros(need, dtype=np.int64)
        filled = pieces = 0
        while filled < need and self.cursor < len(self.order()):
            doc = int(self.order()[self.cursor])
            room = need - filled
            if self.pack == "docs":
                length = self.docs.length(doc)
                if filled and length > room:
                    break
                if length > room:
                    self.truncated += 1
            ids, m = self.docs.get(doc, self.offset, self.offset + room)
            n = len(ids)
            tokens[filled : filled + n] = ids
            mask[filled : filled + n] = 1 if m is None else m
            docs[filled : filled + n] = pieces
            filled, pieces = filled + n, pieces + 1
            if self.pack == "stream" and self.offset + n < self.docs.length(doc):
                self.offset += n
            elif not self._advance_doc():
                break
        docs[filled:] = pieces
        return (tokens, mask, docs) if filled else None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next (x, y) batch, or None when a non-repeating loader has nothing left."""
        batch = self.next_batch_docs()
        return None if batch is None else batch[:2]

    def next_batch_docs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The next (x, y, doc_ids) batch: doc_ids (B, T) numbers the documents of each row of x (for
        MiniGPT's `doc_ids`, which keeps them apart); None when a non-repeating loader has nothing left."""
        rows = []
        for _ in range(self.batch_size):
            row = self._row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            return None
        tokens = torch.from_numpy(np.stack([r[0] for r in rows]))
        mask = torch.from_numpy(np.stack([r[1] for r in rows])).bool()
        x = tokens[:, :-1].contiguous()
        y = tokens[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX).contiguous()
        doc_ids = torch.from_numpy(np.stack([r[2][:-1] for r in rows]))
        return x, y, doc_ids

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while (batch := self.next_batch()) is not None:
            yield batch


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """UTF-8 byte length of every token id (0 for special tokens), for bits-per-byte."""
    table = tokenizer.all_token_bytes()
    lengths = [0 if i < NUM_SPECIAL else len(b) for i, b in enumerate(table)]
    return torch.tensor(lengths, dtype=torch.int64)
