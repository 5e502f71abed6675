"""GPU-only checks of the engine's CUDA path: captured decode graphs give the eager path's tokens."""

from __future__ import annotations

import pytest
import torch

from minigpt_core.config import ModelConfig
from minigpt_core.engine import Engine
from minigpt_core.model import MiniGPT
from minigpt_core.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def model_on_cuda(dtype: torch.dtype) -> MiniGPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, ffn_dim=256, max_seq_len=256)
    model = MiniGPT(cfg).to("cuda", dtype=dtype).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy ties are rare
        model.model.embed_tokens.weight.mul_(20)
    return model


def run(model: MiniGPT, graphs: bool, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    with Engine(model, max_num_seqs=8, max_model_len=256, cuda_graphs=graphs) as engine:
        streams = [engine.generate(p, params) for p in prompts]
        return [[ev.token_id for ev in s if ev.token_id is not None] for s in streams]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphs_match_eager(dtype: torch.dtype) -> None:
    model = model_on_cuda(dtype)
    prompts = [[10 + i, 20, 30 + 3 * i] * (i + 2) for i in range(6)]
    eager = run(model, False, prompts)
    graphed = run(model, True, prompts)
    assert all(len(t) == 24 for t in graphed)
    same = sum(a == b for a, b in zip(eager, graphed, strict=True))
    assert same == len(prompts) if dtype == torch.float32 else same >= len(prompts) - 1


def test_graphed_engine_matches_full_recompute_fp32() -> None:
    model = model_on_cuda(torch.float32)
    prompt = [11, 12, 13, 14, 15]
    (tokens,) = run(model, True, [prompt])
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            ids.append(int(model(torch.tensor([ids], device="cuda"))[0, -1].argmax()))
    assert tokens == ids[len(prompt) :]


def test_k_step_graphs_equal_one_step_graphs_and_prefill_is_batched() -> None:
    """K-step decode graphs give the one-step graphs' greedy tokens (fp32, fixed kv buckets), and a wave of
    prompts submitted together is prefilled by one captured forward: tokens equal a full recompute."""
    model = model_on_cuda(torch.float32)
    prompts = [[10 + i, 20, 30 + 3 * i] * (i + 2) for i in range(6)]
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    out = {}
    for k in (1, 8):
        with Engine(model, max_num_seqs=8, max_model_len=256, decode_steps=k) as engine:
            streams = [engine.generate(p, params) for p in prompts]
            out[k] = [[ev.token_id for ev in s if ev.token_id is not None] for s in streams]
            assert ("prefill", 8, 32, 32) in engine._scheduler.graphs  # type: ignore[operator]
    assert out[8] == out[1]
    for prompt, tokens in zip(prompts, out[8], strict=True):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(24):
                ids.append(int(model(torch.tensor([ids], device="cuda"))[0, -1].argmax()))
        assert tokens == ids[len(prompt) :]


def test_sampled_rows_in_graphs_follow_their_parameters() -> None:
    """In-graph sampling: top_k=1 is the argmax whatever the temperature; a banned argmax is never drawn."""
    model = model_on_cuda(torch.float32)
    prompt = [11, 12, 13, 14, 15]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16, ignore_eos=True)
    with Engine(model, max_num_seqs=4, max_model_len=256) as engine:
        (want,) = [[ev.token_id for ev in engine.generate(prompt, greedy) if ev.token_id is not None]]
        hot_k1 = SamplingParams(temperature=1.5, top_k=1, max_new_tokens=16, ignore_eos=True)
        got = [ev.token_id for ev in engine.generate(prompt, hot_k1) if ev.token_id is not None]
        banned = SamplingParams(temperature=1.0, max_new_tokens=16, ignore_eos=True, banned_token_ids=(want[0],))
        draws = [engine.generate(prompt, banned) for _ in range(4)]
        firsts = [next(iter(d)).token_id for d in draws]
    assert got == want
    assert want[0] not in firsts


def test_prefix_cache_on_the_graph_path_changes_no_token() -> None:
    """Cached prefixes on CUDA: the rest of the prompt runs through a later-chunk prefill graph (captured on
    first use); greedy tokens equal those with caching off."""
    model = model_on_cuda(torch.float32)
    prefix = [7 + (i * 13) % 400 for i in range(40)]
    prompts = [[*prefix, 21 + i, 22, 23] for i in range(3)]
    params = SamplingParams(temperature=0.0, max_new_tokens=16, ignore_eos=True)
    out = {}
    for caching in (True, False):
        with Engine(model, max_num_seqs=4, max_model_len=256, prefix_caching=caching) as engine:
            runs = [list(engine.generate(p, params)) for p in prompts]
        out[caching] = (
            [[ev.token_id for ev in r if ev.token_id is not None] for r in runs],
            [r[0].cached_tokens for r in runs],
        )
    assert out[True][0] == out[False][0]
    assert out[True][1] == [0, 32, 32] and out[False][1] == [0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 2, 128), (16, 4, 640), (6, 6, 240)])  # GQA/MHA; head_dim 32, 40, 40
def test_decode_attention_kernel_equals_the_reference_forward(dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
    """The fused kernel (RoPE + cache write + attention) gives the reference path's logits and cache contents:
    rows at different positions, one padding row parked past kv_len as the dense graphs park them."""
    import copy

    from minigpt_core import kernels
    from minigpt_core.kv_cache import KVCache

    if not kernels.available():
        pytest.skip("needs Triton")
    n_head, n_kv, d = shape
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_embd=d, n_head=n_head, n_kv_head=n_kv, ffn_dim=256, max_seq_len=256)
    model = MiniGPT(cfg).to("cuda", dtype=dtype).eval()
    model.fuse_projections()
    lens = [5, 130, 1, 64]
    cache = KVCache(cfg, len(lens), 256, "cuda", dtype)
    with torch.no_grad():
        for b, n in enumerate(lens):
            ids = torch.randint(9, 512, (1, n), device="cuda")
            pos = torch.arange(n, device="cuda")[None]
            model(ids, cache=cache, slots=torch.tensor([b], device="cuda"), positions=pos, kv_len=n)
        ids = torch.randint(9, 512, (len(lens), 1), device="cuda")
        positions = torch.tensor([[n] for n in lens[:-1]] + [[255]], device="cuda")  # last row: padding
        theirs = copy.deepcopy(cache)
        ref = model(ids, cache=theirs, positions=positions, kv_len=192)
        assert model.use_decode_kernel()
        try:
            out = model(ids, cache=cache, positions=positions, kv_len=192)
        finally:
            model.use_decode_kernel(False)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert (out[:-1] - ref[:-1]).abs().max().item() < tol * max(1.0, ref.abs().max().item())
    for mine, ref_cache in zip(cache.k + cache.v, theirs.k + theirs.v, strict=True):
        assert (mine.float() - ref_cache.float()).abs().max().item() < (1e-5 if dtype == torch.float32 else 2e-2)


def test_engine_with_the_decode_kernel_gives_the_reference_tokens() -> None:
    """Greedy tokens with the fused kernel equal those of the reference attention (fp32, graphs and K=8)."""
    model = model_on_cuda(torch.float32)
    prompts = [[10 + i, 20, 30 + 3 * i] * (i + 2) for i in range(6)]
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    out = {}
    for kernel in (False, True):
        with Engine(model, max_num_seqs=8, max_model_len=256, decode_kernel=kernel) as engine:
            assert engine._scheduler.decode_kernel is kernel
            streams = [engine.generate(p, params) for p in prompts]
            out[kernel] = [[ev.token_id for ev in s if ev.token_id is not None] for s in streams]
        model.use_decode_kernel(False)
    assert out[True] == out[False]
