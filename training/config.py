"""Training run settings: frozen, self-validating dataclasses in sections, plus the named presets per size and stage.

What it is: `TrainConfig` (every resolved setting of a run, written to `run_config.json`) with its sections
(`model`, `data`, `optim`, `schedule`, `runtime`, `dpo`, `reward`, `grpo`, `lora`); each field carries the help of
its `minigpt-train` flag (`setting`), so a new setting is one field. The flat namespace (`flat_names`, `from_flat`,
`to_flat`: one name per setting, e.g. `learning_rate`, `dpo_loss`) serves presets, overrides and the flat configs
that older versions wrote (`TrainConfig.from_dict` reads both). Also the presets `train_preset(config_name, mode)`.
What it is not: the model's shape (that is `minigpt_core.config.ModelConfig`, nested here) nor argument parsing
(`training.cli` derives the flags from these fields).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from minigpt_core.config import PRESETS, ModelConfig, preset
from minigpt_core.errors import ConfigError

Mode = Literal["pretrain", "sft", "dpo", "reward", "rlhf"]
MODES: tuple[Mode, ...] = get_args(Mode)
STAGE_MODES: tuple[str, ...] = ("dpo", "reward", "rlhf")  # the stages built on an --init checkpoint
DPO_LOSSES: tuple[str, ...] = ("sigmoid", "ipo")
REWARD_FEATURES: tuple[str, ...] = ("last", "last+loglik")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
REWARD_RULES = ("arithmetic", "tool", "think", "length")  # training.rule_rewards.RULES, named here to keep --help light
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")  # float16: autocast + loss scaling
PARAM_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DOC_MASKS: tuple[str, ...] = ("auto", "on", "off")


def setting(default: Any, help: str | None = None, *, flat: str | None = None, cli: bool = True, **flag: Any) -> Any:
    """A settings field with its `minigpt-train` flag (unless `cli=False`): `help` and `flag` (flag: the option
    name when it is not --flat-name, names: extra option strings, choices, metavar) describe it. `flat` is the
    field's name in the flat settings namespace (presets, overrides, the configs of older versions) when that is
    not the field name."""
    return field(default=default, metadata={"help": help, "flat": flat, "cli": cli, **flag})


def _positive_ints(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """What is trained on and how it is cut into rows."""

    path: str | None = setting(
        None, "JSONL file or folder; pretraining also reads plain .txt (default: the bundled corpus)", flat="data"
    )
    val_data: str | None = setting(
        None, "validation file or folder (default: *_val files beside --data, else 1 in 50)"
    )  # fmt: skip
    tokenizer: str | None = setting(None, "tokenizer.json or a folder holding one (default: the bundled tokenizer)")
    retrain_tokenizer: bool = setting(False, "train a new tokenizer on the training data")
    max_bad_fraction: float = setting(0.05, "fail when more data lines than this are bad")
    seq_len: int = setting(256)
    batch_size: int = setting(32, "rows per micro-batch per process")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    doc_mask: str = setting(
        "auto",
        "packed rows: a token attends only to its own document, whose positions restart at 0 (auto = on for sft, "
        "where whole conversations share a row; off for pretrain's token stream)",
        choices=DOC_MASKS,
    )

    def __post_init__(self) -> None:
        _positive_ints(self, "seq_len", "batch_size", "grad_accum")
        if self.doc_mask not in DOC_MASKS:
            raise ConfigError(f"doc_mask must be one of {', '.join(DOC_MASKS)}, got {self.doc_mask!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError("min_lr_ratio and max_bad_fraction must lie in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class OptimSettings:
    """AdamW and its learning-rate schedule (linear warmup, cosine decay to min_lr_ratio of the peak)."""

    learning_rate: float = setting(1e-3, "peak learning rate")
    min_lr_ratio: float = setting(0.1, cli=False)  # cosine decays to this fraction of the peak
    warmup_steps: int = setting(50)
    weight_decay: float = setting(0.1, "AdamW weight decay of matrices (default 0.1; norms get none)")
    beta1: float = setting(0.9, cli=False)
    beta2: float = setting(0.95, cli=False)
    grad_clip: float = setting(1.0, "clip the gradient norm to this (default 1.0; 0 = no clipping)")

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("min_lr_ratio and max_bad_fraction must lie in [0, 1]")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    """How long the run is and when it evaluates, logs and saves."""

    max_steps: int = setting(1000)
    epochs: float | None = setting(None, "passes over the training data (instead of --max-steps)")
    log_every: int = setting(10, "a metrics.jsonl row every N steps (default 10)")
    tensorboard: str | None = setting(
        None, "also write the metrics as TensorBoard events into DIR", metavar="DIR"
    )  # fmt: skip
    eval_every: int = setting(200, "validate every N steps")
    eval_batches: int = setting(20, "batches per validation")
    save_every: int = setting(500, "checkpoint every N steps")
    keep_last: int = setting(3, "checkpoints to keep (default 3)")
    time_limit_s: float | None = setting(
        None, "stop and save after this much time", flag="--time-limit", metavar="SECONDS"
    )  # fmt: skip

    def __post_init__(self) -> None:
        _positive_ints(self, "max_steps", "eval_every", "save_every")
        for name in ("eval_batches", "log_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError("time_limit_s must be positive")
        if self.epochs is not None and not (isinstance(self.epochs, int | float) and self.epochs > 0):
            raise ConfigError(f"epochs must be a positive number, got {self.epochs!r}")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """Where and how the run executes; `threads` is a property of the machine and is not resumed."""

    seed: int = setting(0)
    device: str = setting("auto", choices=DEVICES)
    dtype: str = setting(
        "auto",
        "auto = bf16 autocast on CUDA, fp32 elsewhere; float16 = fp16 autocast + loss scaling (no-bf16 GPUs)",
        choices=DTYPES,
    )
    compile: bool = setting(False, "torch.compile the model")
    compile_mode: str = setting(
        "default", "torch.compile mode with --compile (max-autotune: a slower first compile)", choices=COMPILE_MODES
    )
    param_dtype: str = setting(
        "float32",
        "bfloat16 = the forward and backward run on a bf16 copy of the weights, AdamW updates float32 master "
        "weights (which checkpoints hold); the loss curve differs from float32 by bf16 rounding",
        choices=PARAM_DTYPES,
    )
    fused_ce: bool = setting(False, "the loss over chunks of rows: never the whole batch's float32 logits at once")
    activation_checkpointing: bool = setting(
        False, "recompute each block's activations in backward: less memory, about a third more compute"
    )  # fmt: skip
    threads: int | None = setting(
        None, "CPU threads for torch (default: $OMP_NUM_THREADS, else half the usable CPUs)", names=("-t",)
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.param_dtype not in PARAM_DTYPES:
            raise ConfigError(f"param_dtype must be one of {', '.join(PARAM_DTYPES)}, got {self.param_dtype!r}")
        if self.param_dtype == "bfloat16" and self.dtype == "float16":
            raise ConfigError("--param-dtype bfloat16 cannot be combined with --dtype float16")


@dataclass(frozen=True, kw_only=True)
class DPOSettings:
    """DPO (and the pair batches of the reward model: --batch-size counts pairs)."""

    beta: float = setting(0.1, "DPO temperature beta (default 0.1)")
    loss: str = setting("sigmoid", "DPO loss (default sigmoid)", flat="dpo_loss", flag="--loss", choices=DPO_LOSSES)

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        if self.loss not in DPO_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(DPO_LOSSES)}, got {self.loss!r}")


@dataclass(frozen=True, kw_only=True)
class RewardSettings:
    """The reward model's score: head(last hidden state) [+ a learned weight x the response log-likelihood]."""

    features: str = setting(
        "last+loglik",
        "reward model score: a head on the last hidden state, plus (default) a learned weight times the "
        "response's log-likelihood under the model itself",
        flat="reward_features",
        choices=REWARD_FEATURES,
    )

    def __post_init__(self) -> None:
        if self.features not in REWARD_FEATURES:
            raise ConfigError(
                f"reward features must be one of {', '.join(REWARD_FEATURES)}, got {self.features!r}"
            )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class GRPOSettings:
    """RLHF with GRPO: --batch-size counts prompts per step, each sampled group_size times."""

    rewards: str = setting(
        "arithmetic",
        f"comma-separated rule rewards: {', '.join(REWARD_RULES)} (default arithmetic)",
        flag="--reward",
    )
    reward_model: str | None = setting(None, "a reward-model folder (--mode reward) whose score is added")
    group_size: int = setting(8, "samples per prompt (default 8)")
    kl_coef: float = setting(0.04, "weight of the KL penalty to the reference (default 0.04)")
    clip_eps: float = setting(0.2, "ratio clipping epsilon (default 0.2)")
    max_new_tokens: int = setting(64, "answer length limit of a rollout (default 64)")
    temperature: float = setting(1.0, "rollout sampling temperature (default 1.0)")
    thinking: bool = setting(False, "prompt with thinking on")
    epochs: int = setting(1, "optimizer steps per rollout batch (default 1)", flat="grpo_epochs")
    eval_data: str | None = setting(None, "held-out prompt JSONL (default: the bundled eval_think.jsonl)")
    eval_prompts: int = setting(64, "held-out prompts per evaluation (default 64)")

    def __post_init__(self) -> None:
        _positive_ints(self, "group_size", "max_new_tokens", "epochs", "eval_prompts")
        if self.kl_coef < 0 or not 0 < self.clip_eps < 1:
            raise ConfigError("kl_coef must be >= 0 and clip_eps in (0, 1)")
        if not 0 < self.temperature <= 2:
            raise ConfigError(f"temperature must be in (0, 2], got {self.temperature}")


@dataclass(frozen=True, kw_only=True)
class LoRASettings:
    """LoRA (SFT only): rank 0 = full fine-tuning; alpha None = the rank (scaling 1)."""

    rank: int = setting(0, "adapter rank; 0 = full fine-tuning (default)", flat="lora_rank", metavar="R")
    alpha: float | None = setting(
        None, "scaling alpha / rank (default alpha = rank)", flat="lora_alpha", metavar="A"
    )  # fmt: skip
    targets: str = setting(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "comma-separated projections (default all: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",
        flat="lora_targets",
        metavar="NAMES",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ConfigError(f"lora_rank must be a non-negative integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.alpha}")


# The sections of TrainConfig, each a group of `minigpt-train --help` (None: the main list).
SECTIONS: dict[str, tuple[type, str | None]] = {
    "data": (DataSettings, None),
    "optim": (OptimSettings, None),
    "schedule": (ScheduleSettings, None),
    "runtime": (RuntimeSettings, None),
    "dpo": (DPOSettings, "dpo / reward (batch size counts pairs)"),
    "reward": (RewardSettings, "dpo / reward (batch size counts pairs)"),
    "grpo": (GRPOSettings, "rlhf: GRPO (batch size counts prompts per step)"),
    "lora": (LoRASettings, "LoRA (with --mode sft --init BASE): train only adapter weights, saved in PEFT's layout"),
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a run needs besides the data itself, in sections; `to_dict()` is what lands in run_config.json."""

    mode: Mode
    config_name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    out_dir: str = setting("checkpoints/run", "run folder (default: checkpoints/<mode>_<config>/)", flag="--out")
    init: str | None = setting(
        None, "start from a checkpoint's weights and tokenizer (e.g. SFT from pretrain)"
    )  # fmt: skip
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    lora: LoRASettings = field(default_factory=LoRASettings)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"seq_len {self.data.seq_len} exceeds the model's max_seq_len {self.model.max_seq_len}"
            )  # fmt: skip
        rt = self.runtime
        if self.mode in STAGE_MODES:
            for name, value, why in (
                ("--dtype float16", rt.dtype == "float16", "use bfloat16 or float32"),
                ("--param-dtype bfloat16", rt.param_dtype != "float32", "the stages train float32 weights"),
                ("--fused-ce", rt.fused_ce, "their losses are per sequence"),
                ("--activation-checkpointing", rt.activation_checkpointing, "their rows are short"),
                ("--compile-mode", rt.compile_mode != "default", "--compile reaches pretrain and sft only"),
                ("--doc-mask on", self.data.doc_mask == "on", "their rows hold one sequence each"),
                ("--epochs", self.schedule.epochs is not None, "use --max-steps"),
                ("--tensorboard", self.schedule.tensorboard is not None, "metrics.jsonl has the same numbers"),
            ):
                if value:
                    raise ConfigError(f"{name} is supported for --mode pretrain and sft, not {self.mode}; {why}")
        if self.mode == "rlhf" and self.grpo.group_size < 2:
            raise ConfigError("group_size must be >= 2 (GRPO compares samples within a group)")
        if self.mode == "rlhf" and not self.grpo.reward_model and not self.grpo.rewards.strip():
            raise ConfigError("rlhf needs --reward RULES and/or --reward-model DIR")
        if rt.param_dtype != "float32" and self.lora.rank:
            raise ConfigError("--param-dtype bfloat16 is for full training; LoRA trains float32 adapters")
        if self.lora.rank and self.mode != "sft":
            raise ConfigError(f"LoRA (--lora-rank) trains with --mode sft only, not {self.mode}")
        if self.lora.rank:
            from minigpt_core.lora import parse_targets

            parse_targets(self.lora.targets)

    @property
    def tokens_per_step(self) -> int:
        """Per rank: rows x seq_len x accumulation."""
        return self.data.batch_size * self.data.seq_len * self.data.grad_accum

    @property
    def document_masked(self) -> bool:
        """Whether packed rows keep their documents apart (--doc-mask; auto: SFT only)."""
        return self.data.doc_mask == "on" or (self.data.doc_mask == "auto" and self.mode == "sft")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat settings changed (`cfg.replace(max_steps=3, model=...)`), sections rebuilt."""
        return from_flat({**to_flat(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved config: nested (this version) or flat (run_config.json / state.json of older versions)."""
        if not any(isinstance(data.get(name), dict) for name in SECTIONS):
            return from_flat(data)
        values = dict(data)
        values["model"] = model_config_from_dict(values.get("model", {}))
        for name, (section, _) in SECTIONS.items():
            values[name] = _build(section, values.get(name, {}), f"{name} settings")
        return _build(cls, values, "training settings")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the run config ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data)


def _build(cls: type, values: dict[str, Any], what: str) -> Any:
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid {what}: {exc}") from exc


def flat_names() -> dict[str, tuple[str | None, str]]:
    """Flat setting name -> (section or None for a top-level field, field name), from the dataclasses."""
    out: dict[str, tuple[str | None, str]] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SECTIONS:
            out[f.name] = (None, f.name)
    for section, (cls, _) in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f.metadata.get("flat") or f.name] = (section, f.name)
    return out


def to_flat(cfg: TrainConfig) -> dict[str, Any]:
    """The settings as one flat dict (the inverse of `from_flat`)."""
    out: dict[str, Any] = {}
    for flat, (section, name) in flat_names().items():
        out[flat] = getattr(cfg if section is None else getattr(cfg, section), name)
    return out


def from_flat(settings: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat settings (presets and overrides, configs written before the sections existed)."""
    names = flat_names()
    unknown = set(settings) - set(names)
    if unknown:
        raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for flat, value in settings.items():
        section, name = names[flat]
        (top if section is None else sections[section])[name] = value
    if isinstance(top.get("model"), dict):
        top["model"] = model_config_from_dict(top["model"])
    for name, (cls, _) in SECTIONS.items():
        top[name] = _build(cls, sections[name], f"{name} settings")
    return _build(TrainConfig, top, "training settings")


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    return _build(ModelConfig, data, "model settings")  # type: ignore[no-any-return]


# Per (size, stage) defaults. SFT uses a lower peak rate and longer rows (whole conversations).
_PRESET_TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "pretrain": {"seq_len": 256, "batch_size": 16, "learning_rate": 2e-3, "max_steps": 2000},
        "sft": {"seq_len": 1024, "batch_size": 4, "learning_rate": 1e-3, "max_steps": 1000},
        "dpo": {"seq_len": 768, "batch_size": 8, "learning_rate": 1e-4, "max_steps": 100, "eval_every": 25},
        "reward": {"seq_len": 768, "batch_size": 8, "learning_rate": 3e-4, "max_steps": 150, "eval_every": 50},
        "rlhf": {"seq_len": 512, "batch_size": 8, "learning_rate": 2e-5, "max_steps": 30, "eval_every": 10},
    },
    "small": {
        "pretrain": {"seq_len": 512, "batch_size": 32, "learning_rate": 1e-3, "max_steps": 5000},
        "sft": {"seq_len": 1024, "batch_size": 16, "learning_rate": 3e-4, "max_steps": 2000},
        "dpo": {"seq_len": 1024, "batch_size": 16, "learning_rate": 5e-5, "max_steps": 300, "eval_every": 50},
        "reward": {"seq_len": 1024, "batch_size": 16, "learning_rate": 1e-4, "max_steps": 300, "eval_every": 50},
        "rlhf": {"seq_len": 1024, "batch_size": 16, "learning_rate": 1e-5, "max_steps": 100, "eval_every": 20},
    },
    "medium": {
        "pretrain": {"seq_len": 1024, "batch_size": 16, "grad_accum": 4, "learning_rate": 6e-4, "max_steps": 20000},
        "sft": {"seq_len": 1024, "batch_size": 16, "grad_accum": 2, "learning_rate": 2e-4, "max_steps": 3000},
        "dpo": {"seq_len": 1024, "batch_size": 16, "learning_rate": 2e-5, "max_steps": 500, "eval_every": 100},
        "reward": {"seq_len": 1024, "batch_size": 16, "learning_rate": 5e-5, "max_steps": 500, "eval_every": 100},
        "rlhf": {"seq_len": 1024, "batch_size": 16, "learning_rate": 5e-6, "max_steps": 200, "eval_every": 50},
    },
}
_DEFAULT_WARMUP = 100


def train_preset(config_name: str, mode: str) -> dict[str, Any]:
    """The preset's training settings for `mode` (flat settings, see `from_flat`; model included).

    `config_name` is a preset name (tiny, small, medium) or a path to a JSON file of ModelConfig fields
    (optionally with a "base" preset name whose training settings it inherits).
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(config_name)
    if config_name not in PRESETS and path.suffix == ".json":
        model, base = _model_from_json(path)
    else:
        model, base = preset(config_name), config_name
    settings: dict[str, Any] = {"mode": mode, "config_name": config_name, "model": model}
    settings.update(_PRESET_TRAINING[base][mode])
    return settings


def _model_from_json(path: Path) -> tuple[ModelConfig, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the model config ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of model settings")
    base = str(data.pop("base", "tiny"))
    if base not in _PRESET_TRAINING:
        raise ConfigError(f"{path}: unknown base preset {base!r}")
    fields = dataclasses.asdict(preset(base))
    fields.update(data)
    return model_config_from_dict(fields), base


def resolve_config(settings: dict[str, Any]) -> TrainConfig:
    """Build the TrainConfig from merged flat settings, deriving warmup when it was not given explicitly."""
    values = dict(settings)
    if "warmup_steps" not in values:
        max_steps = int(values.get("max_steps", 1000))
        values["warmup_steps"] = min(_DEFAULT_WARMUP, max(1, max_steps // 10))
    if "seq_len" in values and "model" in values and values["seq_len"] > values["model"].max_seq_len:
        raise ConfigError(f"--seq-len {values['seq_len']} exceeds the model's max_seq_len")
    return from_flat(values)
