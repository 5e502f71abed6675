"""`minigpt-serve --lora-modules NAME=PATH ...`: adapters listed in /v1/models (with `parent`, as vLLM), selected by
`model`, requests for different adapters and the base in one batch, and the one-line startup errors.

The server here loads the checkpoint and the adapters itself (the lifespan path of `minigpt-serve`). The reference
for an adapter is the merged checkpoint (base + scaling * B @ A) decoded greedily by hand, outside the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.lora import LoRAWeights, merge_lora, save_adapter
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import NUM_SPECIAL, Tokenizer
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import _free_port, serve_app

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = "tiny"
TARGETS = {"one": ("q_proj", "v_proj"), "two": ("o_proj", "gate_proj", "down_proj")}
PROMPTS = ([5, 40, 41, 42, 7, 99], [13, 250, 60, 61, 300, 17, 8])
MAX_TOKENS = 8
NO_SPECIALS = {str(i): -100 for i in range(NUM_SPECIAL)}  # no EOS, no tags: the text is the plain decode


def random_adapter(model: MiniGPT, seed: int, targets: tuple[str, ...], rank: int = 4) -> LoRAWeights:
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            out_f, in_f = module.weight.shape
            modules[name] = (
                torch.randn(rank, in_f, generator=gen) * 0.3,
                torch.randn(out_f, rank, generator=gen) * 0.3,
            )
    return LoRAWeights(rank=rank, alpha=2.0 * rank, scaling=2.0, modules=modules)


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoRAWeights]:
    model, _ = load_checkpoint(tiny_checkpoint)
    return {name: random_adapter(model, seed, targets) for seed, (name, targets) in enumerate(TARGETS.items(), 1)}


@pytest.fixture(scope="module")
def adapter_dirs(adapters: dict[str, LoRAWeights], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: save_adapter(root / name, weights) for name, weights in adapters.items()}


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app as minigpt-serve builds it (it loads its own model) behind uvicorn; the URL once the model is up."""
    app = create_app(settings)
    with serve_app(app, log_level="warning") as url:
        state = app.state.server
        if not state.load_done.wait(60) or state.load_error:
            raise RuntimeError(f"the server did not come up: {state.load_error}")
        yield url


@pytest.fixture(scope="module")
def lora_server(tiny_checkpoint: Path, adapter_dirs: dict[str, Path]) -> Iterator[str]:
    settings = Settings(
        model=tiny_checkpoint,
        served_model_name=BASE,
        lora_modules=tuple(adapter_dirs.items()),
        device="cpu",
        max_num_seqs=4,
    )
    with serving(settings) as url:
        yield url


def reference_text(checkpoint: Path, adapter: LoRAWeights | None, prompt: list[int]) -> str:
    """Greedy text of the merged checkpoint (no special tokens, as the request's logit_bias asks)."""
    model, tokenizer = load_checkpoint(checkpoint)
    if adapter is not None:
        merge_lora(model, adapter)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            logits = model(ids)[0, -1]
            logits[:NUM_SPECIAL] = float("-inf")
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return Tokenizer.decode(tokenizer, ids[0, len(prompt) :].tolist())


async def _complete(client: openai.AsyncOpenAI, model: str, prompt: list[int]) -> tuple[str, str]:
    out = await client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, logit_bias=NO_SPECIALS
    )
    return out.model, out.choices[0].text


def test_models_lists_each_adapter_with_its_parent(lora_server: str, adapter_dirs: dict[str, Path]) -> None:
    client = openai.OpenAI(base_url=lora_server + "/v1", api_key="none")
    cards = {m.id: m for m in client.models.list().data}
    assert list(cards) == [BASE, "one", "two"]
    for name, path in adapter_dirs.items():
        extra = cards[name].model_extra or {}
        assert extra["parent"] == BASE and extra["root"] == str(path)
        assert (client.models.retrieve(name).model_extra or {})["parent"] == BASE
    assert "parent" not in (cards[BASE].model_extra or {})
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="three", prompt="hi", max_tokens=1)
    assert err.value.code == "model_not_found" and "`one`" in str(err.value.message)


def test_the_base_model_answers_as_without_adapters(lora_server: str, tiny_checkpoint: Path) -> None:
    async def run() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(base_url=lora_server + "/v1", api_key="none") as client:
            return await asyncio.gather(*(_complete(client, BASE, p) for p in PROMPTS))

    results = asyncio.run(run())
    assert results == [(BASE, reference_text(tiny_checkpoint, None, p)) for p in PROMPTS]


def test_adapters_and_base_share_a_batch_and_equal_the_merged_checkpoints(
    lora_server: str, tiny_checkpoint: Path, adapters: dict[str, LoRAWeights]
) -> None:
    jobs = [(model, p) for p in PROMPTS for model in (BASE, "one", "two")]

    async def run() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(base_url=lora_server + "/v1", api_key="none", max_retries=0) as client:
            return await asyncio.gather(*(_complete(client, model, p) for model, p in jobs))

    want = [(model, reference_text(tiny_checkpoint, adapters.get(model), p)) for model, p in jobs]
    assert len({text for _, text in want}) == len(want)  # the adapters change the answers
    assert asyncio.run(run()) == want


def _serve(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "server", "--port", str(_free_port()), "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_missing_adapter_directory_is_a_one_line_usage_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = _serve([str(tiny_checkpoint), "--lora-modules", f"ok={tmp_path}", "bad"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minigpt-serve: error: --lora-modules: ") and "'bad'" in lines[0]
    proc = _serve([str(tiny_checkpoint), "--lora-modules", f"ok={tmp_path}"])
    assert proc.returncode == 2 and "not a LoRA adapter directory" in proc.stderr.strip().splitlines()[-1]


def test_an_adapter_for_another_base_model_stops_the_server(
    tiny_checkpoint: Path, adapters: dict[str, LoRAWeights], tmp_path: Path
) -> None:
    one = adapters["one"]
    wider = {name: (torch.zeros(4, 2 * a.shape[1]), b) for name, (a, b) in one.modules.items()}
    path = save_adapter(tmp_path / "wide", LoRAWeights(rank=4, alpha=8.0, scaling=2.0, modules=wider))
    proc = _serve([str(tiny_checkpoint), "--lora-modules", f"wide={path}"])
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("minigpt-serve: error: model failed to load: adapter 'wide': "), proc.stderr
    assert "another base model" in last
