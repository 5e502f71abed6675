"""Server settings: one pydantic-settings model, read from `MINIGPT_*` environment variables and CLI flags.

This is the serving configuration only (where the model is, how many sequences run at once, limits, auth).
It is not the model's shape (`minigpt_core.config`) and not sampling defaults (`minigpt_core.sampling`).
`server.__main__` derives one flag per field (its type, its description as help) and turns the flags into a
`Settings`; nothing deeper than `create_app` sees argparse. Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from minigpt_core.resources import DEMO_MODEL_DIR


class Settings(BaseSettings):
    """Everything `create_app` needs. Every field can be set as `MINIGPT_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MINIGPT_", extra="ignore", frozen=True)

    model: Path | None = Field(default=None, description="checkpoint directory (default: the bundled demo model)")
    served_model_name: str | None = Field(
        default=None, description="the model id clients send as `model` (default: the checkpoint folder's name)"
    )
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="port")
    api_key: str | None = Field(
        default=None, description="require `Authorization: Bearer KEY` on every route but /health, /ready, /version"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(default="auto", description="where the model runs")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="weights and activations (auto: bfloat16 on CUDA, else float32)"
    )
    compile_decode: bool = Field(
        default=True,
        description="CUDA only: torch.compile the decode step before capturing it (2x faster steps, slower start)",
    )
    compile_decode_cpu: bool | None = Field(
        default=None,
        description="CPU: torch.compile the decode and prefill forwards (inductor C++). Default: built before serving "
        "when an earlier start left the kernels in the compile cache (~20 s), else served eagerly while a child "
        "process fills the cache for the next start (eager with LoRA adapters); true: built before serving; false: "
        "eager",
    )
    decode_steps: int | None = Field(
        default=None, ge=1, le=64, description="decode steps per engine call, K (default: 8)"
    )
    engine_process: bool | None = Field(
        default=None,
        description="run the engine in a process of its own, so the API's event loop and the engine do not share "
        "a GIL (default: on; inductor's compiled CPU kernels hold the GIL too)",
    )
    max_prefill_tokens: int = Field(
        default=8192, ge=16, description="prompt tokens prefilled together in one step (one batched forward)"
    )
    max_num_seqs: int = Field(default=8, ge=1, le=1024, description="sequences decoded at once (KV-cache slots)")
    max_model_len: int | None = Field(
        default=None, ge=16, description="context length per sequence (default: the model's max_seq_len)"
    )
    max_queued: int = Field(default=64, ge=1, description="waiting requests beyond which the server answers 429")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="request bodies above this get 413")
    default_max_tokens: int = Field(default=256, ge=1, description="completion budget when a request sets none")
    retry_after_s: int = Field(default=1, ge=0, description="seconds in the Retry-After header of a 429")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level (debug logs prompt text)"
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch (default: $OMP_NUM_THREADS, else half the usable CPUs)",
    )
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="CORS: comma-separated origins (scheme://host[:port]) whose web pages may call the API; '*' = any",
    )
    max_connections: int = Field(
        default=256, ge=1, description="open connections beyond which new requests get 503 (uvicorn's cap)"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="seconds within which a request body must arrive (else 408)"
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="seconds after which an idle keep-alive connection closes"
    )
    lora_modules: Annotated[tuple[tuple[str, Path], ...], NoDecode] = Field(
        default=(),
        description="LoRA adapters served beside the base model, NAME=PATH each (PEFT adapter directories); "
        "a request's `model` picks one",
    )
    chat_template: str | None = Field(
        default=None, description="a Jinja chat template file (or the template itself) in place of the built-in one"
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="after SIGTERM, seconds in-flight requests may run before the server exits anyway",
    )

    @field_validator("api_key", "served_model_name", "chat_template")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # `--allowed-origins a,b` and MINIGPT_ALLOWED_ORIGINS=a,b
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for origin in value:
            origin = origin.rstrip("/").lower()
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
                raise ValueError(f"{origin!r} is not an origin: give scheme://host[:port] (or '*')")
            out.append(origin)
        return tuple(out)

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _split_lora_modules(cls, value: Any) -> Any:
        if isinstance(value, str):  # MINIGPT_LORA_MODULES="a=/path/a b=/path/b" (space or comma separated)
            value = value.replace(",", " ").split()
        if not isinstance(value, list | tuple):
            return value
        out = []
        for item in value:
            if isinstance(item, str):
                name, sep, path = item.partition("=")
                if not sep or not name.strip() or not path.strip():
                    raise ValueError(f"{item!r} is not NAME=PATH")
                item = (name.strip(), path.strip())
            out.append(item)
        return tuple(out)

    @field_validator("lora_modules")
    @classmethod
    def _check_lora_modules(cls, value: tuple[tuple[str, Path], ...]) -> tuple[tuple[str, Path], ...]:
        names = [name for name, _ in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"the adapter name {name!r} is given twice")
        return value

    @model_validator(mode="after")
    def _adapter_names_differ_from_the_model(self) -> Settings:
        if any(name == self.model_name() for name, _ in self.lora_modules):
            raise ValueError(f"--lora-modules: the adapter name {self.model_name()!r} is the base model's name")
        return self

    def uvicorn_options(self) -> dict[str, Any]:
        """The keyword arguments for `uvicorn.run` / `uvicorn.Config` (besides the app)."""
        return {
            "host": self.host,
            "port": self.port,
            "log_level": self.log_level,
            "access_log": False,  # the gateway logs one line per request
            "limit_concurrency": self.max_connections,
            "timeout_keep_alive": self.keep_alive_timeout_s,
        }

    def resolved_model_dir(self) -> Path:
        """The checkpoint directory to load: `model`, or the demo model bundled with `minigpt_core`."""
        if self.model is not None:
            return self.model
        return DEMO_MODEL_DIR

    def model_name(self) -> str:
        """The id reported by /v1/models and accepted in requests."""
        if self.served_model_name:
            return self.served_model_name
        if self.model is None:
            return "minigpt-demo"
        return Path(self.model).resolve().name or "minigpt"
