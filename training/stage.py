"""Model setup every stage shares: the starting weights, the frozen reference, the DDP wrapper.

What it is: `load_init` (the weights a stage trains: the resumed checkpoint's, else the --init checkpoint's, else
a fresh seeded model when the stage allows it), `load_reference` (a frozen copy of the --init checkpoint: on a
resume it is read again from --init, not copied from the resumed policy), `frozen_copy`, `load_policy` and
`PolicyStage` (the base of DPO and GRPO) and `distribute` (wrap the module the step calls in DDP under torchrun, and in
torch.compile for --compile).
What it is not: a loop (training.loop), run building (training.pipeline) or any stage's loss.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.model import MiniGPT
from minigpt_core.resources import BUNDLED_TOKENIZER
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.errors import TrainingError
from training.loop import Stage, build_optimizer
from training.runtime import Runtime, seed_everything
from training.state import LoadedCheckpoint


def load_init(
    cfg: TrainConfig, loaded: LoadedCheckpoint | None, *, required: bool
) -> tuple[MiniGPT, Tokenizer, TrainConfig]:
    """The model (in train mode) and tokenizer a stage starts from, and the config with the model's real shape;
    then every RNG is seeded with the run's seed."""
    if loaded is not None:
        model, tokenizer = loaded.model, loaded.tokenizer
        cfg = cfg.replace(model=model.config)
    elif cfg.init:
        model, tokenizer = load_checkpoint(cfg.init)
        cfg = cfg.replace(model=model.config, seq_len=min(cfg.data.seq_len, model.config.max_seq_len))
    elif required:
        raise TrainingError(f"--mode {cfg.mode} needs --init <checkpoint folder> (e.g. an SFT run)")
    else:
        tok_path = Path(cfg.data.tokenizer) if cfg.data.tokenizer else BUNDLED_TOKENIZER
        tokenizer = Tokenizer.from_dir(tok_path) if tok_path.is_dir() else Tokenizer.from_file(tok_path)
        if tokenizer.vocab_size != cfg.model.vocab_size:
            cfg = cfg.replace(model=cfg.model.replace(vocab_size=tokenizer.vocab_size))
        seed_everything(cfg.runtime.seed)
        model = MiniGPT(cfg.model)
    model.train()
    seed_everything(cfg.runtime.seed)
    return model, tokenizer, cfg


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A detached copy in eval mode with no gradients: the reference policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def load_reference(cfg: TrainConfig, policy: MiniGPT, resumed: bool) -> torch.nn.Module:
    """The frozen reference: the --init weights (a copy of the policy at the start, read from --init on a resume)."""
    if not resumed or not cfg.init:
        return frozen_copy(policy)
    reference, _ = load_checkpoint(cfg.init)
    return frozen_copy(reference.to(next(policy.parameters()).device))


@dataclass
class Policy:
    """The trained policy (on the run's device), its frozen reference and their tokenizer."""

    model: MiniGPT
    reference: torch.nn.Module
    tokenizer: Tokenizer


def load_policy(cfg: TrainConfig, rt: Runtime, loaded: LoadedCheckpoint | None) -> tuple[Policy, TrainConfig]:
    """The policy of DPO and GRPO (--init, or the resumed checkpoint) and the reference (always --init)."""
    model, tokenizer, cfg = load_init(cfg, loaded, required=True)
    model.to(rt.device)
    return Policy(model, load_reference(cfg, model, resumed=loaded is not None), tokenizer), cfg


class PolicyStage(Stage):
    """A stage that trains a policy against a frozen reference (DPO, GRPO): the shared fields and optimizer."""

    model: MiniGPT

    def __init__(self, cfg: TrainConfig, rt: Runtime, policy: Policy) -> None:
        self.cfg, self.rt, self.model, self.tokenizer = cfg, rt, policy.model, policy.tokenizer
        self.reference = policy.reference
        self.optimizer = build_optimizer(policy.model, cfg, rt.device)
        self.forward = distribute(policy.model, rt)  # what the gradient-bearing forward passes call


def distribute(
    module: torch.nn.Module,
    rt: Runtime,
    *,
    compile: bool = False,
    compile_mode: str = "default",
    find_unused_parameters: bool = False,
) -> torch.nn.Module:
    """What the training step calls: `module`, DDP-wrapped under torchrun, and compiled when asked (--compile
    reaches the pretrain/SFT step only: the other stages' rows change length every step) in `compile_mode`."""
    forward = module
    if rt.distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        forward = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if compile:
        forward = torch.compile(forward, mode=None if compile_mode == "default" else compile_mode)  # type: ignore[assignment]
    return forward
