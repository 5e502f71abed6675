"""The language-model stages: pretrain and SFT (full weights or a LoRA adapter), as `training.loop.Stage`s.

What it is: `LMStage` (one optimizer step over `grad_accum` micro-batches normalised by the number of target
tokens across all ranks, float16 loss scaling, clipping; evaluation as validation loss and bits-per-byte; the
packed loader's position as its data state), `LoRAStage` (the same step on a frozen base with adapters, saving
only the adapter in HF PEFT's layout; `load_adapter_weights` puts a saved one back on resume), `evaluate_docs`
(also used by `minigpt-eval`), `steps_per_epoch` and `apply_epochs` (for `--epochs`).
What it is not: building the run (tokenizer, model, data: `training.pipeline`) or the loop (`training.loop`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minigpt_core.lora import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoRALinear,
    LoRAWeights,
    adapter_from_model,
    write_adapter_files,
)
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.fused_ce import linear_cross_entropy
from training.loader import IGNORE_INDEX, DocumentSet, PackedLoader
from training.loop import Stage, clip_and_step, set_lr
from training.precision import MasterWeights
from training.runtime import Runtime

logger = logging.getLogger(__name__)


class LMStage(Stage):
    """Next-token cross-entropy on packed rows: pretraining (a token stream) and SFT (whole conversations)."""

    eval_at_start = False
    model: MiniGPT

    def __init__(
        self,
        cfg: TrainConfig,
        rt: Runtime,
        model: MiniGPT,
        forward: torch.nn.Module,
        tokenizer: Tokenizer,
        optimizer: torch.optim.Optimizer,
        loader: PackedLoader,
        val_docs: DocumentSet,
        byte_lengths: torch.Tensor,
        master: MasterWeights[MiniGPT] | None = None,
    ) -> None:
        self.cfg, self.rt, self.model, self.tokenizer, self.optimizer = cfg, rt, model, tokenizer, optimizer
        self.forward = forward  # what the step calls: the model (or its bf16 copy), DDP-wrapped and/or compiled
        self.master = master  # --param-dtype bfloat16: `model` holds the float32 master weights, `forward` a copy
        self.trained = master.module if master is not None else model
        self.loader, self.val_docs = loader, val_docs
        self.byte_lengths = byte_lengths  # (V,) UTF-8 bytes per token id
        self.tokens_per_step = cfg.tokens_per_step * rt.world_size

    def step(self, step: int) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches (device tensors: the loop reads them when it logs)."""
        cfg, rt = self.cfg, self.rt
        batches = []
        for _ in range(cfg.data.grad_accum):
            batch = self.loader.next_batch_docs()
            assert batch is not None  # the training loader repeats forever
            batches.append(batch)
        n_local = float(sum(int((y != IGNORE_INDEX).sum()) for _, y, _ in batches))
        n_global = rt.all_reduce_sum([n_local])[0]
        # DDP averages gradients over ranks, so each rank scales by world/N to get sum/N overall.
        scale = rt.world_size / max(n_global, 1.0)
        lr = set_lr(self.optimizer, step, cfg)
        loss_sum = torch.zeros((), device=rt.device)
        masked = cfg.document_masked
        for i, (x, y, doc) in enumerate(batches):
            if rt.device.type == "cuda":  # pinned host memory lets the copy overlap the previous step's kernels
                x, y = x.pin_memory(), y.pin_memory()
                doc = doc.pin_memory() if masked else doc
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            doc_ids = doc.to(rt.device, non_blocking=True) if masked else None
            last = i == len(batches) - 1
            no_sync = getattr(self.forward, "no_sync", None)
            sync_ctx = no_sync() if (rt.distributed and not last and no_sync) else contextlib.nullcontext()
            with sync_ctx:
                loss = self._loss(x, y, doc_ids)
                scaled = loss * scale
                (rt.scaler.scale(scaled) if rt.scaler is not None else scaled).backward()
            loss_sum += loss.detach()
        if rt.distributed:
            dist_loss = torch.stack([loss_sum.double()])
            torch.distributed.all_reduce(dist_loss)
            loss_sum = dist_loss[0]
        if self.master is not None:
            self.master.grads_to_master()
        grad_norm = clip_and_step(self.model, self.optimizer, cfg.optim.grad_clip, rt.scaler)
        if self.master is not None:
            self.master.params_from_master()
        return {"loss": loss_sum / max(n_global, 1.0), "lr": lr, "grad_norm": grad_norm, "tokens": n_global}

    def _loss(self, x: torch.Tensor, y: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        """Summed cross-entropy of one micro-batch: over the full (B, T, V) logits, or with --fused-ce over chunks
        of rows of the final hidden states against the tied embedding."""
        with self.rt.autocast():
            if self.cfg.runtime.fused_ce:
                hidden = self.forward(x, return_hidden=True, doc_ids=doc_ids)  # (B, T, C)
                return linear_cross_entropy(
                    hidden, self.trained.lm_head_weight, y, ignore_index=IGNORE_INDEX, compile=self.cfg.runtime.compile
                )  # fmt: skip
            logits = self.forward(x, doc_ids=doc_ids)  # (B, T, V) float32
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX, reduction="sum")

    def evaluate(self) -> dict[str, float]:
        """Validation loss (nats per target token) and bits per byte over up to `eval_batches` batches."""
        data = self.cfg.data
        return evaluate_docs(
            self.model, self.val_docs, self.rt, self.byte_lengths, pack=self.loader.pack, seq_len=data.seq_len,
            batch_size=data.batch_size, max_batches=self.cfg.schedule.eval_batches,
            doc_mask=self.cfg.document_masked,
        )  # fmt: skip

    def data_state(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def resolve_length(self) -> TrainConfig:
        """The config with max_steps derived from `--epochs` (when given)."""
        if self.cfg.schedule.epochs is not None:
            self.cfg = apply_epochs(self.cfg, self.rt, self.loader)
        return self.cfg


class LoRAStage(LMStage):
    """SFT of adapter weights only; checkpoints hold the adapter (PEFT layout), the base stays at --init."""

    eval_at_start = True
    published = (CONFIG_FILE, WEIGHTS_FILE)

    def __init__(self, *args: Any, base_model: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_model = base_model

    def write_files(self, directory: Path) -> None:
        write_adapter_files(directory, adapter_from_model(self.model, base_model=self.base_model))


@torch.no_grad()
def load_adapter_weights(model: MiniGPT, weights: LoRAWeights) -> None:
    """Put a saved adapter's A and B into the `apply_lora`-wrapped model (a LoRA run resumed)."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            a, b = weights.modules[name]
            module.lora_A.copy_(a)
            module.lora_B.copy_(b)


@torch.no_grad()
def evaluate_docs(
    model: torch.nn.Module,
    docs: DocumentSet,
    rt: Runtime,
    byte_lengths: torch.Tensor,
    *,
    pack: str,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    doc_mask: bool | None = None,
) -> dict[str, float]:
    """Loss and bits-per-byte of `model` over `docs` (this rank's share, summed over ranks); {} if empty.

    `doc_mask` (default: for pack="docs", where whole conversations share a row) keeps the documents of a row apart.
    """
    doc_mask = pack == "docs" if doc_mask is None else doc_mask
    loader = PackedLoader(
        docs, seq_len, batch_size, pack=pack, shuffle=False, repeat=False, rank=rt.rank, world_size=rt.world_size
    )
    was_training = model.training
    model.eval()
    byte_lengths = byte_lengths.to(rt.device)
    nats = tokens = byte_nats = n_bytes = 0.0
    i = 0
    while (batch := loader.next_batch_docs()) is not None and (max_batches is None or i < max_batches):
        i += 1
        x, y = batch[0].to(rt.device), batch[1].to(rt.device)
        with rt.autocast():
            logits = model(x, doc_ids=batch[2].to(rt.device) if doc_mask else None)
        per_token = F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )
        valid = y.view(-1) != IGNORE_INDEX
        tb = byte_lengths[y.view(-1).clamp(min=0)] * valid  # special tokens count 0 bytes (and are left out)
        nats += float(per_token[valid].sum())
        tokens += float(valid.sum())
        byte_nats += float(per_token[tb > 0].sum())
        n_bytes += float(tb.sum())
    model.train(was_training)
    nats, tokens, byte_nats, n_bytes = rt.all_reduce_sum([nats, tokens, byte_nats, n_bytes])
    if tokens == 0:
        return {}
    bpb = byte_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")
    return {"val_loss": nats / tokens, "val_bpb": bpb, "val_tokens": tokens}


def steps_per_epoch(loader: PackedLoader, grad_accum: int) -> int:
    """Optimizer steps in one pass over this rank's share of the data, counted from document lengths only.

    Rows are counted the way `PackedLoader` fills them: a token stream cut every seq_len + 1 tokens (pretrain),
    or whole conversations packed greedily in the current epoch's order, a longer one truncated (SFT).
    """
    docs, need = loader.docs, loader.seq_len + 1
    lengths = [docs.length(int(i)) for i in loader.order()]
    if loader.pack == "stream":
        rows = math.ceil(sum(lengths) / need)
    else:
        rows = filled = 0
        for length in lengths:
            if filled and length > need - filled:
                rows, filled = rows + 1, 0
            filled += min(length, need)
            if filled == need:
                rows, filled = rows + 1, 0
        rows += filled > 0
    return max(1, math.ceil(math.ceil(rows / loader.batch_size) / grad_accum))


def apply_epochs(cfg: TrainConfig, rt: Runtime, loader: PackedLoader) -> TrainConfig:
    """`cfg` with max_steps = epochs x steps per epoch (averaged over ranks); a warmup as long as the run shrinks."""
    assert cfg.schedule.epochs is not None
    per_epoch = math.ceil(rt.all_reduce_sum([float(steps_per_epoch(loader, cfg.data.grad_accum))])[0])
    per_epoch = max(1, math.ceil(per_epoch / rt.world_size))
    max_steps = max(1, math.ceil(cfg.schedule.epochs * per_epoch))
    warmup = cfg.optim.warmup_steps if cfg.optim.warmup_steps < max_steps else max(1, max_steps // 10)
    if rt.is_main:
        logger.info(
            "--epochs %g: %d steps per epoch, %d steps (warmup %d)", cfg.schedule.epochs, per_epoch, max_steps, warmup
        )
    return cfg.replace(max_steps=max_steps, warmup_steps=warmup)
