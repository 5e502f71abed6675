"""Tests for the compiled CPU forward (minigpt_core/cpu_compile.py) and the CPU serving defaults
(minigpt_core/resources.py): on a cold cache the engine serves eagerly at once while a child fills the cache; the
next start builds from it before serving, changes no greedy token and compiles nothing while serving; real tiny
models, real inductor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minigpt_core.cpu_compile import persistent_cache_dir
from minigpt_core.engine import Engine
from minigpt_core.model import MiniGPT
from minigpt_core.resources import cpu_has_bf16, cpu_serving_defaults
from minigpt_core.sampling import SamplingParams
from tests.core.engine_helpers import prompts, run_all, tokens_of


def test_persistent_cache_dir_prefers_the_users_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert persistent_cache_dir() == tmp_path / "xdg" / "minigpt" / "inductor"
    assert (tmp_path / "xdg" / "minigpt" / "inductor").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "minigpt" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch"))  # torch's own variable wins
    assert persistent_cache_dir() == tmp_path / "torch"


def test_cpu_serving_defaults_are_float32_and_the_background_build() -> None:
    """What `make serve` gets on the CPU (measured in docs/benchmarks.md): bf16 is not the default even on a CPU
    with AVX512-BF16, and the compiled forward is built while the eager one serves."""
    fast = cpu_serving_defaults()
    assert (fast.dtype, fast.compile_decode, fast.compile_background, fast.engine_process) == (
        "float32",
        True,
        True,
        True,
    )
    assert isinstance(cpu_has_bf16(), bool)


@pytest.mark.slow  # inductor compiles four graphs beside serving: minutes on a cold cache and a busy machine
@pytest.mark.timeout(1200)
def test_background_compile_serves_at_once_and_the_next_start_is_compiled_with_the_same_tokens(
    model: MiniGPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold cache: the engine serves eagerly at once while a child fills the cache, and never switches. The next
    engine finds the cache warm, builds before serving, and gives the eager greedy tokens without compiling again."""
    import torch._dynamo.utils as dynamo_utils

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    ps = [*prompts(6), [7]]  # a one-token prompt too (prefilled eagerly)
    params = [SamplingParams(temperature=0.0, max_new_tokens=48 - len(p), ignore_eos=True) for p in ps]
    with Engine(model, max_num_seqs=8, max_model_len=48, kv_len_bucket=16) as eager:
        expected = [tokens_of(r) for r in run_all(eager, ps, params)]
        alone = [tokens_of(r) for r in run_all(eager, ps[:1], params[:1])]
    opts = {"max_num_seqs": 8, "max_model_len": 48, "kv_len_bucket": 16, "compile_decode": True}
    with Engine(model, compile_background=True, **opts) as cold:  # type: ignore[arg-type]
        assert not cold.compiled_ready()  # serving starts at once, eagerly
        assert [tokens_of(r) for r in run_all(cold, ps[:1], params[:1])] == alone
        assert cold.wait_cache_warmed(1200)
        assert [tokens_of(r) for r in run_all(cold, ps[:1], params[:1])] == alone
        assert not cold.compiled_ready()  # no switch mid-serving
    with Engine(model, compile_background=True, **opts) as warm:  # type: ignore[arg-type]
        assert warm.compiled_ready()  # built before serving, from the warm cache
        assert not warm.wait_cache_warmed(0)  # nothing left to warm
        run_all(warm, ps[:1], params[:1])  # the step that takes the compiled forward
        assert warm._scheduler._fn is not model
        graphs = dynamo_utils.counters["stats"]["unique_graphs"]
        assert [tokens_of(r) for r in run_all(warm, ps, params)] == expected
        assert [tokens_of(r) for r in run_all(warm, ps[:1], params[:1])] == alone
        assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs  # nothing compiled while serving


def test_shutdown_stops_the_compiling_child(model: MiniGPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server stopped while its background child compiles leaves no compiler running (and no warm marker)."""
    import time

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    engine = Engine(model, max_num_seqs=2, max_model_len=32, compile_decode=True, compile_background=True)
    engine.start()
    warming = engine._warming
    assert warming is not None and not engine.compiled_ready()
    deadline = time.monotonic() + 30
    while warming._proc is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = warming._proc
    assert proc is not None and proc.poll() is None  # compiling (a cold cache takes minutes)
    engine.shutdown()
    assert proc.wait(timeout=30) != 0  # terminated, not finished
    assert not engine.wait_cache_warmed(30) and not warming.warm()
