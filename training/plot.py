"""The loss-curve PNG of a run folder (`minigpt-train plot RUN_DIR`, and at the end of every run).

What it is: reading `metrics.jsonl` and drawing training loss (and validation loss / bits-per-byte when present)
against the step with matplotlib's Agg backend into `RUN_DIR/loss.png`. matplotlib is the optional `plot` extra
(`pip install 'minigpt[plot]'`); without it the end-of-run plot is skipped with a warning and `minigpt-train plot`
stops with an error that names the extra.
What it is not: a dashboard; no live updates, no other metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from training.errors import TrainingError

logger = logging.getLogger(__name__)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise TrainingError(f"{path}: no metrics (is this a run folder?)")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s:%d: not JSON, skipped", path, lineno)
    return records


class PlotUnavailable(TrainingError):
    """matplotlib (the `plot` extra) is not installed."""


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("the loss plot needs matplotlib: pip install 'minigpt[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_after_run(run_dir: str | Path) -> None:
    """The loss plot at the end of a training run; without matplotlib (a bare GPU box) a warning, not a failure."""
    try:
        plot_run(run_dir)
    except PlotUnavailable as exc:
        logger.warning("no loss plot: %s", exc)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write the loss curve; returns its path, or None when there is nothing to plot."""
    records = read_metrics(run_dir) if (Path(run_dir) / "metrics.jsonl").is_file() else []
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    bpb = [(r["step"], r["val_bpb"]) for r in records if "val_bpb" in r]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.0)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if bpb:
        ax2 = ax.twinx()
        ax2.plot(*zip(*bpb, strict=True), "s--", color="tab:green", label="val bits/byte", markersize=3)
        ax2.set_ylabel("bits per byte")
        ax2.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title(Path(run_dir).resolve().name)
    fig.tight_layout()
    target = Path(out) if out is not None else Path(run_dir) / "loss.png"
    fig.savefig(target)
    plt.close(fig)
    return target
