"""The engine's step logic: per-request state, slot bookkeeping, batched prefill and the K-step decode loop.

What it is: `Scheduler.step()` runs one iteration of continuous batching on the thread that owns the model:
reap cancelled sequences, compact the slots (GPU), run ONE batched prefill forward for every newly admitted
request that fits the step's token budget (each row one chunk of its prompt, next-token logits of its last
real token only), then ONE decode call for every sequence whose prompt is in the cache, and free the slots of
finished sequences. New requests' prefill and running requests' decode share the step, so arrivals never
stall the running streams for more than one step.

The decode call runs K model steps (K = `decode_steps` while no request is arriving or prefilling, else 1):
each step samples every row on the device (`sampling.sample_rows`, per-row parameters in a `SamplingTable`)
and feeds the token back as the next input, and the K x B ids, logprobs and "ok" flags come back to the host
in one transfer. Stopping (EOS, stop ids, max tokens, context end) is decided here from the tokens that came
back: a row's tokens after its finishing one are dropped, never emitted or counted. Rows that need the host
between tokens (a grammar constraint, penalties, top_logprobs) make the call a single step of logits
that are sampled per row by their `RequestSampler`; the other rows of that step are still sampled in one
batched call.

What it is not: no threads, locks or queues of requests here (engine.py owns those and calls `admit`), and
no text. Every method runs on the engine thread only.

Batch invariance: rows never share a reduction and each row attends only to its own slot; on CPU the decode
step reads `kv_len` cache positions (the longest row rounded up to `kv_len_bucket`, capped at the slot size).
On CUDA the shapes come from power-of-two buckets and every step is a captured CUDA graph (cuda_graphs.py):
prefill graphs by (rows, chunk length, KV length) bucket, decode graphs by (rows, KV length, K, sampling mode).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from minigpt_core.cpu_compile import CompiledForward
from minigpt_core.cuda_graphs import GraphCache, allow_recompiles, buckets_up_to, pick
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT
from minigpt_core.prefix_cache import BLOCK as PREFIX_BLOCK
from minigpt_core.prefix_cache import PrefixIndex
from minigpt_core.request import Counters, Request, TokenEvent, batched_sampling, sampling_mode
from minigpt_core.sampling import SampledToken, SamplingTable, sample_rows

logger = logging.getLogger(__name__)


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
        compiled: CompiledForward | None = None,
        decode_steps: int = 1,
        max_prefill_tokens: int = 8192,
        prefix_caching: bool = True,
        decode_kernel: bool = False,
    ) -> None:
        self.model, self.cache, self.device = model, cache, device
        # The fused decode-attention kernel (minigpt_core.kernels) serves the dense CUDA decode step.
        self.decode_kernel = model.use_decode_kernel(decode_kernel and dense_decode)
        self.prefix: PrefixIndex | None = PrefixIndex() if prefix_caching else None
        self._released_at: dict[int, int] = {}  # slot -> step it was last freed at (prefix-cache eviction)
        # Only ids the tokenizer knows may be sampled (a model's embedding may be padded past the tokenizer).
        self.output_vocab = output_vocab or model.config.vocab_size
        self.max_model_len, self.prefill_chunk = max_model_len, prefill_chunk
        self.eos_token_ids = frozenset(eos_token_ids)
        self.kv_len_bucket = kv_len_bucket  # >= max_model_len: every step reads whole slots (fixed shapes)
        self.decode_steps = max(1, decode_steps)
        self.max_prefill_tokens = max(max_prefill_tokens, prefill_chunk)
        self.running: list[Request] = []
        self.free_slots: list[int] = list(range(cache.num_slots - 1, -1, -1))  # pop() hands out 0 first
        self.counters = Counters()
        # Final events wait until the slot is released, so a consumer that saw the end sees a free slot.
        self._final_events: list[tuple[Request, TokenEvent]] = []
        n = cache.num_slots
        self.table = SamplingTable(n, self.output_vocab, device)  # row = slot
        # Static decode inputs (B <= num_slots) and outputs (per step: token, logprob, ok): graphs capture views.
        # ids, positions, and tokens drawn so far (the counter of seeded sampling)
        self._decode_inputs = torch.zeros((3, n), dtype=torch.long, device=device)
        self.decode_ids = self._decode_inputs[0].view(n, 1)
        self.decode_positions = self._decode_inputs[1].view(n, 1)
        self.decode_counters = self._decode_inputs[2]
        self.decode_slots = torch.zeros((n,), dtype=torch.long, device=device)
        self._decode_out = torch.zeros((self.decode_steps, 3, n), dtype=torch.float32, device=device)
        pinned = device.type == "cuda"
        self._staging = torch.zeros((3, n), dtype=torch.long, pin_memory=pinned)
        # Dense decode (the GPU path): row b of a step is slot b, the cache is read as a view, and shapes come
        # from a few buckets so each one can be a captured CUDA graph.
        self.dense_decode = dense_decode or cuda_graphs
        self.batch_buckets = buckets_up_to(n)
        self.kv_buckets = buckets_up_to(max_model_len, start=min(128, max_model_len))
        # Prefill graphs: (rows, tokens per row) buckets whose product fits the static prefill buffers.
        self.prefill_t_buckets = buckets_up_to(min(prefill_chunk, max_model_len), start=min(16, max_model_len))
        P = self.max_prefill_tokens
        self._prefill_tokens = torch.zeros((2, P), dtype=torch.long, device=device)  # ids, positions (flat)
        self._prefill_rows = torch.zeros((2, n), dtype=torch.long, device=device)  # slots, last index
        self._prefill_staging = torch.zeros((2 * P + 2 * n,), dtype=torch.long, pin_memory=pinned)
        # LoRA serving (minigpt_core.lora): row b of a forward uses adapter lora_index[b]; written before each one.
        lora_index = model._buffers.get("lora_index")
        self.lora_index: torch.Tensor | None = lora_index if isinstance(lora_index, torch.Tensor) else None
        self._fn: Callable[..., torch.Tensor] = model  # the decode forward; prefill's is _prefill_fn
        self._prefill_fn: Callable[..., torch.Tensor] = model
        self.graphs: GraphCache | None = None
        self.compiled = compiled  # the CPU's compiled forward (cpu_compile.py): step() takes it once it is built
        if compile_decode and cuda_graphs:
            # inductor fuses the decode step's many small ops (norms, RoPE, SiLU x mul, residuals); dynamic=True:
            # one compilation serves one row and one every larger batch. Prefill captures the eager forward: it
            # runs once per request, and compiling its shapes cost minutes.
            allow_recompiles(32)  # a process may serve several models (benchmarks, tests)
            self._fn = torch.compile(model, dynamic=True)
        if cuda_graphs:
            self.graphs = GraphCache(restore=self._snapshot_decode_inputs)
            self._capture_startup_graphs()
        self._take_compiled()

    def _take_compiled(self) -> None:
        """Switch to the compiled CPU forward once it is built (between steps: no call runs half of each)."""
        if self.compiled is not None and self._fn is self.model and self.compiled.ready():
            self._fn = self._prefill_fn = self.compiled.fn

    # --- bookkeeping --------------------------------------------------------------------------
    def admit(self, seq: Request) -> None:
        """Give `seq` a free slot; the caller checked `free_slots` first.

        With prefix caching, the longest cached prefix of the prompt (at least one token is left to prefill, for
        the first token's logits) is reused: from a free slot that holds it, taken as it is, or copied out of a
        running slot; prefill then starts after it."""
        if self.dense_decode:  # lowest free slot first keeps dense steps small
            self.free_slots.sort(reverse=True)
        src, n, rest = -1, 0, 0
        if self.prefix is not None:
            src, n = self.prefix.match(seq.prompt_ids, len(seq.prompt_ids) - 1, prefer=set(self.free_slots))
            rest = len(self.prefix.content(src)) - n if n else 0  # cached tokens past the match
        if n and src in self.free_slots and rest <= PREFIX_BLOCK:
            self.free_slots.remove(src)  # nothing more in it worth keeping: extend it in place
            seq.slot = src
        else:
            seq.slot = self._free_slot()
            if n:
                self.cache.copy_prefix(src, seq.slot, n)
        if self.prefix is not None:
            self.prefix.forget(seq.slot)
            if n:
                self.prefix.register(seq.slot, seq.prompt_ids[:n])
        seq.num_cached = seq.cached_tokens = n
        self.counters.cached_tokens += n
        self.table.set_row(seq.slot, seq.params)
        self.running.append(seq)

    def _free_slot(self) -> int:
        """A free slot for a new request: the lowest; with prefix caching, the lowest that holds no cached
        content, else the one released longest ago (its content is the least likely to be asked for again)."""
        if self.prefix is None:
            return self.free_slots.pop()
        prefix = self.prefix
        candidates = self.free_slots
        if self.dense_decode:  # stay inside the batch bucket, or compaction would copy the request down next step
            limit = pick(self.batch_buckets, len(self.running) + 1)
            candidates = [s for s in self.free_slots if s < limit] or self.free_slots
        slot = min(candidates, key=lambda s: (bool(prefix.content(s)), self._released_at.get(s, 0), s))
        self.free_slots.remove(slot)
        return slot

    def _remember(self, seq: Request) -> None:
        """Index what `seq`'s slot holds (never the last position, which padding rows of dense steps write)."""
        if self.prefix is not None:
            n = min(seq.num_cached, self.max_model_len - 1)
            self.prefix.register(seq.slot, (seq.prompt_ids + seq.output_ids)[:n])

    def kv_tokens_used(self) -> int:
        return sum(seq.num_cached for seq in list(self.running))

    def _finish(self, seq: Request, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        seq.error = reason == "error"
        self.counters.finished[reason] = self.counters.finished.get(reason, 0) + 1
        if reason != "cancelled" or not seq.is_cancelled():
            self._final_events.append((seq, TokenEvent(None, None, None, reason, error)))

    def _release_finished(self) -> None:
        keep: list[Request] = []
        for seq in self.running:
            if seq.finished:
                if self.prefix is not None:
                    if seq.error:  # its keys/values may be what failed (NaN): never reuse them
                        self.prefix.forget(seq.slot)
                    else:
                        self._remember(seq)
                self.free_slots.append(seq.slot)
                self._released_at[seq.slot] = self.counters.steps
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

    def _compact(self) -> None:
        """Move sequences out of slots past the batch bucket their number needs, so dense steps stay small.

        Without this one request left in slot 63 makes every step a 64-row step. A move copies the slot's
        cached keys/values and its sampling row: a few kernels, once per shrink of the bucket.
        """
        if not self.running:
            return
        target = pick(self.batch_buckets, len(self.running))
        high = [seq for seq in self.running if seq.slot >= target]
        if not high:
            return
        low = sorted(slot for slot in self.free_slots if slot < target)
        for seq, dst in zip(high, low, strict=False):
            src, n = seq.slot, seq.num_cached
            if self.prefix is not None:
                self.prefix.forget(dst)
            if n:
                self.cache.copy_prefix(src, dst, n)
            self.table.copy_row(dst, src)
            self.free_slots.remove(dst)
            self.free_slots.append(src)
            seq.slot = dst
            if self.prefix is not None and seq.prefilled:
                self._remember(seq)  # the source keeps its copy too

    # --- one iteration ------------------------------------------------------------------------
    def step(self) -> None:
        """One iteration. While a prompt is being prefilled the decode call runs one step, so new requests'
        chunks follow each other without waiting K steps; otherwise K = `decode_steps`."""
        self._take_compiled()
        for seq in self.running:
            if seq.is_cancelled():
                self._finish(seq, "cancelled")
        self._release_finished()
        if self.dense_decode:
            self._compact()
        decoding = [seq for seq in self.running if seq.prefilled]
        prefilling = self._prefill_batch([seq for seq in self.running if not seq.prefilled])
        if prefilling:
            self._guarded(prefilling, self._prefill)
        if decoding:
            k = 1 if prefilling else self.decode_steps
            self._guarded(decoding, lambda seqs: self._decode(seqs, k))
        self._release_finished()
        self.counters.steps += 1

    def _guarded(self, seqs: list[Request], fn: Callable[[list[Request]], None]) -> None:
        """Run a model call; if it raises, every sequence in it ends with "error" and the thread goes on."""
        try:
            fn(seqs)
        except Exception as exc:
            logger.exception("engine step failed for %d sequence(s)", len(seqs))
            for seq in seqs:
                self._finish(seq, "error", f"{type(exc).__name__}: {exc}")

    # --- prefill ------------------------------------------------------------------------------
    def _chunk_len(self, seq: Request) -> int:
        return min(self.prefill_chunk, len(seq.prompt_ids) - seq.num_cached)

    def _graph_prefill_shape(self, seqs: list[Request]) -> tuple[int, int, int] | None:
        """The captured (rows, tokens, kv_len) bucket for these chunks, or None when they need the eager forward.

        First chunks read kv_len = t positions (captured at startup); later chunks (long prompts, cached
        prefixes) read a KV bucket past their start, captured on first use."""
        if self.graphs is None:
            return None
        b = pick(self.batch_buckets, len(seqs))
        t = pick(self.prefill_t_buckets, max(self._chunk_len(seq) for seq in seqs))
        if b * t > self.max_prefill_tokens:
            return None
        if not any(seq.num_cached for seq in seqs):
            return b, t, t
        needed = max(seq.num_cached for seq in seqs) + t  # padded positions stay below kv_len (or are clamped)
        return b, t, pick(self.kv_buckets, min(needed, self.max_model_len))

    def _prefill_batch(self, waiting: list[Request]) -> list[Request]:
        """The sequences whose next chunks share this step's prefill forward (admission order, token budget)."""
        batch: list[Request] = []
        tokens = 0
        for seq in waiting:
            n = self._chunk_len(seq)
            if batch:
                if tokens + n > self.max_prefill_tokens:
                    break
                if self._graph_prefill_shape(batch) is not None and self._graph_prefill_shape([*batch, seq]) is None:
                    break  # keep a batch that fits a captured shape rather than grow it into an eager one
            batch.append(seq)
            tokens += n
        return batch

    def _prefill(self, seqs: list[Request]) -> None:
        chunks = [seq.prompt_ids[seq.num_cached : seq.num_cached + self._chunk_len(seq)] for seq in seqs]
        shape = self._graph_prefill_shape(seqs)
        if shape is not None and self.graphs is not None:
            b, t, kv = shape
            self._set_adapters([seq.adapter for seq in seqs] + [0] * (b - len(seqs)))
            self._stage_prefill(seqs, chunks, b, t)
            logits = self.graphs.run(("prefill", b, t, kv), lambda: self._prefill_graph_step(b, t, kv))
        else:
            logits = self._prefill_eager(seqs, chunks)
        for seq, chunk in zip(seqs, chunks, strict=True):
            seq.num_cached += len(chunk)
            self.counters.prompt_tokens += len(chunk)
            if seq.prefilled:
                self._remember(seq)  # concurrent requests with the same prompt prefix can copy it now
        done = [(row, seq) for row, seq in enumerate(seqs) if seq.prefilled]
        if done:
            self._sample_rows_of(logits, done)

    def _stage_prefill(self, seqs: list[Request], chunks: list[list[int]], b: int, t: int) -> None:
        ids: list[int] = []
        for chunk in chunks:
            ids += chunk
            ids += [0] * (t - len(chunk))
        ids += [0] * (t * (b - len(chunks)))
        last_pos = self.max_model_len - 1
        positions = [min(seq.num_cached + i, last_pos) for seq in seqs for i in range(t)]
        positions += list(range(t)) * (b - len(seqs))
        slots = [seq.slot for seq in seqs] + [self.cache.scratch_slot] * (b - len(seqs))  # padding rows: scratch
        last = [len(chunk) - 1 for chunk in chunks] + [0] * (b - len(chunks))
        n, P = b * t, self.max_prefill_tokens
        staged = self._prefill_staging
        staged[: 2 * n].copy_(torch.tensor(ids + positions, dtype=torch.long))
        staged[2 * P : 2 * P + 2 * b].copy_(torch.tensor(slots + last, dtype=torch.long))
        self._prefill_tokens[:, :n].copy_(staged[: 2 * n].view(2, n), non_blocking=True)
        self._prefill_rows[:, :b].copy_(staged[2 * P : 2 * P + 2 * b].view(2, b), non_blocking=True)

    def _prefill_graph_step(self, b: int, t: int, kv: int) -> torch.Tensor:
        n = b * t
        logits = self.model(
            self._prefill_tokens[0, :n].view(b, t),
            cache=self.cache,
            slots=self._prefill_rows[0, :b],
            positions=self._prefill_tokens[1, :n].view(b, t),
            kv_len=kv,
            last_index=self._prefill_rows[1, :b],
        )  # (b, 1, V)
        return logits[:, 0, : self.output_vocab].float()

    def _prefill_eager(self, seqs: list[Request], chunks: list[list[int]]) -> torch.Tensor:
        """Chunks padded to the longest; padded tokens write their own slot past the prompt (never read first)."""
        t = max(len(chunk) for chunk in chunks)
        last_pos = self.max_model_len - 1
        ids = [chunk + [0] * (t - len(chunk)) for chunk in chunks]
        positions = [[min(seq.num_cached + i, last_pos) for i in range(t)] for seq in seqs]
        rows = [[seq.slot for seq in seqs], [len(chunk) - 1 for chunk in chunks]]
        needed = max(seq.num_cached + len(chunk) for seq, chunk in zip(seqs, chunks, strict=True))
        kv_len = pick(self.kv_buckets, needed) if self.dense_decode else self._kv_len(needed)
        host = torch.tensor([ids, positions], dtype=torch.long).to(self.device, non_blocking=True)
        row_t = torch.tensor(rows, dtype=torch.long).to(self.device, non_blocking=True)
        self._set_adapters([seq.adapter for seq in seqs])
        forward = self._prefill_fn if t > 1 and len(seqs) == 1 else self.model  # the compiled shapes (cpu_compile)
        logits = forward(
            host[0], cache=self.cache, slots=row_t[0], positions=host[1], kv_len=kv_len, last_index=row_t[1]
        )  # (n, 1, V)
        return logits[:, 0, : self.output_vocab].float()

    def _sample_rows_of(self, logits: torch.Tensor, rows: list[tuple[int, Request]]) -> None:
        """Sample each (row of `logits`, sequence): the fast ones in one batched call and one host transfer, the
        ones that need the host between tokens one by one with their `RequestSampler`."""
        fast = [(row, seq) for row, seq in rows if batched_sampling(seq)]
        if fast:
            index = torch.tensor([row for row, _ in fast], dtype=torch.long).to(self.device, non_blocking=True)
            slots = torch.tensor([seq.slot for _, seq in fast], dtype=torch.long).to(self.device, non_blocking=True)
            sampled = self._sample_some(logits.index_select(0, index), slots, [seq for _, seq in fast])
            out = self._to_host(torch.stack([sampled[0].float(), sampled[1], sampled[2].float()]))  # (3, n)
            for i, (_, seq) in enumerate(fast):
                self._take(seq, out[0][i], out[1][i], out[2][i])
        for row, seq in rows:
            if not batched_sampling(seq):
                self._accept(seq, logits[row])

    # --- decode -------------------------------------------------------------------------------
    def _decode(self, seqs: list[Request], k: int) -> None:
        if not all(batched_sampling(seq) for seq in seqs):
            self._decode_mixed(seqs)
            return
        if k > 1 and 2 * max(seq.params.max_new_tokens - seq.num_generated for seq in seqs) < k:
            k = 1  # the tail of a batch: K steps would mostly compute tokens nobody keeps
        mode = sampling_mode([seq.params for seq in seqs])
        out = self._to_host(self._run_decode(seqs, k, mode))  # (k, 3, rows): one transfer for k steps
        for i, seq in enumerate(seqs):
            row = seq.slot if self.dense_decode else i
            for step in out:
                if seq.finished or seq.is_cancelled():
                    break  # tokens past the finishing one are dropped: never emitted, never counted
                seq.num_cached += 1  # the step's input token is now in the cache
                self._take(seq, step[0][row], step[1][row], step[2][row])

    def _decode_mixed(self, seqs: list[Request]) -> None:
        """One step of logits; host-dependent rows sampled one by one, the others in one batched call."""
        logits = self._run_decode(seqs, 1, "logits")  # (rows, V)
        for seq in seqs:
            seq.num_cached += 1
        rows = [seq.slot if self.dense_decode else i for i, seq in enumerate(seqs)]
        self._sample_rows_of(logits, list(zip(rows, seqs, strict=True)))

    def _run_decode(self, seqs: list[Request], k: int, mode: str) -> torch.Tensor:
        """k decode steps for `seqs` -> (k, 3, rows) [token, logprob, ok] per step, or logits (rows, V) for "logits"."""
        needed = min(max(seq.num_cached for seq in seqs) + k, self.max_model_len)
        if not self.dense_decode:  # compact rows, each reading its own slot (CPU)
            n = len(seqs)
            host = torch.tensor(
                [
                    [seq.last_token for seq in seqs],
                    [seq.num_cached for seq in seqs],
                    [seq.num_generated for seq in seqs],
                    [seq.slot for seq in seqs],
                ],
                dtype=torch.long,
            )
            self._decode_inputs[:, :n].copy_(host[:3])
            self.decode_slots[:n].copy_(host[3])
            self._set_adapters([seq.adapter for seq in seqs])
            slots = self.decode_slots[:n]
            first = max(seq.num_cached for seq in seqs) + 1
            # Eager steps may change shape: step i reads what K=1 would read, so K never changes a token.
            kv_lens = [self._kv_len(min(first + i, self.max_model_len)) for i in range(k)]
            return self._decode_loop(n, kv_lens[-1], k, mode, slots, self.table.gather(slots), kv_lens)
        b = pick(self.batch_buckets, max(seq.slot for seq in seqs) + 1)
        kv_len = pick(self.kv_buckets, needed)
        ids, counters = [0] * b, [0] * b
        positions = [self.max_model_len - 1] * b  # padding rows write where no live query reads yet
        for seq in seqs:
            ids[seq.slot], positions[seq.slot] = seq.last_token, seq.num_cached
            counters[seq.slot] = seq.num_generated
        staged = self._staging[:, :b]  # (3, b), pinned on CUDA: the inputs go over in one async copy
        staged.copy_(torch.tensor([ids, positions, counters], dtype=torch.long))
        self._decode_inputs[:, :b].copy_(staged, non_blocking=True)
        if self.lora_index is not None:
            adapters = [0] * b
            for seq in seqs:
                adapters[seq.slot] = seq.adapter
            self._set_adapters(adapters)

        def run() -> torch.Tensor:
            return self._decode_loop(b, kv_len, k, mode, None, self.table.view(b))

        if self.graphs is not None:
            return self.graphs.run(("decode", b, kv_len, k, mode), run)
        return run()

    def _decode_loop(
        self,
        b: int,
        kv_len: int,
        k: int,
        mode: str,
        slots: torch.Tensor | None,
        table: SamplingTable,
        kv_lens: list[int] | None = None,
    ) -> torch.Tensor:
        """The body a decode graph captures: k x (forward, sample on the device, feed the token back).

        `kv_lens` (eager only): the KV length of each step; a graph reads `kv_len` in every step."""
        ids, positions, counters = self.decode_ids[:b], self.decode_positions[:b], self.decode_counters[:b]
        if mode == "logits":
            logits = self._fn(ids, cache=self.cache, slots=slots, positions=positions, kv_len=kv_len)
            return logits[:, -1, : self.output_vocab].float()
        out = self._decode_out
        for i in range(k):
            step_kv = kv_lens[i] if kv_lens is not None else kv_len
            logits = self._fn(ids, cache=self.cache, slots=slots, positions=positions, kv_len=step_kv)
            tokens, logprobs, ok = sample_rows(
                logits[:, -1, : self.output_vocab],
                table,
                mode != "greedy",
                counters + i if mode == "seeded" else None,
            )
            out[i, :, :b] = torch.stack([tokens.float(), logprobs, ok.float()])
            if i + 1 < k:
                ids[:, 0] = tokens
                positions.add_(1).clamp_(max=self.max_model_len - 1)
        return out[:k, :, :b]

    def _sample_some(
        self, logits: torch.Tensor, slots: torch.Tensor, seqs: list[Request]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched sampling of some rows outside a graph: their table rows gathered by slot."""
        mode = sampling_mode([seq.params for seq in seqs])
        counters = None
        if mode == "seeded":
            counters = torch.tensor([seq.num_generated for seq in seqs], dtype=torch.long).to(self.device)
        return sample_rows(logits, self.table.gather(slots), mode != "greedy", counters)

    def _set_adapters(self, adapters: list[int]) -> None:
        """Row b of the next forward uses LoRA adapter adapters[b] (a no-op for a model without adapters)."""
        if self.lora_index is not None:
            self.lora_index[: len(adapters)].copy_(torch.tensor(adapters, dtype=torch.long), non_blocking=True)

    def _kv_len(self, needed: int) -> int:
        bucket = self.kv_len_bucket
        return min(self.max_model_len, -(-needed // bucket) * bucket)

    def _to_host(self, t: torch.Tensor) -> list:  # type: ignore[type-arg]
        if t.is_cuda:  # wait with the GIL released, so the server's event loop runs meanwhile
            torch.cuda.synchronize(t.device)
        return t.tolist()  # type: ignore[no-any-return]

    def _take(self, seq: Request, token: float, logprob: float, ok: float) -> None:
        """Record a token the batched sampler drew for `seq`, or end `seq` alone if its row was not samplable."""
        if seq.finished or seq.is_cancelled():
            return
        if not ok:
            self._finish(
                seq,
                "error",
                "MiniGPTError: no token can be sampled: the logits are not finite or every token is excluded",
            )
            return
        self._record(seq, SampledToken(int(token), logprob, []))

    # --- CUDA graphs --------------------------------------------------------------------------
    def _snapshot_decode_inputs(self) -> Callable[[], None]:
        saved = self._decode_inputs.clone()

        def put_back() -> None:
            self._decode_inputs.copy_(saved)

        return put_back

    def _startup_steps(self) -> list[tuple[tuple[object, ...], Callable[[], torch.Tensor]]]:
        steps: list[tuple[tuple[object, ...], Callable[[], torch.Tensor]]] = []
        for t in reversed(self.prefill_t_buckets):
            for b in reversed(self.batch_buckets):
                if b * t <= self.max_prefill_tokens:
                    steps.append((("prefill", b, t, t), functools.partial(self._prefill_graph_step, b, t, t)))
        decode_kinds = sorted({(self.decode_steps, "greedy"), (1, "greedy"), (1, "logits")})
        for kv in reversed(self.kv_buckets):
            for b in reversed(self.batch_buckets):
                for k, mode in decode_kinds:
                    step = functools.partial(self._decode_loop, b, kv, k, mode, None, self.table.view(b))
                    steps.append((("decode", b, kv, k, mode), step))
        return steps

    @torch.no_grad()
    def _capture_startup_graphs(self) -> None:
        assert self.graphs is not None
        # Dummy inputs: decode rows write the last position of their slot, prefill rows the scratch slot.
        self._decode_inputs[0].zero_()
        self._decode_inputs[1].fill_(self.max_model_len - 1)
        self._prefill_tokens.zero_()
        self._prefill_rows[0].fill_(self.cache.scratch_slot)
        self._prefill_rows[1].zero_()
        try:
            self.graphs.capture_all(self._startup_steps())
        except Exception as exc:  # a compiler failure must not take the server down: capture the eager steps
            if self._fn is self.model:
                raise
            logger.warning("torch.compile of the engine's steps failed (%s); capturing the eager steps", exc)
            self._fn = self.model
            self.graphs = GraphCache(restore=self._snapshot_decode_inputs)
            self.graphs.capture_all(self._startup_steps())

    # --- sampling and stopping ----------------------------------------------------------------
    def _accept(self, seq: Request, logits_row: torch.Tensor) -> None:
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

    def _record(self, seq: Request, sampled: SampledToken) -> None:
        """Account for a sampled token (see `Request.record`) and emit its TokenEvent, or end `seq` on an error."""
        if seq.finished or seq.is_cancelled():
            return
        try:
            event = seq.record(sampled, self.eos_token_ids, self.max_model_len)
        except Exception as exc:
            logger.warning("sampling failed for request %s: %s", seq.request_id, exc)
            self._finish(seq, "error", f"{type(exc).__name__}: {exc}")
            return
        self.counters.generation_tokens += 1
        if event.finish_reason is None:
            seq.emit(event)
        else:
            seq.finished = True
            self.counters.finished[event.finish_reason] = self.counters.finished.get(event.finish_reason, 0) + 1
            self._final_events.append((seq, event))
