"""Where a run executes: device and precision choice, torchrun/DDP detection, RNG state capture.

What it is: `Runtime` (rank, world size, device, autocast settings, and for float16 the loss scaler) built from
the environment that `torchrun` sets (WORLD_SIZE, RANK, LOCAL_RANK), with gloo on CPU and nccl on CUDA, plus small
collective helpers that are no-ops in a single process, and the RNG snapshot that goes into `trainer_state/`.
The device is resolved by `minigpt_core.resources.resolve_device`, the same check `minigpt-serve` makes.
What it is not: the training loop or any model code; no home-made distribution, only torch.distributed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from minigpt_core.errors import ConfigError
from minigpt_core.resources import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None  # None = plain fp32
    # float16 only: scales the loss so small gradients do not flush to zero; skips steps whose gradients overflow
    scaler: torch.amp.GradScaler | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few scalars over ranks (float64 on the wire)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (e.g. the time limit)."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (torch.cuda.current_device()))
        torch.cuda.set_device(dev)
    elif dev.type == "mps" and world > 1:
        raise ConfigError("multi-process training on mps is not supported; use cpu or cuda")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        device_id = dev if dev.type == "cuda" else None  # binds NCCL to this rank's GPU (and silences a warning)
        dist.init_process_group(backend=backend, rank=rank, world_size=world, device_id=device_id)
        logger.info("rank %d/%d joined the %s process group", rank, world, backend)
    autocast_dtype = _autocast_dtype(dev, dtype)
    scaler = torch.amp.GradScaler(dev.type) if autocast_dtype == torch.float16 else None
    return Runtime(dev, rank, local_rank, world, autocast_dtype, scaler)


def _autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--dtype bfloat16 is not supported by this GPU")
        return torch.bfloat16
    if dtype == "float16":  # for GPUs without bf16 (minimind's flag); works on CPU too, slowly
        return torch.float16
    if dtype != "auto":
        raise ConfigError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    # auto: bf16 autocast on CUDA where supported, fp32 elsewhere (CPU bf16 is slow and changes results).
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Plain tensors, ints and tuples only, so that `torch.load(weights_only=True)` reads it back."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
