"""The compiled CPU forward: inductor's C++ kernels for the engine's decode and prefill calls, built off the hot path.

What it is: `CompiledForward` wraps `torch.compile(model, dynamic=True)` and runs the throw-away calls that make it
compile every shape family the CPU engine uses: decode (one row, then several; one token each) and a single
prompt's prefill (one row, two or more tokens, with `last_index`), on a private twin of the engine's KV cache. `build()`
does that now, in this process. `prepare_in_background()` has a child process (`python -m
minigpt_core.cpu_compile`, a model of the same config with random weights: inductor's cache keys hold shapes and
code, not weights) compile the same graphs into the on-disk cache while the engine serves eagerly, and mark the
cache (`warm()`), so that the next start's `build()` finds every kernel there. `persistent_cache_dir()` puts that
cache under the user's cache directory: a build takes ~100 s cold and ~15-20 s warm on a 2-core EPYC. The engine
never switches mid-serving: the warm build holds the engine thread those ~20 s, and a request that arrived then
waited them out (measured: 19.7 s for a 15-token answer).

Why a child process and not a thread: compiling traces the model with torch.fx, which patches
`torch.nn.Module.__call__` for the whole process while it runs, so an eager forward on another thread fails
("module is not installed as a submodule"); and tracing holds the GIL the eager step needs after every operator.
The engine thread runs the in-process `build()` itself, while no request is running (engine.py).

What it is not: no scheduling; the scheduler decides when to call which forward. CUDA does not use it (there the
compiled step is captured as a CUDA graph at startup, see scheduler.py).

Why the shapes it warms: with `dynamic=True` one graph serves every size >= 2 of a dimension, but the sizes 0 and
1 are specialised, so a single stream's decode (1 row), a single prompt's prefill (1 row) and several rows are
separate graphs. A one-token prompt chunk would be yet another one, and several prompts' prefill compiled with
two rows still compiled again on seven, so the scheduler prefills those eagerly: the compiled prefill is for the
first token of a lone request (TTFT), where its ~1.6x counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from minigpt_core.config import ModelConfig
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT

logger = logging.getLogger(__name__)

_CHILD_NICENESS = 10  # the compiling child yields the CPU to the serving process

__all__ = ["CompiledForward", "persistent_cache_dir"]


def persistent_cache_dir() -> Path:
    """Inductor's on-disk cache under the user's cache directory ($XDG_CACHE_HOME/minigpt/inductor, else
    ~/.cache/minigpt/inductor), set as TORCHINDUCTOR_CACHE_DIR unless the user set that already. torch's default
    is a directory under /tmp, which a reboot empties."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "minigpt" / "inductor"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only home: keep torch's default
        logger.warning("compile cache %s is not writable (%s); using torch's default", path, exc)
        return Path(os.environ.get("TMPDIR", "/tmp"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


class CompiledForward:
    """`torch.compile(model, dynamic=True)`, warmed for the CPU engine's call shapes.

    `cache`: the engine's KV cache (the build runs on a twin of it); `kv_len`: a KV length the engine's steps read;
    `threads`: torch's intra-op thread count, which inductor bakes into its kernels (a background thread would
    otherwise compile for its own default)."""

    def __init__(self, model: MiniGPT, *, cache: KVCache, kv_len: int, threads: int) -> None:
        self.model, self.kv_len, self.threads = model, kv_len, threads
        self.num_slots, self.cache_len = cache.num_slots, cache.max_seq_len
        # A compiled graph checks whether its tensors are inference tensors (made under inference_mode): the
        # scheduler's cache and decode buffers are whatever the engine's constructor made, its prefill inputs are
        # made on the engine thread, which runs in inference mode. The build makes its tensors alike.
        self._inference_buffers = cache.k[0].is_inference()
        persistent_cache_dir()
        self._compiled: Callable[..., torch.Tensor] = torch.compile(model, dynamic=True)
        self._ready = threading.Event()  # build() ended
        self._failed = False
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None  # the compiling child process
        self._stopped = False
        self.seconds: float | None = None  # how long the build took

    def ready(self) -> bool:
        return self._ready.is_set() and not self._failed

    @property
    def fn(self) -> Callable[..., torch.Tensor]:
        assert self.ready(), "CompiledForward.fn before the build finished"
        return self._compiled

    def spec(self) -> dict[str, Any]:
        """What the compiled graphs depend on (the child process rebuilds a model of this shape from it)."""
        return {
            "config": self.model.config.to_hf_dict(),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "fused": any(getattr(m, "qkv_weight", None) is not None for m in self.model.modules()),
            "num_slots": self.num_slots,
            "cache_len": self.cache_len,
            "kv_len": self.kv_len,
            "threads": self.threads,
            "inference_buffers": self._inference_buffers,
        }

    def marker(self) -> Path:
        """A file in the compile cache that says every graph of this spec was built there, by this torch."""
        key = json.dumps([self.spec(), torch.__version__], sort_keys=True)
        return persistent_cache_dir() / f"minigpt-ready-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def warm(self) -> bool:
        """Whether an earlier build (a child's or this process's) left every kernel in the on-disk cache."""
        return self.marker().exists()

    def prepare_in_background(self, on_prepared: Callable[[], None]) -> None:
        """Compile in a child process (a watcher thread waits for it), then call `on_prepared`. A failed child is
        logged. The child leaves the kernels and `marker()` in the on-disk cache."""
        spec = self.spec()

        def watch() -> None:
            t0 = time.perf_counter()
            try:
                # stderr to a file, not a pipe: helper processes the compiler starts may outlive the child and hold
                # a pipe open, and waiting for its end would never return.
                with tempfile.TemporaryFile() as err:
                    self._proc = subprocess.Popen(
                        [sys.executable, "-m", "minigpt_core.cpu_compile"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"},  # one C++ compiler at a time
                        preexec_fn=_die_with_parent,
                    )
                    self._proc.communicate(json.dumps(spec).encode())
                    err.seek(0)
                    tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
                done = self._proc
                if self._stopped:
                    logger.info("stopped the child process compiling the CPU forward")
                elif done.returncode != 0:
                    logger.warning("compiling the CPU forward in a child process failed: %s", " | ".join(tail))
                else:
                    logger.info("CPU forward compiled in a child process in %.1f s", time.perf_counter() - t0)
            except OSError as exc:
                logger.warning("could not start the compiling child process: %s", exc)
            finally:
                on_prepared()

        self._thread = threading.Thread(target=watch, name="minigpt-compile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the compiling child process, if one runs (the server is shutting down: a half-filled cache is
        simply not marked warm)."""
        self._stopped = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def build(self) -> None:
        """Compile every shape family now (blocking). A failure is logged and leaves `ready()` False."""
        t0 = time.perf_counter()
        try:
            torch.set_num_threads(self.threads)
            with torch.inference_mode(self._inference_buffers):
                param = next(self.model.parameters())
                cache = KVCache(self.model.config, self.num_slots, self.cache_len, param.device, param.dtype)
                decode = torch.zeros((3, self.num_slots), dtype=torch.long, device=param.device)
                slots = torch.arange(self.num_slots, dtype=torch.long, device=param.device)
            with torch.inference_mode():  # as the engine thread calls it, or serving would compile again
                self._warm(cache, decode, slots)
            self.seconds = time.perf_counter() - t0
            logger.info("compiled CPU forward ready after %.1f s", self.seconds)
            self._mark()
        except Exception as exc:  # a compiler failure must not take the server down: it stays eager
            self._failed = True
            logger.warning("torch.compile of the CPU forward failed (%s); serving stays eager", exc)
        finally:
            self._ready.set()

    def _mark(self) -> None:
        marker = self.marker()
        try:
            tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.spec()) + "\n")
            os.replace(tmp, marker)
        except OSError as exc:  # a read-only cache: the next start compiles again in the background
            logger.warning("could not mark the compile cache %s: %s", marker.parent, exc)

    def _warm(self, cache: KVCache, decode: torch.Tensor, slots: torch.Tensor) -> None:
        """Decode inputs are laid out as the scheduler's (views of one (3, n) buffer), prefill's as its eager
        prefill makes them (rows of a (2, b, t) tensor; a (2, b) row tensor): strides are part of what a compiled
        graph checks."""
        n, device = self.num_slots, decode.device
        for rows in sorted({1, min(2, n)}):
            ids, positions = decode[0].view(n, 1)[:rows], decode[1].view(n, 1)[:rows]
            self._compiled(ids, cache=cache, slots=slots[:rows], positions=positions, kv_len=self.kv_len)
        t = min(3, self.kv_len)  # any length >= 2 gives the same graph
        if t < 2:
            return
        tokens = torch.tensor([[list(range(t))], [list(range(t))]], dtype=torch.long, device=device)  # (2, 1, t)
        row_t = torch.tensor([[0], [t - 1]], dtype=torch.long, device=device)  # slot, last index
        self._compiled(
            tokens[0], cache=cache, slots=row_t[0], positions=tokens[1], kv_len=self.kv_len, last_index=row_t[1]
        )


def _die_with_parent() -> None:
    """In the compiling child before exec (Linux): SIGTERM when the process that started it ends, so a killed server
    leaves no compiler behind. Elsewhere a no-op: `stop()` still ends it on a clean shutdown."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _main() -> int:
    """The child process of `prepare_in_background`: a JSON spec on stdin; exit status 0 when every graph built."""
    spec = json.loads(sys.stdin.read())
    os.nice(_CHILD_NICENESS)  # the server's eager steps first; the compilers it starts inherit this
    torch.manual_seed(0)
    model = MiniGPT(ModelConfig.from_hf_dict(spec["config"])).to(getattr(torch, spec["dtype"])).eval()
    if spec["fused"]:
        model.fuse_projections()
    with torch.inference_mode(spec["inference_buffers"]):
        cache = KVCache(model.config, spec["num_slots"], spec["cache_len"], "cpu", getattr(torch, spec["dtype"]))
    compiled = CompiledForward(model, cache=cache, kv_len=spec["kv_len"], threads=spec["threads"])
    compiled.build()
    return 0 if compiled.ready() else 1


if __name__ == "__main__":
    sys.exit(_main())
