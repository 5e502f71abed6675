"""Training run settings: one frozen, self-validating dataclass plus the named presets per model size and stage.

What it is: `TrainConfig` (every resolved setting of a run, written to `run_config.json`), the presets
`train_preset(config_name, mode)` and the JSON round trip used by `--resume`.
What it is not: the model's shape (that is `minigpt_core.config.ModelConfig`, nested here) nor argument parsing
(`training.cli` turns flags into overrides of a preset).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from minigpt_core.config import PRESETS, ModelConfig, preset
from minigpt_core.errors import ConfigError

Mode = Literal["pretrain", "sft", "dpo", "reward", "rlhf"]
MODES: tuple[str, ...] = ("pretrain", "sft", "dpo", "reward", "rlhf")
STAGE_MODES: tuple[str, ...] = ("dpo", "reward", "rlhf")  # single-process stages built on an --init checkpoint
UNIMPLEMENTED_MODES: tuple[str, ...] = ()
DPO_LOSSES: tuple[str, ...] = ("sigmoid", "ipo")
REWARD_FEATURES: tuple[str, ...] = ("last", "last+loglik")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")  # float16: autocast + loss scaling


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a run needs besides the data itself; `to_dict()` is what lands in run_config.json."""

    mode: str
    config_name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    # data and directories
    data: str | None = None
    val_data: str | None = None  # validation file or folder (default: *_val files beside the data, or a holdout)
    out_dir: str = "checkpoints/run"
    init: str | None = None
    tokenizer: str | None = None
    retrain_tokenizer: bool = False
    max_bad_fraction: float = 0.05
    # optimisation
    seq_len: int = 256
    batch_size: int = 32  # rows per micro-batch per rank
    grad_accum: int = 1
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    warmup_steps: int = 50
    max_steps: int = 1000
    epochs: float | None = None  # passes over the training data; sets max_steps once the data is loaded (loop.fit)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # bookkeeping
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    tensorboard: str | None = None  # also write the metrics.jsonl scalars as TensorBoard events into this folder
    time_limit_s: float | None = None  # stop (and save) once this much wall time has passed
    # runtime
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    threads: int | None = None  # CPU intra-op threads (None: minigpt_core.threads.default_threads); not resumed
    # preference stages (dpo, reward); batch_size counts pairs
    beta: float = 0.1
    dpo_loss: str = "sigmoid"
    reward_features: str = "last+loglik"  # reward model score: head(last hidden) [+ w * response log-likelihood]
    # rlhf (GRPO); batch_size counts prompts per step, each sampled group_size times
    rewards: str = "arithmetic"  # comma-separated rule names (training.rewards.RULES)
    reward_model: str | None = None
    group_size: int = 8
    kl_coef: float = 0.04
    clip_eps: float = 0.2
    max_new_tokens: int = 64
    temperature: float = 1.0
    thinking: bool = False
    grpo_epochs: int = 1
    eval_data: str | None = None
    eval_prompts: int = 64
    # LoRA (SFT only): rank 0 = full fine-tuning; alpha None = the rank (scaling 1); comma-separated targets
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_every", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_batches", "log_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1, got {self.keep_last}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError("min_lr_ratio and max_bad_fraction must lie in [0, 1]")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        if self.seq_len > self.model.max_seq_len:
            raise ConfigError(f"seq_len {self.seq_len} exceeds the model's max_seq_len {self.model.max_seq_len}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError("time_limit_s must be positive")
        if self.epochs is not None and not (isinstance(self.epochs, int | float) and self.epochs > 0):
            raise ConfigError(f"epochs must be a positive number, got {self.epochs!r}")
        if self.mode in STAGE_MODES:
            for name, value, why in (
                ("--dtype float16", self.dtype == "float16", "use bfloat16 or float32"),
                ("--epochs", self.epochs is not None, "use --max-steps"),
                ("--tensorboard", self.tensorboard is not None, "metrics.jsonl has the same numbers"),
            ):
                if value:
                    raise ConfigError(f"{name} is supported for --mode pretrain and sft, not {self.mode}; {why}")
        self._check_stage_settings()
        self._check_lora_settings()

    def _check_lora_settings(self) -> None:
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be a non-negative integer, got {self.lora_rank!r}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if self.lora_rank and self.mode != "sft":
            raise ConfigError(f"LoRA (--lora-rank) trains with --mode sft only, not {self.mode}")
        if self.lora_rank:
            from minigpt_core.lora import parse_targets

            parse_targets(self.lora_targets)

    def _check_stage_settings(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        if self.reward_features not in REWARD_FEATURES:
            raise ConfigError(
                f"reward features must be one of {', '.join(REWARD_FEATURES)}, got {self.reward_features!r}"
            )
        if self.dpo_loss not in DPO_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(DPO_LOSSES)}, got {self.dpo_loss!r}")
        for name in ("group_size", "max_new_tokens", "grpo_epochs", "eval_prompts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.mode == "rlhf" and self.group_size < 2:
            raise ConfigError("group_size must be >= 2 (GRPO compares samples within a group)")
        if self.kl_coef < 0 or not 0 < self.clip_eps < 1:
            raise ConfigError("kl_coef must be >= 0 and clip_eps in (0, 1)")
        if not 0 < self.temperature <= 2:
            raise ConfigError(f"temperature must be in (0, 2], got {self.temperature}")
        if self.mode == "rlhf" and not self.reward_model and not self.rewards.strip():
            raise ConfigError("rlhf needs --reward RULES and/or --reward-model DIR")

    @property
    def tokens_per_step(self) -> int:
        """Per rank: rows x seq_len x accumulation."""
        return self.batch_size * self.seq_len * self.grad_accum

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = dataclasses.asdict(self.model)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        values["model"] = model_config_from_dict(values.get("model", {}))
        return cls(**values)

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


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown model settings: {', '.join(sorted(unknown))}")
    try:
        return ModelConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"invalid model settings: {exc}") from exc


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
    """The preset's training settings for `mode` (a dict of TrainConfig fields, model included).

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
    """Build the TrainConfig from merged settings, deriving warmup when it was not given explicitly."""
    values = dict(settings)
    if "warmup_steps" not in values:
        max_steps = int(values.get("max_steps", 1000))
        values["warmup_steps"] = min(_DEFAULT_WARMUP, max(1, max_steps // 10))
    if "seq_len" in values and "model" in values and values["seq_len"] > values["model"].max_seq_len:
        raise ConfigError(f"--seq-len {values['seq_len']} exceeds the model's max_seq_len")
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid training settings: {exc}") from exc
