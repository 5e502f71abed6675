"""Stopping a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`, `docker stop`).

What it is: `stop_on_signals()`, a context manager that, for the duration of a loop, turns the first SIGINT or
SIGTERM into a request (`StopRequest.signum`) that the loop checks after each step: it then finishes the step,
saves, writes the loss plot and raises `TrainingInterrupted`, which the CLI turns into exit code 128 + signal
(130 for SIGINT, 143 for SIGTERM) as a shell would report for a process killed by that signal. A second signal
stops at once without saving (KeyboardInterrupt; the atomic save leaves the previous checkpoints intact).
What it is not: the loop (training.loop, training.stage) nor the exit-code mapping (training.cli). Handlers can
only be installed from the main thread; elsewhere (a loop run in a worker thread) signals keep their default.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from training.errors import TrainingError

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(TrainingError):
    """A signal stopped the run after a checkpoint was saved; exit with 128 + the signal number."""

    def __init__(self, signum: int, step: int, saved: Path | None, resumable: bool) -> None:
        name = signal.Signals(signum).name
        where = f"saved {saved}" if saved is not None else "nothing was saved"
        hint = f"; continue with --resume {saved.parent.parent}" if resumable and saved is not None else ""
        super().__init__(f"stopped by {name} at step {step}: {where}{hint}")
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Set by the first SIGINT/SIGTERM; a loop reads `signum` between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now, without saving
        self.signum = signum
        logger.warning(
            "%s received: finishing this step and saving a checkpoint (send it again to stop at once without saving)",
            signal.Signals(signum).name,
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the SIGINT/SIGTERM handlers of a `StopRequest` for the duration of the block, then restore them."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop.handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
