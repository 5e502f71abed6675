"""Preference pairs for DPO and the reward model: loading, batching, and log-probabilities over assistant tokens.

What it is: `Pair` (chosen and rejected conversations as ids + the chat template's assistant mask), `load_pairs`
(minimind DPO JSONL → pairs through `training.shards.dpo_pair`, truncated to seq_len, bad lines counted),
`split_pairs` (train / held-out), `PairBatcher` (shuffled epochs of pairs), `collate` (a padded (2B, T) batch,
chosen rows first), `token_logprobs` / `sequence_logprobs` (log p of each target token under the model, and their
sum over the masked positions), shared with GRPO.
What it is not: a loss (training.dpo, training.reward_model) nor a generic dataset (training.loader packs pretrain/SFT).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from minigpt_core.tokenizer import EOT_ID, Tokenizer
from training.errors import DataError
from training.shards import BadRecord, dpo_pair, iter_lines

logger = logging.getLogger(__name__)

HOLDOUT_EVERY = 20  # without a validation file, every 20th pair is held out


@dataclass(frozen=True)
class Pair:
    chosen_ids: list[int]
    chosen_mask: list[bool]  # True on tokens the model is scored on (assistant tokens)
    rejected_ids: list[int]
    rejected_mask: list[bool]
    kind: str = ""


def _truncate(ids: list[int], mask: list[bool], seq_len: int) -> tuple[list[int], list[bool]]:
    """Keep the last seq_len tokens: the answers sit at the end, a long system prompt (tools) loses its head."""
    return ids[-seq_len:], mask[-seq_len:]


def load_pairs(
    path: str | Path, tokenizer: Tokenizer, seq_len: int, max_bad_fraction: float = 0.05, limit: int | None = None
) -> list[Pair]:
    """Every usable `{"chosen", "rejected"}` line of `path`; DataError when too many lines are bad."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"{src}: data file not found")
    pairs: list[Pair] = []
    bad: list[str] = []
    total = 0
    for lineno, obj, error in iter_lines(src):
        if limit is not None and len(pairs) >= limit:
            break
        total += 1
        try:
            if obj is None:
                raise BadRecord(error or "unreadable line")
            (c_ids, c_mask), (r_ids, r_mask) = dpo_pair(obj, tokenizer)
            c_ids, c_mask = _truncate(c_ids, c_mask, seq_len)
            r_ids, r_mask = _truncate(r_ids, r_mask, seq_len)
            if not any(c_mask[1:]) or not any(r_mask[1:]):
                raise BadRecord(f"no assistant tokens left within --seq-len {seq_len}")
            if c_ids == r_ids:
                raise BadRecord("chosen and rejected are identical")
        except BadRecord as exc:
            bad.append(f"{src}:{lineno}: {exc}")
            continue
        pairs.append(Pair(c_ids, c_mask, r_ids, r_mask, str(obj.get("kind", ""))))
    if bad:
        logger.warning("%s: %d of %d lines skipped (first: %s)", src, len(bad), total, bad[0])
    if not pairs:
        raise DataError(f"{src}: no usable preference pairs ({total} lines)")
    if len(bad) > max_bad_fraction * total:
        raise DataError(f"{src}: {len(bad)} of {total} lines are bad; first: {'; '.join(bad[:3])}")
    return pairs


def split_pairs(
    train_files: Sequence[Path], val_files: Sequence[Path], tokenizer: Tokenizer, seq_len: int, max_bad: float
) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs; without a validation file every HOLDOUT_EVERY-th training pair is held out."""
    train = [p for f in train_files for p in load_pairs(f, tokenizer, seq_len, max_bad)]
    if val_files:
        val = [p for f in val_files for p in load_pairs(f, tokenizer, seq_len, max_bad)]
        return train, val
    val = train[::HOLDOUT_EVERY]
    kept = [p for i, p in enumerate(train) if i % HOLDOUT_EVERY]
    return (kept or train), val


class PairBatcher:
    """Endless shuffled batches of pairs (a new permutation each epoch, seeded)."""

    def __init__(self, pairs: Sequence[Pair], batch_size: int, seed: int = 0) -> None:
        if not pairs:
            raise DataError("no preference pairs to train on")
        self.pairs = list(pairs)
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []

    def next_batch(self) -> list[Pair]:
        out: list[Pair] = []
        while len(out) < self.batch_size:
            if not self._order:
                self._order = self._rng.permutation(len(self.pairs)).tolist()
            out.append(self.pairs[self._order.pop()])
        return out

    def state_dict(self) -> dict[str, Any]:
        """The position in the data (JSON): the permutation generator's state and what is left of this epoch."""
        return {"rng": self._rng.bit_generator.state, "order": list(self._order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._order = [int(i) for i in state["order"]]


def batches(pairs: Sequence[Pair], batch_size: int) -> Iterator[list[Pair]]:
    """In-order batches (evaluation)."""
    for i in range(0, len(pairs), batch_size):
        yield list(pairs[i : i + batch_size])


def pad_rows(
    rows: Sequence[tuple[Sequence[int], Sequence[bool]]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (N, T) right-padded with <|endoftext|>, mask (N, T) bool, lengths (N,)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), EOT_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row_ids, row_mask) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(list(row_ids), dtype=torch.long)
        mask[i, : len(row_mask)] = torch.tensor(list(row_mask), dtype=torch.bool)
    lengths = torch.tensor([len(r) for r, _ in rows], dtype=torch.long)
    return ids.to(device), mask.to(device), lengths.to(device)


def collate(pairs: Sequence[Pair], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One padded batch of 2B rows: the B chosen conversations, then the B rejected ones."""
    rows = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
    return pad_rows(rows, device)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, <t]) for t >= 1: (B, T-1) from logits (B, T, V)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)


def masked_logprob_sum(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the masked (assistant) tokens of each row, from logits (B, T, V): (B,)."""
    return (token_logprobs(logits, ids) * mask[:, 1:]).sum(dim=-1)


def sequence_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the masked (assistant) tokens of each row: (B,)."""
    return masked_logprob_sum(model(ids), ids, mask)


def by_kind(kinds: Sequence[str], flags: Sequence[bool], prefix: str) -> dict[str, float]:
    """Accuracy per pair kind, e.g. {"val_pref_acc_arithmetic": 0.9}."""
    out: dict[str, float] = {}
    for kind in sorted(set(kinds)):
        hits = [f for k, f in zip(kinds, flags, strict=True) if k == kind]
        if kind and hits:
            out[f"{prefix}_{kind}"] = sum(hits) / len(hits)
    return out
