"""RLHF with GRPO (`minigpt-train --mode rlhf --init <checkpoint> --reward arithmetic [--reward-model DIR]`).

What it is: `grpo_advantages` (each sample's reward standardised within its group of G samples of one prompt),
`grpo_loss` (PPO-style clipped ratio on those advantages plus a KL penalty to the frozen reference with the k3
estimator exp(ref - logp) - (ref - logp) - 1, averaged over each answer's tokens, then over answers),
`rollout` (G samples per prompt generated through the project's `Engine`: batched, KV-cached, the policy's own
weights), `evaluate_rlhf` (greedy answers on held-out prompts, mean verifiable reward) and `GRPOStage` with its
builder `build_grpo`.
Logged: mean reward (and per rule), KL, clip fraction, response length, loss.
Prompts: `--data FILE` (JSONL records `{"messages", "answer"}` and/or `{"messages", "tools", "expected"}`), by
default fresh train-split arithmetic problems from the bundled generator (train-split tool requests when the
rules are `tool` without `arithmetic`); held out: `--eval-data`, by default the bundled eval_think.jsonl
(eval_tools.jsonl for tool rules): val-split templates, values and tool names.
What it is not: the rules themselves (training.rule_rewards), the reward model (training.reward_model) or a second
inference stack: rollouts go through minigpt_core.engine only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from minigpt_core.engine import Engine
from minigpt_core.output_parser import parse_all
from minigpt_core.prompting import ChatRequest, prepare
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.errors import DataError
from training.loop import clip_and_step, set_lr
from training.preference import pad_rows, token_logprobs
from training.reward_model import RewardModel, load_reward_model
from training.rule_rewards import Completion, RewardSet, parse_reward_names
from training.runtime import Runtime
from training.shards import iter_lines
from training.stage import Policy, PolicyStage, load_policy
from training.state import LoadedCheckpoint

logger = logging.getLogger(__name__)

HOLDOUT_EVERY = 20
GENERATED_PROMPTS = 4000


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards → (P, G) advantages: (r - group mean) / (group std + eps), std unbiased as in TRL."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.size(1) > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO objective over token log-probs (N, L) with answer mask (N, L) and advantages (N,).

    per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl_coef * k3, ratio = exp(logp - old_logp),
    k3 = exp(ref - logp) - (ref - logp) - 1; averaged over each answer's tokens, then over answers.
    """
    m = mask.float()
    n_tokens = m.sum(dim=1).clamp(min=1.0)  # (N,)
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]  # (N, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    policy_term = -torch.minimum(unclipped, clipped)
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1.0
    per_token = policy_term + kl_coef * kl
    loss = ((per_token * m).sum(dim=1) / n_tokens).mean()
    is_clipped = ((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + clip_eps) & (adv > 0))
    total = m.sum().clamp(min=1.0)
    stats = {
        "kl": ((kl * m).sum() / total).detach(),
        "clip_fraction": ((is_clipped.float() * m).sum() / total).detach(),
        "policy_loss": ((policy_term * m).sum(dim=1) / n_tokens).mean().detach(),
    }
    return loss, stats


def load_prompt_records(path: str | Path, max_prompts: int | None = None) -> list[dict[str, Any]]:
    """Prompt records of a JSONL file: objects with a "messages" list."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"{src}: prompt file not found")
    records = []
    for lineno, obj, error in iter_lines(src):
        if obj is None or not isinstance(obj.get("messages"), list):
            raise DataError(f"{src}:{lineno}: expected an object with a 'messages' list ({error or 'no messages'})")
        records.append(obj)
        if max_prompts is not None and len(records) >= max_prompts:
            break
    if not records:
        raise DataError(f"{src}: no prompt records")
    return records


def generated_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    """Train-split arithmetic and word problems from the bundled generator, as {"messages", "answer"}."""
    from training.datagen.math_dialogues import sample_problem

    rng = random.Random(f"rlhf-{seed}")
    out = []
    for _ in range(n):
        problem = sample_problem(rng, "train")
        out.append({"messages": [{"role": "user", "content": problem.question}], "answer": str(problem.answer)})
    return out


def generated_tool_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    """Train-split tool requests from the bundled generator, as {"messages", "tools", "expected"}."""
    from training.datagen.tool_dialogues import tool_eval

    rng = random.Random(f"rlhf-tools-{seed}")
    return [tool_eval(rng, "train") for _ in range(n)]


def prompt_sets(cfg: TrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) prompt records for a run."""
    from training.loader import bundled_data_dir

    rules = set(parse_reward_names(cfg.grpo.rewards))
    tools_only = "tool" in rules and "arithmetic" not in rules
    if cfg.data.path is None:
        train = (generated_tool_prompts if tools_only else generated_prompts)(GENERATED_PROMPTS, cfg.runtime.seed)
    else:
        train = load_prompt_records(cfg.data.path)
    if cfg.grpo.eval_data is not None:
        val = load_prompt_records(cfg.grpo.eval_data)
    elif cfg.data.path is None:
        val = load_prompt_records(bundled_data_dir() / ("eval_tools.jsonl" if tools_only else "eval_think.jsonl"))
    else:
        val, train = train[::HOLDOUT_EVERY], [r for i, r in enumerate(train) if i % HOLDOUT_EVERY] or train
    return train, val[: cfg.grpo.eval_prompts]


def prompt_ids(record: dict[str, Any], tokenizer: Tokenizer, thinking: bool) -> list[int]:
    """The record's prompt as every chat is prepared (minigpt_core.prompting). Rollouts use only the ids: they sample
    the policy unconstrained (no grammar, no banned ids), as GRPO's probability ratios assume."""
    chat = ChatRequest(record["messages"], record.get("tools"), thinking=thinking, grammar=False)
    return prepare(chat, tokenizer, vocab_size=tokenizer.vocab_size).prompt_ids


def rollout(
    engine: Engine,
    tokenizer: Tokenizer,
    records: Sequence[dict[str, Any]],
    params: Sequence[SamplingParams],
    *,
    thinking: bool,
) -> tuple[list[list[int]], list[Completion]]:
    """Generate one answer per (record, params) pair, all queued at once so the engine batches them."""
    prompts = [prompt_ids(r, tokenizer, thinking) for r in records]
    streams = [engine.generate(p, sp) for p, sp in zip(prompts, params, strict=True)]
    completions = []
    for record, sp, stream in zip(records, params, streams, strict=True):
        ids: list[int] = []
        finish = None
        for event in stream:
            if event.token_id is not None:
                ids.append(event.token_id)
            finish = event.finish_reason or finish
        parsed, _ = parse_all(tokenizer, ids, thinking=thinking, parse_tools=bool(record.get("tools")))
        completions.append(Completion(record, ids, finish, parsed, thinking, sp.max_new_tokens))
    return prompts, completions


def score(
    completions: Sequence[Completion], prompts: Sequence[list[int]], rules: RewardSet, rm: RewardModel | None
) -> tuple[list[float], dict[str, float]]:
    """Total reward per completion (rules + reward-model score) and the per-source means."""
    totals, breakdown = rules.score_all(completions)
    if rm is not None:
        scores = rm.score(
            [p + c.token_ids for p, c in zip(prompts, completions, strict=True)], [len(p) for p in prompts]
        )
        totals = [t + s for t, s in zip(totals, scores, strict=True)]
        breakdown["reward_model"] = sum(scores) / len(scores)
    return totals, breakdown


def answer_logprobs(
    model: torch.nn.Module, prompts: Sequence[list[int]], completions: Sequence[Completion], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (N, T-1) of each full row and the mask (N, T-1) of the answer tokens."""
    pairs = zip(prompts, completions, strict=True)
    rows = [(p + c.token_ids, [False] * len(p) + [True] * len(c.token_ids)) for p, c in pairs]
    ids, mask, _ = pad_rows(rows, device)
    return token_logprobs(model(ids), ids), mask[:, 1:]


def evaluate_rlhf(
    engine: Engine,
    tokenizer: Tokenizer,
    records: Sequence[dict[str, Any]],
    rules: RewardSet,
    rm: RewardModel | None,
    *,
    max_new_tokens: int,
    thinking: bool,
) -> dict[str, float]:
    """Greedy answers to the held-out prompts: val_reward (mean total) and the per-rule means."""
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)] * len(records)
    prompts, completions = rollout(engine, tokenizer, records, params, thinking=thinking)
    totals, breakdown = score(completions, prompts, rules, rm)
    out = {"val_reward": sum(totals) / len(totals)}
    out.update({f"val_{k}": v for k, v in breakdown.items()})
    out["val_response_len"] = sum(len(c.token_ids) for c in completions) / len(completions)
    return out


class GRPOStage(PolicyStage):
    """GRPO: rollouts of batch_size prompts x group_size samples through the engine, then grpo_epochs optimizer
    steps on them. The policy's weights are shared with the rollout engine; under torchrun each rank draws its
    prompts from its own share of the training set."""

    def __init__(
        self,
        cfg: TrainConfig,
        rt: Runtime,
        policy: Policy,
        prompts: tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]],
        rewards: tuple[RewardSet, RewardModel | None],
    ) -> None:
        super().__init__(cfg, rt, policy)
        self.train, self.val = list(prompts[0])[rt.rank :: rt.world_size], prompts[1]
        self.rules, self.rm = rewards
        rows = cfg.data.batch_size * cfg.grpo.group_size
        max_len = min(self.model.config.max_seq_len, cfg.data.seq_len + cfg.grpo.max_new_tokens)
        self.engine = Engine(
            self.model, max_num_seqs=min(64, rows), max_model_len=max_len, max_queued=max(256, rows, len(self.val)),
            device=rt.device, output_vocab=self.tokenizer.vocab_size,
        )  # fmt: skip
        self.rng = random.Random(cfg.runtime.seed)

    def session(self) -> Engine:
        return self.engine

    def step(self, step: int) -> dict[str, Any]:
        cfg, device = self.cfg, self.rt.device
        lr = set_lr(self.optimizer, step, cfg)
        chosen = self.rng.sample(self.train, min(cfg.data.batch_size, len(self.train)))
        records = [r for r in chosen for _ in range(cfg.grpo.group_size)]
        base = self.rng.randrange(1 << 30)
        params = [
            SamplingParams(max_new_tokens=cfg.grpo.max_new_tokens, temperature=cfg.grpo.temperature, seed=base + i)
            for i in range(len(records))
        ]
        prompts, completions = rollout(self.engine, self.tokenizer, records, params, thinking=cfg.grpo.thinking)
        totals, breakdown = score(completions, prompts, self.rules, self.rm)
        rewards = torch.tensor(totals, dtype=torch.float32).view(len(chosen), cfg.grpo.group_size)
        advantages = grpo_advantages(rewards).view(-1).to(device)
        with torch.no_grad():
            old_logp, mask = answer_logprobs(self.model, prompts, completions, device)
            ref_logp, _ = answer_logprobs(self.reference, prompts, completions, device)
        self.model.train()
        for _ in range(cfg.grpo.epochs):
            logp, _ = answer_logprobs(self.forward, prompts, completions, device)
            loss, stats = grpo_loss(
                logp, old_logp, ref_logp, advantages, mask, clip_eps=cfg.grpo.clip_eps, kl_coef=cfg.grpo.kl_coef
            )
            loss.backward()
            grad_norm = clip_and_step(self.model, self.optimizer, cfg.optim.grad_clip)
        lengths = [len(c.token_ids) for c in completions]
        return {
            "loss": float(loss.detach()),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **breakdown,
            "kl": float(stats["kl"]),
            "clip_fraction": float(stats["clip_fraction"]),
            "response_len": sum(lengths) / len(lengths),
            "grad_norm": float(grad_norm),
            "lr": lr,
        }

    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        return evaluate_rlhf(
            self.engine, self.tokenizer, self.val, self.rules, self.rm,
            max_new_tokens=cfg.grpo.max_new_tokens, thinking=cfg.grpo.thinking,
        )  # fmt: skip

    def data_state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_data_state(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def build_grpo(cfg: TrainConfig, rt: Runtime, run_dir: Path, loaded: LoadedCheckpoint | None) -> GRPOStage:
    """GRPO from the --init checkpoint (or the resumed policy) against a frozen copy of --init."""
    rules = RewardSet(parse_reward_names(cfg.grpo.rewards))  # a typo fails before anything is loaded
    policy, cfg = load_policy(cfg, rt, loaded)
    rm = load_reward_model(cfg.grpo.reward_model, rt.device)[0] if cfg.grpo.reward_model else None
    train, val = prompt_sets(cfg)
    train = [r for r in train if len(prompt_ids(r, policy.tokenizer, cfg.grpo.thinking)) <= cfg.data.seq_len]
    if not train:
        raise DataError(f"no training prompt fits in --seq-len {cfg.data.seq_len}")
    logger.info("grpo: %d train / %d held-out prompts, rewards %s", len(train), len(val), ", ".join(rules.names))
    return GRPOStage(cfg, rt, policy, (train, val), (rules, rm))
