"""minigpt_core.lora: the training wrapper, the adapter files, merging, and per-row adapters for serving.

The reference for an adapter is always the merged model (W + scaling * B @ A), computed independently here by
hand from the tensors, and checked against the wrappers' outputs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minigpt_core.config import ModelConfig
from minigpt_core.errors import ConfigError
from minigpt_core.kv_cache import KVCache
from minigpt_core.lora import (
    LoRAError,
    LoRAWeights,
    adapter_from_model,
    apply_lora,
    attach_adapters,
    merge_lora,
    read_adapter,
    save_adapter,
)
from minigpt_core.model import MiniGPT

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(vocab_size=96, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_dim=48, max_seq_len=64)


def base_model(seed: int = 0) -> MiniGPT:
    torch.manual_seed(seed)
    return MiniGPT(CONFIG).eval()


def random_adapter(seed: int, rank: int, targets: tuple[str, ...], alpha: float = 8.0) -> LoRAWeights:
    """Non-zero A and B for `targets` in every layer (B is zero only at the start of training)."""
    gen = torch.Generator().manual_seed(seed)
    model = base_model()
    modules = {}
    for i in range(CONFIG.n_layer):
        for t in targets:
            parent = "self_attn" if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            name = f"model.layers.{i}.{parent}.{t}"
            out_f, in_f = model.get_submodule(name).weight.shape
            a = torch.randn(rank, in_f, generator=gen) * 0.2
            b = torch.randn(out_f, rank, generator=gen) * 0.2
            modules[name] = (a, b)
    return LoRAWeights(rank=rank, alpha=alpha, scaling=alpha / rank, modules=modules)


def merged_by_hand(weights: LoRAWeights) -> MiniGPT:
    model = base_model()
    state = model.state_dict()
    for name, (a, b) in weights.modules.items():
        state[f"{name}.weight"] = state[f"{name}.weight"] + weights.scaling * (b @ a)
    model.load_state_dict(state)
    return model


IDS = torch.tensor([[3, 17, 40, 5, 9, 77, 12, 1], [8, 8, 60, 2, 31, 4, 90, 6], [50, 1, 2, 3, 4, 5, 6, 7]])


def test_training_wrapper_starts_as_the_base_and_trains_only_the_adapter() -> None:
    model = base_model()
    with torch.no_grad():
        before = model(IDS)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    params = apply_lora(model, rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    assert len(params) == 2 * 3 * CONFIG.n_layer
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"model.layers.{i}.{m}.lora_{ab}"
        for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
        for ab in "AB"
    }
    with torch.no_grad():
        assert torch.equal(model(IDS), before)  # B starts at zero
    opt = torch.optim.AdamW(params, lr=5e-2)
    losses = []
    for _ in range(20):
        logits = model(IDS[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG.vocab_size), IDS[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    for name, value in base_state.items():  # the base weights did not move
        assert torch.equal(model.state_dict()[name], value), name


def test_trained_adapter_equals_its_merge_and_round_trips_through_files(tmp_path: Path) -> None:
    model = base_model()
    apply_lora(model, rank=3, alpha=6, targets=("k_proj", "o_proj", "gate_proj", "up_proj"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
        wrapped = model(IDS)
    weights = adapter_from_model(model, base_model="some/base")
    assert weights.targets == ["k_proj", "o_proj", "gate_proj", "up_proj"] and weights.scaling == 2.0
    out = save_adapter(tmp_path / "adapter", weights)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 3 and config["lora_alpha"] == 6
    assert config["base_model_name_or_path"] == "some/base"
    keys = set(load_file(str(out / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight" in keys and len(keys) == 2 * 4 * 2
    back = read_adapter(out)
    with torch.no_grad():
        torch.testing.assert_close(merged_by_hand(back)(IDS), wrapped, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merge_lora(base_model(), back)(IDS), wrapped, atol=1e-5, rtol=1e-5)


def test_rows_of_one_batch_use_their_own_adapter() -> None:
    one = random_adapter(1, rank=4, targets=("q_proj", "v_proj"))
    two = random_adapter(2, rank=2, targets=("o_proj", "gate_proj", "down_proj"), alpha=3.0)
    model = base_model()
    with torch.no_grad():
        base = model(IDS)
    attach_adapters(model, [("one", one), ("two", two)], max_rows=4)
    assert model.lora_adapters.names == ["one", "two"] and model.lora_adapters.index_of("two") == 2
    with torch.no_grad():
        assert torch.equal(model(IDS), base)  # the buffer starts at zeros: every row is the base model
        model.lora_index[:3] = torch.tensor([2, 0, 1])
        mixed = model(IDS)
        want = [merged_by_hand(two)(IDS[:1]), base[1:2], merged_by_hand(one)(IDS[2:])]
    torch.testing.assert_close(mixed, torch.cat(want), atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed[1], base[1])  # index 0 adds an exact zero
    assert set(model.state_dict()) == set(base_model().state_dict())  # the stacks are not saved


def test_per_row_adapters_in_a_cached_decode_match_the_merged_models() -> None:
    one = random_adapter(3, rank=4, targets=("q_proj", "k_proj", "v_proj", "up_proj"))
    model = base_model()
    attach_adapters(model, [("one", one)], max_rows=2)
    model.lora_index[:2] = torch.tensor([1, 0])
    prompt, T = IDS[:2, :6], 6
    cache = KVCache(CONFIG, num_slots=2, max_seq_len=16)
    pos = torch.arange(T)[None].expand(2, T)
    with torch.no_grad():
        model(prompt, cache=cache, positions=pos)
        step = model(IDS[:2, 6:7], cache=cache, positions=torch.full((2, 1), T))  # (2, 1, V)
        full_adapter = merged_by_hand(one)(IDS[:1, :7])[:, -1]
        full_base = base_model()(IDS[1:2, :7])[:, -1]
    torch.testing.assert_close(step[:, 0], torch.cat([full_adapter, full_base]), atol=1e-5, rtol=1e-5)


def test_bad_adapters_are_refused_with_a_reason(tmp_path: Path) -> None:
    good = save_adapter(tmp_path / "good", random_adapter(4, rank=2, targets=("q_proj",)))
    with pytest.raises(LoRAError, match="not found"):
        read_adapter(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    save_file({"x": torch.zeros(1)}, str(bad / "adapter_model.safetensors"))
    with pytest.raises(LoRAError, match="not valid JSON"):
        read_adapter(bad)
    config = json.loads((good / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(LoRAError, match="use_dora"):
        read_adapter(bad)
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoRAError, match="unsupported tensor 'x'"):
        read_adapter(bad)
    # Trained on a wider base: the shapes do not fit this one.
    wide = {
        k: torch.zeros(2, 64) if "lora_A" in k else torch.zeros(32, 2)
        for k in load_file(str(good / "adapter_model.safetensors"))
    }
    save_file(wide, str(bad / "adapter_model.safetensors"))
    with pytest.raises(LoRAError, match="another base model"):
        attach_adapters(base_model(), [("wide", read_adapter(bad))], max_rows=1)
    with pytest.raises(ConfigError, match="unknown LoRA target"):
        apply_lora(base_model(), rank=2, targets=("q_proj", "lm_head"))
    model = base_model()
    apply_lora(model, rank=2)
    with pytest.raises(ConfigError, match="already carries"):
        apply_lora(model, rank=2)
    assert copy.deepcopy(read_adapter(good)).rank == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_row_adapters_replay_in_a_cuda_graph() -> None:
    """The serving forward is captured once; writing other indices into model.lora_index changes the replay."""
    one, two = random_adapter(5, 4, ("q_proj", "up_proj")), random_adapter(6, 2, ("v_proj", "down_proj"))
    model = base_model().cuda()
    attach_adapters(model, [("one", one), ("two", two)], max_rows=4)
    ids = IDS.cuda()
    with torch.no_grad():
        side = torch.cuda.Stream()  # warm-up on a side stream before capture, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model(ids)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(ids)
        for rows in ([0, 1, 2], [2, 2, 1], [1, 0, 0]):
            model.lora_index[:3].copy_(torch.tensor(rows))
            graph.replay()
            want = torch.cat(
                [
                    (base_model() if k == 0 else merged_by_hand((one, two)[k - 1])).cuda()(ids[b : b + 1])
                    for b, k in enumerate(rows)
                ]
            )
            torch.testing.assert_close(static_out, want, atol=1e-4, rtol=1e-4)
