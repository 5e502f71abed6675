"""What a run finds on this machine: the bundled assets (demo model, tokenizer) and the device to compute on.

Importing it does not import torch (`server.settings` and the CLIs' argument parsing stay light); only
`resolve_device()` does, when it is called. It is not checkpoint I/O (`minigpt_core.checkpoint`).
"""

from __future__ import annotations

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
