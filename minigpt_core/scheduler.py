"""The engine's step logic: per-request state, slot bookkeeping, chunked prefill and the batched decode step.

What it is: `Scheduler.step()` runs one iteration of continuous batching on the thread that owns the model:
reap cancelled sequences, run at most one prefill chunk (B=1) for a newly admitted request, run ONE decode
step (B=n, T=1) for every sequence whose prompt is in the cache, sample each row (constraint mask first),
emit a `TokenEvent` per row and free the slots of finished sequences.

What it is not: no threads, locks or queues of requests here (engine.py owns those and calls `admit`), and
no text. Every method runs on the engine thread only.

Batch invariance: each row is sampled by its own `RequestSampler` and attends only to its own slot, so no
reduction crosses rows; the decode step reads `kv_len` cache positions (the longest row rounded up to
`kv_len_bucket`, capped at the slot size). The decode step fills preallocated input buffers (ids, slots,
positions), so a later CUDA-graph path can capture it unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minigpt_core.constraints import Constraint
from minigpt_core.cuda_graphs import GraphedDecoder, buckets_up_to, pick
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT
from minigpt_core.sampling import RequestSampler, SampledToken, SamplingParams, is_simple, sample_simple_batch

logger = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    """One generated token, or the end of a request.

    `finish_reason` is None while generating, else "stop" (EOS, a stop token or a finished constraint; the
    event still carries that token), "length" (max_new_tokens or the context end; carries the last token),
    "cancelled" or "error" (both with `token_id` None; "error" has a message in `error`).
    """

    token_id: int | None
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None
    error: str | None = None


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. `num_cached` tokens of prompt + output sit in the slot's KV cache."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sampler: RequestSampler
    constraint: Constraint | None
    emit: Callable[[TokenEvent], None]
    is_cancelled: Callable[[], bool]
    slot: int = -1
    num_cached: int = 0
    num_generated: int = 0
    last_token: int = -1
    finished: bool = False
    arrival_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None

    @property
    def prefilled(self) -> bool:
        return self.num_cached >= len(self.prompt_ids)


@dataclass
class Counters:
    """Monotonic totals for /metrics; written by the engine thread only."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class Scheduler:
    def __init__(
        self,
        model: MiniGPT,
        cache: KVCache,
        *,
        max_model_len: int,
        prefill_chunk: int,
        eos_token_ids: tuple[int, ...],
        device: torch.device,
        kv_len_bucket: int = 64,
        dense_decode: bool = False,
        cuda_graphs: bool = False,
        output_vocab: int | None = None,
        compile_decode: bool = False,
    ) -> None:
        self.model, self.cache, self.device = model, cache, device
        # Only ids the tokenizer knows may be sampled (a model's embedding may be padded past the tokenizer).
        self.output_vocab = output_vocab or model.config.vocab_size
        self.max_model_len, self.prefill_chunk = max_model_len, prefill_chunk
        self.eos_token_ids = frozenset(eos_token_ids)
        self.kv_len_bucket = kv_len_bucket  # >= max_model_len: every step reads whole slots (fixed shapes)
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(cache.num_slots - 1, -1, -1))  # pop() hands out 0 first
        self.counters = Counters()
        # Final events wait until the slot is released, so a consumer that saw the end sees a free slot.
        self._final_events: list[tuple[Sequence, TokenEvent]] = []
        n = cache.num_slots
        # Static decode inputs (B <= num_slots): a CUDA-graph path can capture views of these.
        self._decode_inputs = torch.zeros((2, n), dtype=torch.long, device=device)  # ids, positions
        self.decode_ids = self._decode_inputs[0].view(n, 1)
        self.decode_positions = self._decode_inputs[1].view(n, 1)
        self.decode_slots = torch.zeros((n,), dtype=torch.long, device=device)
        self._staging = torch.zeros((2, n), dtype=torch.long, pin_memory=device.type == "cuda")
        # Dense decode (the GPU path): row b of a step is slot b, the cache is read as a view, and shapes come
        # from a few buckets so each (batch, kv) pair can be one captured CUDA graph.
        self.dense_decode = dense_decode or cuda_graphs
        self.batch_buckets = buckets_up_to(n)
        self.kv_buckets = buckets_up_to(max_model_len, start=min(128, max_model_len))
        self.graphs: GraphedDecoder | None = None
        if cuda_graphs:
            self.graphs = GraphedDecoder(
                model,
                cache,
                self.decode_ids,
                self.decode_positions,
                self.batch_buckets,
                self.kv_buckets,
                compile=compile_decode,
            )
            self.graphs.capture_all()

    # --- bookkeeping --------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> None:
        """Give `seq` a free slot; the caller checked `free_slots` first."""
        if self.dense_decode:  # lowest free slot first keeps dense steps small
            self.free_slots.sort(reverse=True)
        seq.slot = self.free_slots.pop()
        self.running.append(seq)

    def kv_tokens_used(self) -> int:
        return sum(seq.num_cached for seq in list(self.running))

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        self.counters.finished[reason] = self.counters.finished.get(reason, 0) + 1
        if reason != "cancelled" or not seq.is_cancelled():
            self._final_events.append((seq, TokenEvent(None, None, None, reason, error)))

    def _release_finished(self) -> None:
        keep: list[Sequence] = []
        for seq in self.running:
            if seq.finished:
                self.free_slots.append(seq.slot)
                seq.slot = -1
            else:
                keep.append(seq)
        self.running = keep
        final, self._final_events = self._final_events, []
        for seq, event in final:
            seq.emit(event)

    def abort_all(self, reason: str = "cancelled") -> None:
        """End every running sequence (engine shutdown)."""
        for seq in self.running:
            self._finish(seq, reason)
        self._release_finished()

    # --- one iteration ------------------------------------------------------------------------
    def step(self) -> None:
        for seq in self.running:
            if seq.is_cancelled():
                self._finish(seq, "cancelled")
        self._release_finished()
        decoding = [seq for seq in self.running if seq.prefilled]
        prefilling = next((seq for seq in self.running if not seq.prefilled), None)
        if prefilling is not None:
            self._guarded([prefilling], self._prefill_chunk)
        if decoding:
            self._guarded(decoding, self._decode_step)
        self._release_finished()
        self.counters.steps += 1

    def _guarded(self, seqs: list[Sequence], fn: Callable[[list[Sequence]], None]) -> None:
        """Run a model call; if it raises, every sequence in it ends with "error" and the thread goes on."""
        try:
            fn(seqs)
        except Exception as exc:
            logger.exception("engine step failed for %d sequence(s)", len(seqs))
            for seq in seqs:
                self._finish(seq, "error", f"{type(exc).__name__}: {exc}")

    def _prefill_chunk(self, seqs: list[Sequence]) -> None:
        (seq,) = seqs
        start = seq.num_cached
        chunk = seq.prompt_ids[start : start + self.prefill_chunk]
        ids = torch.tensor([chunk], dtype=torch.long, device=self.device)  # (1, T)
        positions = torch.arange(start, start + len(chunk), device=self.device)[None]  # (1, T)
        slots = torch.tensor([seq.slot], dtype=torch.long, device=self.device)  # (1,)
        logits = self.model(ids, cache=self.cache, slots=slots, positions=positions)  # (1, T, V)
        seq.num_cached += len(chunk)
        self.counters.prompt_tokens += len(chunk)
        if seq.prefilled:
            self._accept(seq, logits[0, -1])

    def _decode_step(self, seqs: list[Sequence]) -> None:
        logits = self._dense_logits(seqs) if self.dense_decode else self._gathered_logits(seqs)  # (n, V)
        logits = logits[:, : self.output_vocab]
        for seq in seqs:
            seq.num_cached += 1
        simple = [seq for seq in seqs if seq.constraint is None and is_simple(seq.params)]
        if len(simple) == len(seqs):  # one batched sample and one host transfer for the whole step
            try:
                pairs = self._sample_batched(logits, seqs)
            except Exception as exc:
                # One bad row fails the batched call for every row: sample them one by one instead, so the
                # failure ends only the request that caused it (`_accept` isolates each row's error).
                logger.warning("batched sampling of %d rows failed, sampling row by row: %s", len(seqs), exc)
            else:
                for seq, (token_id, logprob) in zip(seqs, pairs, strict=True):
                    self._record(seq, SampledToken(int(token_id), logprob, []))
                return
        for i, seq in enumerate(seqs):
            self._accept(seq, logits[i])

    def _sample_batched(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[list[float]]:
        """(token id, logprob) per row of `logits` (n, V) from the batched sampler; raises if any row fails."""
        tokens = sample_simple_batch(logits, [seq.params for seq in seqs])
        logprobs = logits.float().log_softmax(dim=-1).gather(1, tokens[:, None])[:, 0]
        pairs_dev = torch.stack([tokens.to(logprobs.dtype), logprobs], dim=1)
        if pairs_dev.is_cuda:  # wait with the GIL released, so the server's event loop runs meanwhile
            torch.cuda.synchronize(pairs_dev.device)
        pairs: list[list[float]] = pairs_dev.tolist()  # one host transfer
        return pairs

    def _gathered_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        n = len(seqs)
        ids = torch.tensor([seq.last_token for seq in seqs], dtype=torch.long)
        slots = torch.tensor([seq.slot for seq in seqs], dtype=torch.long)
        positions = torch.tensor([seq.num_cached for seq in seqs], dtype=torch.long)
        self.decode_ids[:n, 0].copy_(ids)
        self.decode_slots[:n].copy_(slots)
        self.decode_positions[:n, 0].copy_(positions)
        return self.forward_decode(n, self._kv_len(max(seq.num_cached for seq in seqs) + 1))

    def _dense_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        b = pick(self.batch_buckets, max(seq.slot for seq in seqs) + 1)
        kv_len = pick(self.kv_buckets, max(seq.num_cached for seq in seqs) + 1)
        ids = [0] * b
        positions = [self.max_model_len - 1] * b  # padding rows write where no live query reads yet
        for seq in seqs:
            ids[seq.slot], positions[seq.slot] = seq.last_token, seq.num_cached
        staged = self._staging[:, :b]  # (2, b), pinned on CUDA: ids and positions go over in one async copy
        staged.copy_(torch.tensor([ids, positions], dtype=torch.long))
        self._decode_inputs[:, :b].copy_(staged, non_blocking=True)
        if self.graphs is not None:
            out = self.graphs.run(b, kv_len)
        else:
            out = self.model(self.decode_ids[:b], cache=self.cache, positions=self.decode_positions[:b], kv_len=kv_len)[
                :, -1
            ]
        slots = [seq.slot for seq in seqs]
        if slots == list(range(len(seqs))):
            return out[: len(seqs)]  # read before the next replay overwrites it (the step syncs on the tokens)
        rows = torch.tensor(slots, dtype=torch.long).to(self.device, non_blocking=True)
        return out.index_select(0, rows)

    def _kv_len(self, needed: int) -> int:
        bucket = self.kv_len_bucket
        return min(self.max_model_len, -(-needed // bucket) * bucket)

    def forward_decode(self, n: int, kv_len: int) -> torch.Tensor:
        """One decode step over the first n rows of the static buffers -> last-position logits (n, V)."""
        logits = self.model(
            self.decode_ids[:n],
            cache=self.cache,
            slots=self.decode_slots[:n],
            positions=self.decode_positions[:n],
            kv_len=kv_len,
        )  # (n, 1, V)
        return logits[:, -1]

    # --- sampling and stopping ----------------------------------------------------------------
    def _accept(self, seq: Sequence, logits_row: torch.Tensor) -> None:
        """Sample the next token of `seq` from its logits (V,), emit it, and decide whether it ends."""
        if seq.finished or seq.is_cancelled():
            return
        try:
            mask = seq.constraint.allowed() if seq.constraint is not None else None
            limit = self.output_vocab
            if mask is not None and mask.shape[-1] == self.model.config.vocab_size:
                mask = mask[:limit]  # masks span the model's vocab; only the tokenizer's ids are sampled
            sampled = seq.sampler.sample(logits_row[:limit], mask)
        except Exception as exc:
            logger.warning("sampling failed for request %s: %s", seq.request_id, exc)
            self._finish(seq, "error", f"{type(exc).__name__}: {exc}")
            return
        self._record(seq, sampled)

    def _record(self, seq: Sequence, sampled: SampledToken) -> None:
        """Account for a sampled token: penalties' counts, the constraint, stopping, and the TokenEvent."""
        if seq.finished or seq.is_cancelled():
            return
        token_id = sampled.token_id
        try:
            seq.sampler.observe(token_id)
            if seq.constraint is not None:
                seq.constraint.advance(token_id)
            reason = self._finish_reason(seq, token_id)
        except Exception as exc:
            logger.warning("sampling failed for request %s: %s", seq.request_id, exc)
            self._finish(seq, "error", f"{type(exc).__name__}: {exc}")
            return
        seq.num_generated += 1
        seq.last_token = token_id
        self.counters.generation_tokens += 1
        if seq.first_token_s is None:
            seq.first_token_s = time.monotonic()
        top = sampled.top_logprobs if seq.params.top_logprobs > 0 else None
        event = TokenEvent(token_id, sampled.logprob, top, reason)
        if reason is None:
            seq.emit(event)
        else:
            seq.finished = True
            self.counters.finished[reason] = self.counters.finished.get(reason, 0) + 1
            self._final_events.append((seq, event))

    def _finish_reason(self, seq: Sequence, token_id: int) -> str | None:
        params = seq.params
        if token_id in self.eos_token_ids and not params.ignore_eos:
            return "stop"
        if token_id in params.stop_token_ids:
            return "stop"
        if seq.constraint is not None and seq.constraint.is_finished():
            return "stop"
        # The budget counts this token (num_generated is bumped after this check).
        if seq.num_generated + 1 >= params.max_new_tokens:
            return "length"
        if len(seq.prompt_ids) + seq.num_generated + 1 >= self.max_model_len:
            return "length"
        return None
