"""The reward model (`minigpt-train --mode reward`): the transformer plus a scalar head, trained Bradley-Terry.

What it is: `RewardModel` (a `MiniGPT` whose final hidden state at the last token of a conversation feeds a
`Linear(n_embd, 1)` score head, plus by default a learned weight, starting at 1, times the response's log-likelihood
under the model; `--reward-features last` drops that term), `bradley_terry_loss`
(-log sigmoid(r_chosen - r_rejected)), `pairwise_accuracy`,
`save_head` / `load_reward_model` and `RewardStage` with its builder `build_reward`. On disk a reward model is a
normal checkpoint directory (it loads with `minigpt_core.checkpoint.load_checkpoint` and serves as a language
model) plus `reward_head.safetensors`, which holds the head; only `load_reward_model` reads that file.
What it is not: the RLHF stage that consumes the scores (training.rlhf) or pair loading (training.preference).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.errors import CheckpointError
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.loader import resolve_data_files
from training.loop import Stage, build_optimizer, clip_and_step, set_lr
from training.preference import (
    Pair,
    PairBatcher,
    batches,
    by_kind,
    collate,
    masked_logprob_sum,
    pad_rows,
    split_pairs,
)
from training.runtime import Runtime
from training.stage import distribute, load_init
from training.state import SERVABLE_FILES, LoadedCheckpoint

logger = logging.getLogger(__name__)

HEAD_FILE = "reward_head.safetensors"
REWARD_CONFIG_FILE = "reward_config.json"


class RewardModel(torch.nn.Module):
    """Scores a whole conversation: score_head(final hidden state at its last token), plus with
    `features="last+loglik"` a learned weight times the log-likelihood the model itself gives the response.

    The second term starts the reward model where its SFT initialisation already is — a language model that gives
    correct answers more probability than wrong ones — so Bradley-Terry training refines that judgement instead of
    relearning, from one bit per pair, what the head alone cannot see (whether `8 + 69 = 79` is right).
    """

    def __init__(self, lm: MiniGPT, features: str = "last+loglik") -> None:
        super().__init__()
        if features not in ("last", "last+loglik"):
            raise ValueError(f"unknown reward features {features!r}")
        self.lm = lm
        self.features = features
        self.score_head = torch.nn.Linear(lm.config.n_embd, 1)
        torch.nn.init.zeros_(self.score_head.weight)
        torch.nn.init.zeros_(self.score_head.bias)
        self.loglik_weight = torch.nn.Parameter(torch.tensor(1.0 if features == "last+loglik" else 0.0))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) right-padded, lengths (B,), mask (B, T) of the response tokens → scores (B,) float32."""
        hidden = self.lm(ids, return_hidden=True)  # (B, T, C)
        last = hidden[torch.arange(ids.size(0), device=ids.device), lengths - 1]  # (B, C)
        score = self.score_head(last).squeeze(-1).float()
        if self.features == "last" or mask is None:
            return score
        loglik = masked_logprob_sum(self.lm.logits(hidden), ids, mask)  # (B,)
        return score + self.loglik_weight * loglik

    @torch.no_grad()
    def score(
        self, rows: Sequence[Sequence[int]], response_starts: Sequence[int] | None = None, batch_size: int = 16
    ) -> list[float]:
        """Scores of token-id conversations (no gradients), in order; the response of row i starts at
        `response_starts[i]` (required with the log-likelihood feature)."""
        if response_starts is None and self.features != "last":
            raise ValueError("this reward model also scores the response's likelihood: pass response_starts")
        device = next(self.parameters()).device
        out: list[float] = []
        for i in range(0, len(rows), batch_size):
            chunk = []
            for j, row in enumerate(rows[i : i + batch_size]):
                start = len(row) if response_starts is None else response_starts[i + j]
                chunk.append((list(row), [k >= start for k in range(len(row))]))
            ids, mask, lengths = pad_rows(chunk, device)
            out += self(ids, lengths, mask).tolist()
        return out


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean -log sigmoid(r_chosen - r_rejected) over (B,) scores."""
    return -F.logsigmoid(chosen - rejected).mean()


def _pair_scores(rm: torch.nn.Module, pairs: Sequence[Pair], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, lengths = collate(pairs, device)
    scores = rm(ids, lengths, mask)  # (2B,)
    return scores[: len(pairs)], scores[len(pairs) :]


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: Sequence[Pair], device: torch.device, batch_size: int = 8) -> dict:
    """val_pairwise_acc (score(chosen) > score(rejected)), per kind, and the held-out loss."""
    was_training = rm.training
    rm.eval()
    hits: list[bool] = []
    losses: list[float] = []
    for batch in batches(pairs, batch_size):
        c, r = _pair_scores(rm, batch, device)
        hits += (c > r).tolist()
        losses.append(float(bradley_terry_loss(c, r)) * len(batch))
    rm.train(was_training)
    out = {"val_pairwise_acc": sum(hits) / len(hits), "val_loss": sum(losses) / len(pairs)}
    out.update(by_kind([p.kind for p in pairs], hits, "val_pairwise_acc"))
    return out


def save_head(rm: RewardModel, directory: Path) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in rm.score_head.state_dict().items()}
    state["loglik_weight"] = rm.loglik_weight.detach().to("cpu").reshape(1).contiguous()
    save_file(state, str(directory / HEAD_FILE), metadata={"format": "pt", "kind": "minigpt-reward-head"})
    info = {"head_file": HEAD_FILE, "pooling": "last_token", "features": rm.features, "loss": "bradley_terry"}
    (directory / REWARD_CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_reward_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, Tokenizer]:
    """A reward-model checkpoint directory → (RewardModel in eval mode, tokenizer)."""
    lm, tokenizer = load_checkpoint(model_dir)
    head = Path(model_dir) / HEAD_FILE
    if not head.is_file():
        raise CheckpointError(f"{head}: missing: {model_dir} is not a reward model (train one with --mode reward)")
    try:
        info = json.loads((Path(model_dir) / REWARD_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    rm = RewardModel(lm, features=str(info.get("features", "last")))
    load_head(rm, Path(model_dir))
    return rm.to(device).eval(), tokenizer


def load_head(rm: RewardModel, directory: Path) -> None:
    """Read `directory`'s head file into `rm` (score head and log-likelihood weight)."""
    head = directory / HEAD_FILE
    try:
        state = load_file(str(head), device="cpu")
        weight = state.pop("loglik_weight", None)
        rm.score_head.load_state_dict(state, strict=True)
        if weight is not None:
            rm.loglik_weight.data.copy_(weight.reshape(()))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{head}: cannot load the reward head ({exc})") from exc


class RewardStage(Stage):
    """Bradley-Terry training of a `RewardModel`; checkpoints are servable LM folders plus the head file."""

    published = (*SERVABLE_FILES, HEAD_FILE, REWARD_CONFIG_FILE)

    def __init__(
        self,
        cfg: TrainConfig,
        rt: Runtime,
        rm: RewardModel,
        tokenizer: Tokenizer,
        train: Sequence[Pair],
        val: Sequence[Pair],
    ) -> None:
        self.cfg, self.rt, self.rm, self.model, self.tokenizer = cfg, rt, rm, rm.lm, tokenizer
        self.optimizer = build_optimizer(rm, cfg, rt.device)
        # With features "last" the log-likelihood weight gets no gradient, which DDP must be told.
        self.forward = distribute(rm, rt, find_unused_parameters=rm.features == "last")
        self.val = val
        self.batcher = PairBatcher(train[rt.rank :: rt.world_size], cfg.data.batch_size, seed=cfg.runtime.seed)

    def step(self, step: int) -> dict[str, Any]:
        lr = set_lr(self.optimizer, step, self.cfg)
        with self.rt.autocast():
            c, r = _pair_scores(self.forward, self.batcher.next_batch(), self.rt.device)
            loss = bradley_terry_loss(c, r)
        loss.backward()
        grad_norm = clip_and_step(self.rm, self.optimizer, self.cfg.optim.grad_clip)
        return {
            "loss": float(loss.detach()),
            "grad_norm": float(grad_norm),
            "accuracy": float((c > r).float().mean()),
            "margin": float((c - r).detach().mean()),
            "lr": lr,
        }

    def evaluate(self) -> dict[str, float]:
        with self.rt.autocast():
            return pairwise_accuracy(self.rm, self.val, self.rt.device, batch_size=self.cfg.data.batch_size)

    def data_state(self) -> dict[str, Any]:
        return self.batcher.state_dict()

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.batcher.load_state_dict(state)

    def write_files(self, directory: Path) -> None:
        super().write_files(directory)
        save_head(self.rm, directory)


def build_reward(cfg: TrainConfig, rt: Runtime, run_dir: Path, loaded: LoadedCheckpoint | None) -> RewardStage:
    """A Bradley-Terry reward model on preference pairs (from --init when given, else from scratch; resumed with
    its head)."""
    lm, tokenizer, cfg = load_init(cfg, loaded, required=False)
    files = resolve_data_files(cfg.data.path, "dpo", cfg.data.val_data)
    train, val = split_pairs(files.train, files.val, tokenizer, cfg.data.seq_len, cfg.data.max_bad_fraction)
    rm = RewardModel(lm, cfg.reward.features)
    if loaded is not None:
        load_head(rm, loaded.path)
    rm = rm.to(rt.device).train()
    logger.info("reward model: %d train / %d held-out pairs", len(train), len(val))
    return RewardStage(cfg, rt, rm, tokenizer, train, val)
