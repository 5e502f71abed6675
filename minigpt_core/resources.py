"""What a run finds on this machine: the bundled assets (demo model, tokenizer), the device to compute on, and the
CPU server's fast defaults (`cpu_serving_defaults`).

Importing it does not import torch (`server.settings` and the CLIs' argument parsing stay light); only
`resolve_device()` does, when it is called. It is not checkpoint I/O (`minigpt_core.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from minigpt_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_MODEL_DIR = ASSETS_DIR / "demo"
BUNDLED_TOKENIZER = ASSETS_DIR / "tokenizer.json"


def resolve_device(name: str = "auto") -> torch.device:
    """auto → cuda, then mps, then cpu. The one device check of training and serving alike."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps:
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but CUDA is not available")
    if name == "mps" and not mps:
        raise ConfigError("--device mps was requested but MPS (Apple-silicon GPU) is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo's flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:  # not Linux: no claim
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class CpuServing:
    """How a CPU server runs when the user picks nothing: the compute dtype (the checkpoint on disk is unchanged),
    whether the decode and prefill forwards are compiled (inductor C++), and whether that build runs in the
    background while the eager forward already serves."""

    dtype: str  # "float32" or "bfloat16", as --dtype spells it
    compile_decode: bool
    compile_background: bool
    engine_process: bool  # the engine in a process of its own (the API's event loop then shares no GIL with it)


def cpu_serving_defaults() -> CpuServing:
    """The CPU server's fast settings, measured on a 2-core AMD EPYC (docs/benchmarks.md, issue 17): float32 and
    the compiled forward, built in the background.

    float32 even where `cpu_has_bf16()`: bfloat16 weights measured no faster eager (a step is bound by operator
    dispatch, not by the weights' bytes) and about 3x slower compiled (inductor's C++ kernels in bfloat16), with
    the same greedy tokens on 29 of 30 chat prompts. The build runs beside serving, so a server answers at once;
    where it fails (no C++ compiler) serving stays eager after a warning. The engine process: inductor's CPU
    kernels hold the GIL, so in the API's process the compiled forward measured no faster than eager over HTTP
    (153 against 167 tok/s at one stream), and 197-223 tok/s in a process of its own."""
    return CpuServing(dtype="float32", compile_decode=True, compile_background=True, engine_process=True)
