"""Direct Preference Optimization (`minigpt-train --mode dpo --init <sft checkpoint>`).

What it is: `dpo_loss` (the sigmoid loss of Rafailov et al. 2023 and the IPO loss of Azar et al. 2023 on summed
assistant-token log-probabilities), `evaluate_dpo` (held-out preference accuracy: how often the policy gives the
chosen answer the higher log-probability; plus the implicit-reward accuracy and margin against the reference),
`DPOStage` and its builder `build_dpo`: a trainable policy and a frozen reference, both the --init checkpoint;
the reference's log-probs are computed without gradients for each batch. Each log line of metrics.jsonl holds
loss, chosen and rejected rewards (beta times the policy/reference log-ratio), the margin and the preference accuracy.
What it is not: pair loading or log-prob code (training.preference) or the loop (training.loop).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.loader import resolve_data_files
from training.loop import clip_and_step, set_lr
from training.preference import Pair, PairBatcher, batches, by_kind, collate, sequence_logprobs, split_pairs
from training.runtime import Runtime
from training.stage import Policy, PolicyStage, load_policy
from training.state import LoadedCheckpoint

logger = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss over the batch and per-pair statistics (all inputs: (B,) summed log-probs).

    h = (log pi(c) - log pi(r)) - (log ref(c) - log ref(r));
    sigmoid: -log sigmoid(beta * h);  ipo: (h - 1 / (2 beta))^2.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    stats = {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "margins": chosen_rewards - rejected_rewards,
        "accuracies": (chosen_rewards > rejected_rewards).float(),
    }
    return losses.mean(), stats


def _pair_logprobs(model: torch.nn.Module, pairs: Sequence[Pair], device: torch.device) -> tuple[torch.Tensor, ...]:
    ids, mask, _ = collate(pairs, device)
    logps = sequence_logprobs(model, ids, mask)  # (2B,)
    n = len(pairs)
    return logps[:n], logps[n:]


@torch.no_grad()
def reference_logprobs(
    reference: torch.nn.Module, pairs: Sequence[Pair], device: torch.device, batch_size: int = 8
) -> torch.Tensor:
    """(N, 2) summed log-probs of (chosen, rejected) under the frozen reference: computed once per held-out set."""
    out = [torch.stack(_pair_logprobs(reference, batch, device), dim=1) for batch in batches(pairs, batch_size)]
    return torch.cat(out).float().cpu()


@torch.no_grad()
def evaluate_dpo(
    policy: torch.nn.Module,
    pairs: Sequence[Pair],
    device: torch.device,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    batch_size: int = 8,
) -> dict[str, float]:
    """val_pref_acc (policy log p(chosen) > log p(rejected)), per kind; with `ref_logps` the reward accuracy."""
    was_training = policy.training
    policy.eval()
    pol = torch.cat([torch.stack(_pair_logprobs(policy, b, device), dim=1) for b in batches(pairs, batch_size)])
    policy.train(was_training)
    pol = pol.float().cpu()  # (N, 2)
    pref = (pol[:, 0] > pol[:, 1]).tolist()
    out = {"val_pref_acc": sum(pref) / len(pref)}
    out.update(by_kind([p.kind for p in pairs], pref, "val_pref_acc"))
    if ref_logps is not None:
        margins = beta * ((pol[:, 0] - ref_logps[:, 0]) - (pol[:, 1] - ref_logps[:, 1]))
        out["val_reward_acc"] = float((margins > 0).float().mean())
        out["val_margin"] = float(margins.mean())
    return out


class DPOStage(PolicyStage):
    """A trainable policy and the frozen reference, both the --init checkpoint; one batch of pairs per step."""

    def __init__(
        self, cfg: TrainConfig, rt: Runtime, policy: Policy, train: Sequence[Pair], val: Sequence[Pair]
    ) -> None:
        super().__init__(cfg, rt, policy)
        self.val = val
        self.batcher = PairBatcher(train[rt.rank :: rt.world_size], cfg.data.batch_size, seed=cfg.runtime.seed)
        with rt.autocast():  # the reference's held-out log-probs never change: computed once
            self.ref_val = reference_logprobs(self.reference, val, rt.device, cfg.data.batch_size)

    def step(self, step: int) -> dict[str, Any]:
        cfg, device = self.cfg, self.rt.device
        lr = set_lr(self.optimizer, step, cfg)
        pairs = self.batcher.next_batch()
        with self.rt.autocast():
            with torch.no_grad():
                rc, rr = _pair_logprobs(self.reference, pairs, device)
            pc, pr = _pair_logprobs(self.forward, pairs, device)
            loss, stats = dpo_loss(pc, pr, rc, rr, beta=cfg.dpo.beta, loss_type=cfg.dpo.loss)
            loss.backward()
            grad_norm = clip_and_step(self.model, self.optimizer, cfg.optim.grad_clip)
        return {
            "loss": float(loss.detach()),
            "grad_norm": float(grad_norm),
            "rewards_chosen": float(stats["chosen_rewards"].mean()),
            "rewards_rejected": float(stats["rejected_rewards"].mean()),
            "reward_margin": float(stats["margins"].mean()),
            "pref_accuracy": float(stats["accuracies"].mean()),
            "lr": lr,
        }

    def evaluate(self) -> dict[str, float]:
        """Every rank scores the whole held-out set (the same numbers; rank 0 logs them)."""
        cfg = self.cfg
        with self.rt.autocast():
            return evaluate_dpo(
                self.model,
                self.val,
                self.rt.device,
                ref_logps=self.ref_val,
                beta=cfg.dpo.beta,
                batch_size=cfg.data.batch_size,
            )

    def data_state(self) -> dict[str, Any]:
        return self.batcher.state_dict()

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.batcher.load_state_dict(state)


def build_dpo(cfg: TrainConfig, rt: Runtime, run_dir: Path, loaded: LoadedCheckpoint | None) -> DPOStage:
    """DPO on the --init policy (or the resumed one) against a frozen copy of the --init checkpoint."""
    policy, cfg = load_policy(cfg, rt, loaded)
    files = resolve_data_files(cfg.data.path, "dpo", cfg.data.val_data)
    train, val = split_pairs(files.train, files.val, policy.tokenizer, cfg.data.seq_len, cfg.data.max_bad_fraction)
    logger.info("dpo (%s, beta %g): %d train / %d held-out pairs", cfg.dpo.loss, cfg.dpo.beta, len(train), len(val))
    return DPOStage(cfg, rt, policy, train, val)
