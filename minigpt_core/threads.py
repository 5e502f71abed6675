"""CPU thread policy shared by every command (`--threads`, as llama.cpp's `-t`).

What it is: one function that decides how many intra-op threads torch uses on the CPU and sets it, so that
`minigpt-train`, `minigpt-serve`, `minigpt-generate` and `minigpt-eval` behave alike.
What it is not: a process or device policy; GPU runs are unaffected apart from the host-side thread count.

Why a default other than torch's: torch starts one OpenMP thread per logical CPU. When any other work shares
those CPUs (the server's event loop, a second process, a busy desktop), spinning OpenMP workers wait on each
other and a small model's step becomes several times slower than with one thread (measured in docs/training.md,
"CPU threads"). Half the usable CPUs (at least one) leaves room for that other work and, on machines with
SMT, matches the physical cores, which is where torch's CPU kernels scale to.
"""

from __future__ import annotations

import os

import torch

from minigpt_core.errors import ConfigError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """`OMP_NUM_THREADS` when the user set it, else half the usable CPUs, at least one."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cpus() // 2)


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (`None` = `default_threads()`); returns the count in force."""
    if threads is None:
        threads = default_threads()
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
