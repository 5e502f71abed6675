"""What the engine, scheduler and prefix-cache tests share: a token budget, prompts, a naive greedy reference and
small ways to run an engine or a scheduler by hand. The fixtures (`model`, `engine`) are in tests/core/conftest.py."""

from __future__ import annotations

import asyncio

import torch

from minigpt_core.engine import Engine, RequestHandle, TokenEvent
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT
from minigpt_core.request import Request
from minigpt_core.sampling import RequestSampler, SamplingParams
from minigpt_core.scheduler import Scheduler

V = 256
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(9, V, (3 + (5 * i) % 23,), generator=g).tolist() for i in range(n)]


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [ev.token_id for ev in events if ev.token_id is not None]


def naive_greedy(model: MiniGPT, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids]))  # full recompute, no cache
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


async def collect(handle: RequestHandle) -> list[TokenEvent]:
    return [ev async for ev in handle]


def exact_engine(model: MiniGPT, **kw: object) -> Engine:
    """kv_len fixed at the slot size: every step has the same shapes whatever K is, so tokens compare exactly."""
    return Engine(model, max_num_seqs=8, max_model_len=128, kv_len_bucket=128, **kw)  # type: ignore[arg-type]


def run_all(engine: Engine, ps: list[list[int]], params: list[SamplingParams]) -> list[list[TokenEvent]]:
    async def go() -> list[list[TokenEvent]]:
        handles = [engine.submit(p, sp) for p, sp in zip(ps, params, strict=True)]
        return await asyncio.gather(*(collect(h) for h in handles))

    return asyncio.run(go())


def scheduler_for(model: MiniGPT, slots: int, **kw: object) -> tuple[Scheduler, dict[str, list[TokenEvent]]]:
    sched = Scheduler(
        model,
        KVCache(model.config, slots, 128),
        max_model_len=128,
        prefill_chunk=kw.pop("prefill_chunk", 64),  # type: ignore[arg-type]
        eos_token_ids=(),
        device=torch.device("cpu"),
        **kw,  # type: ignore[arg-type]
    )
    return sched, {}


def admit(
    sched: Scheduler, events: dict[str, list[TokenEvent]], name: str, prompt: list[int], sp: SamplingParams
) -> Request:
    emit = events.setdefault(name, []).append
    seq = Request(name, prompt, sp, RequestSampler(sp, prompt), None, emit, lambda: False)
    sched.admit(seq)
    return seq
