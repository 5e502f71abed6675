"""LoRA adapters for MiniGPT: training one adapter, serving several at once, merging, and PEFT's file layout.

What it is: wrappers that replace a block's `nn.Linear` projections (q/k/v/o_proj, gate/up/down_proj) without
touching model.py, the adapter directory as HF PEFT writes it, and a merge into the base weights.

- Training (`apply_lora`): each target holds the frozen base weight plus a trainable A (r, in) and B (out, r),
  B zero at the start, so the wrapped model starts equal to the base; y = W x + (alpha / r) * B A x.
- Serving (`attach_adapters`): each target holds every adapter stacked, [n_adapters + 1, ...], index 0 the
  all-zero "no adapter", the alpha / r scale folded into B. Row b of a batch uses adapter `model.lora_index[b]`,
  a long buffer of `max_rows` entries on the model's device that the engine fills before each forward. The
  forward is a gather and two batched matmuls: no host sync, no data-dependent branch, fixed shapes, so it can be
  captured in a CUDA graph.
- Files: `adapter_config.json` + `adapter_model.safetensors`, tensors named as PEFT names them on top of the HF
  Llama checkpoint (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, A (r, in), B (out, r)).

The wrappers keep the base projection's `weight` parameter under its own name, so the model's state dict keeps
HF names (`...q_proj.weight`); the serving stacks are non-persistent buffers (a saved checkpoint stays the base).
What it is not: DoRA, biases on adapters, embedding adapters or `modules_to_save` (such adapters are refused).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from minigpt_core.checkpoint import read_json_object, write_dir_atomically
from minigpt_core.errors import CheckpointError, ConfigError
from minigpt_core.model import MiniGPT

# The projections an adapter may target, and the block submodule that holds each (HF Llama names).
TARGET_PARENTS: dict[str, str] = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
ALL_TARGETS: tuple[str, ...] = tuple(TARGET_PARENTS)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's LoraModel wraps LlamaForCausalLM as `base_model.model`
_KEY_RE = re.compile(r"base_model\.model\.(model\.layers\.\d+\.(?:self_attn|mlp)\.(\w+))\.lora_([AB])\.weight")


class LoRAError(CheckpointError):
    """An adapter directory is missing, malformed, unsupported or does not fit the base model."""


def parse_targets(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"q_proj,v_proj"` (or a list) -> the target names, checked; ConfigError names an unknown one."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ConfigError(f"no LoRA target modules given; choose from {', '.join(ALL_TARGETS)}")
    for name in names:
        if name not in TARGET_PARENTS:
            raise ConfigError(f"unknown LoRA target module {name!r}; choose from {', '.join(ALL_TARGETS)}")
    return tuple(dict.fromkeys(names))


def _target_linears(model: MiniGPT, targets: Sequence[str]) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """(full module name, parent module, attribute, current module) for every target projection."""
    out = []
    for i, block in enumerate(model.model.layers):
        for name in targets:
            parent = getattr(block, TARGET_PARENTS[name])
            out.append((f"model.layers.{i}.{TARGET_PARENTS[name]}.{name}", parent, name, getattr(parent, name)))
    return out


def _weight_of(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _base_weight(module: nn.Module, where: str) -> nn.Parameter:
    if isinstance(module, LoRALinear | MultiLoRALinear):
        raise ConfigError(f"{where} already carries LoRA adapters")
    if not isinstance(module, nn.Linear) or module.bias is not None:
        raise ConfigError(f"{where} is not a bias-free nn.Linear")
    return module.weight


# ----- training: one trainable adapter -----


class LoRALinear(nn.Module):
    """y = x W^T + scaling * (x A^T) B^T with W frozen; A (r, in) Kaiming-uniform like nn.Linear, B (out, r) zero."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.weight = linear.weight
        self.weight.requires_grad_(False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = linear.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


def apply_lora(
    model: MiniGPT, *, rank: int, alpha: float | None = None, targets: Sequence[str] = ALL_TARGETS
) -> list[nn.Parameter]:
    """Freeze every base parameter and wrap the targets for training; returns the adapter parameters.

    `alpha` defaults to `rank` (scaling 1).
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not alpha > 0:
        raise ConfigError(f"LoRA alpha must be positive, got {alpha}")
    found = _target_linears(model, parse_targets(targets))
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for full, parent, attr, module in found:
        _base_weight(module, full)
        wrapper = LoRALinear(module, rank, alpha)  # type: ignore[arg-type]
        setattr(parent, attr, wrapper)
        params += [wrapper.lora_A, wrapper.lora_B]
    return params


# ----- the adapter as data (files <-> tensors) -----


@dataclass
class LoRAWeights:
    """One adapter: for each wrapped module (our name, e.g. `model.layers.0.self_attn.q_proj`) its A and B."""

    rank: int
    alpha: float
    scaling: float
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A (r, in), B (out, r))
    base_model: str | None = None

    @property
    def targets(self) -> list[str]:
        return sorted({name.rsplit(".", 1)[1] for name in self.modules}, key=ALL_TARGETS.index)


def adapter_from_model(model: MiniGPT, base_model: str | None = None) -> LoRAWeights:
    """The trained adapter of a model wrapped by `apply_lora` (tensors detached, on the CPU)."""
    modules = {
        name: (m.lora_A.detach().cpu(), m.lora_B.detach().cpu())
        for name, m in model.named_modules()
        if isinstance(m, LoRALinear)
    }
    if not modules:
        raise ConfigError("the model carries no trainable LoRA adapter")
    first = next(m for m in model.modules() if isinstance(m, LoRALinear))
    return LoRAWeights(first.rank, first.alpha, first.scaling, modules, base_model)


def write_adapter_files(out_dir: Path, weights: LoRAWeights) -> None:
    """adapter_config.json + adapter_model.safetensors into an existing directory (not atomic: see save_adapter)."""
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": weights.base_model,
        "r": weights.rank,
        "lora_alpha": weights.alpha,
        "lora_dropout": 0.0,
        "target_modules": weights.targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b) in weights.modules.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def save_adapter(out_dir: str | Path, weights: LoRAWeights) -> Path:
    """Atomically (re)write an adapter directory: built beside the target, then renamed into place."""
    return write_dir_atomically(out_dir, lambda tmp: write_adapter_files(tmp, weights))


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json_object(path, LoRAError)
    if config.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"{path}: peft_type is {config.get('peft_type')!r}, only LORA adapters are supported")
    unsupported = [
        key
        for key, off in (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"), ("modules_to_save", None))
        if config.get(key, off) not in (off, [], {})
    ]
    unsupported += [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    if unsupported:
        raise LoRAError(f"{path}: unsupported adapter settings: {', '.join(unsupported)}")
    return config


def read_adapter(path: str | Path) -> LoRAWeights:
    """Read a PEFT LoRA adapter directory (tensors as float32 on the CPU); LoRAError says what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise LoRAError(f"{root}: adapter directory not found")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise LoRAError(f"{root / name}: missing (not a PEFT LoRA adapter directory?)")
    config = _read_config(root / CONFIG_FILE)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise LoRAError(f"{root / CONFIG_FILE}: 'r' must be a positive integer, got {rank!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0:
        raise LoRAError(f"{root / CONFIG_FILE}: 'lora_alpha' must be a positive number, got {alpha!r}")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(str(root / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LoRAError(f"{root / WEIGHTS_FILE}: cannot read safetensors ({exc})") from exc
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY_RE.fullmatch(key)
        if m is None or m.group(2) not in TARGET_PARENTS:
            raise LoRAError(f"{root / WEIGHTS_FILE}: unsupported tensor {key!r} (only LoRA A/B of the projections)")
        parts.setdefault(m.group(1), {})[m.group(3)] = tensor.float()
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise LoRAError(f"{root / WEIGHTS_FILE}: {name} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise LoRAError(f"{root / WEIGHTS_FILE}: {name}: A {tuple(a.shape)} and B {tuple(b.shape)} do not chain")
        modules[name] = (a, b)
    if not modules:
        raise LoRAError(f"{root / WEIGHTS_FILE}: holds no LoRA tensors")
    base = config.get("base_model_name_or_path")
    return LoRAWeights(rank, float(alpha), float(scaling), modules, base if isinstance(base, str) else None)


def check_compatible(weights: LoRAWeights, model: MiniGPT, where: str = "adapter") -> None:
    """Every adapted module exists in `model` with A (r, in) and B (out, r) of its shape; LoRAError otherwise."""
    linears = {full: mod for full, _, _, mod in _target_linears(model, ALL_TARGETS)}
    for name, (a, b) in weights.modules.items():
        if name not in linears:
            raise LoRAError(f"{where}: adapts {name}, which the base model ({model.config.n_layer} layers) lacks")
        out_f, in_f = _weight_of(linears[name]).shape
        if a.shape[1] != in_f or b.shape[0] != out_f:
            raise LoRAError(
                f"{where}: {name} expects A (r, {in_f}) and B ({out_f}, r), the adapter has "
                f"{tuple(a.shape)} and {tuple(b.shape)} (trained on another base model?)"
            )


def merge_lora(model: MiniGPT, weights: LoRAWeights) -> MiniGPT:
    """W += scaling * B @ A for every adapted module, in place (computed in float32); returns the model."""
    check_compatible(weights, model)
    linears = {full: mod for full, _, _, mod in _target_linears(model, ALL_TARGETS)}
    with torch.no_grad():
        for name, (a, b) in weights.modules.items():
            w = _weight_of(linears[name])
            delta = (b.float() @ a.float()) * weights.scaling
            w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
    return model


# ----- serving: several adapters, chosen per row -----


class AdapterSet:
    """The adapters a serving model carries: names in index order (index 0 = no adapter) and the row buffer.

    `model.lora_index` (a long buffer of `max_rows` entries, zeros = base model) is what the wrappers read; the
    engine writes each row's adapter index into `model.lora_index[:B]` in place before a forward.
    """

    def __init__(self, model: MiniGPT, names: Sequence[str], max_rows: int) -> None:
        self._model = model
        self.names = list(names)
        self.max_rows = max_rows

    @property
    def index(self) -> torch.Tensor:
        # Looked up at each forward (a dict read): `model.to(...)` replaces the buffer object.
        return self._model._buffers["lora_index"]  # type: ignore[return-value]

    def index_of(self, name: str) -> int:
        """1-based index of an adapter name (0 is the base model); KeyError when unknown."""
        return self.names.index(name) + 1


class MultiLoRALinear(nn.Module):
    """y = x W^T + (x A[i]^T) B[i]^T for row b with i = lora_index[b]; A/B stacked with index 0 all zero."""

    def __init__(self, linear: nn.Linear, a_stack: torch.Tensor, b_stack: torch.Tensor, adapters: AdapterSet) -> None:
        super().__init__()
        self.weight = linear.weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.lora_A: torch.Tensor
        self.lora_B: torch.Tensor
        self.register_buffer("lora_A", a_stack, persistent=False)  # (n_adapters + 1, r_max, in)
        self.register_buffer("lora_B", b_stack, persistent=False)  # (n_adapters + 1, out, r_max), scale folded in
        self.adapters = adapters  # a plain object, not a submodule: read at each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.adapters.index[: x.shape[0]]  # (B,)
        h = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, in)
        h = torch.bmm(h, self.lora_A[rows].transpose(1, 2))  # (B, T, r_max)
        h = torch.bmm(h, self.lora_B[rows].transpose(1, 2))  # (B, T, out)
        return F.linear(x, self.weight) + h.view(*x.shape[:-1], self.out_features)


def attach_adapters(model: MiniGPT, adapters: Sequence[tuple[str, LoRAWeights]], *, max_rows: int) -> AdapterSet:
    """Wrap every projection any adapter targets so that rows choose their adapter; returns the AdapterSet.

    Adapter k (1-based, in the given order) is index k in `model.lora_index`; ranks may differ (zero padded).
    The stacks take the dtype and device of the base weights.
    """
    if max_rows < 1:
        raise ConfigError(f"max_rows must be positive, got {max_rows}")
    for name, weights in adapters:
        check_compatible(weights, model, f"adapter {name!r}")
    names = [name for name, _ in adapters]
    if len(set(names)) != len(names):
        raise ConfigError(f"adapter names must be unique, got {names}")
    device = model.model.embed_tokens.weight.device
    model.register_buffer("lora_index", torch.zeros(max_rows, dtype=torch.long, device=device), persistent=False)
    adapter_set = AdapterSet(model, names, max_rows)
    r_max = max(w.rank for _, w in adapters) if adapters else 1
    for full, parent, attr, module in _target_linears(model, ALL_TARGETS):
        if not any(full in w.modules for _, w in adapters):
            continue
        weight = _base_weight(module, full)
        a_stack = torch.zeros(len(adapters) + 1, r_max, weight.shape[1], dtype=torch.float32)
        b_stack = torch.zeros(len(adapters) + 1, weight.shape[0], r_max, dtype=torch.float32)
        for k, (_, w) in enumerate(adapters, start=1):
            if full in w.modules:
                a, b = w.modules[full]
                a_stack[k, : a.shape[0]] = a
                b_stack[k, :, : b.shape[1]] = b * w.scaling
        a_stack, b_stack = (s.to(device=weight.device, dtype=weight.dtype) for s in (a_stack, b_stack))
        setattr(parent, attr, MultiLoRALinear(module, a_stack, b_stack, adapter_set))  # type: ignore[arg-type]
    model.__dict__["lora_adapters"] = adapter_set  # a plain attribute (nn.Module's setattr wants tensors/modules)
    return adapter_set
