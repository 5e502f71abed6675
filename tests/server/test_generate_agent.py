"""The `minigpt-generate --tools` agent loop on a RANDOM-weight model: calls are forced (`--tool-choice required`),
grammar-constrained to the tool schemas, executed with the real registry and fed back as `tool` messages."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from minigpt_core.checkpoint import load_checkpoint, save_checkpoint
from minigpt_core.engine import Engine
from minigpt_core.model import MiniGPT
from minigpt_core.resources import DEMO_MODEL_DIR
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import TOOL_CALL_ID, Tokenizer
from server.generate_cli import Generator, agent_turn, run_chat, tool_registry
from server.generate_cli import main as generate_main
from tests.conftest import tiny_config
from tools.registry import default_registry

BUNDLED_TOKENIZER = Path(__file__).parents[2] / "minigpt_core" / "assets" / "tokenizer.json"
USER: list[dict[str, Any]] = [{"role": "user", "content": "how many words are in 'hello world'?"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tok = Tokenizer.from_file(BUNDLED_TOKENIZER)
    config = dataclasses.replace(tiny_config(tok.vocab_size), max_seq_len=1024)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "agent", MiniGPT(config), tok)


@pytest.fixture(scope="module")
def engine_and_tok(checkpoint: Path) -> Iterator[tuple[Engine, Tokenizer]]:
    model, tok = load_checkpoint(checkpoint, "cpu")
    with Engine(model, max_num_seqs=1, max_model_len=1024, output_vocab=tok.vocab_size) as engine:
        yield engine, tok


def make_gen(engine_and_tok: tuple[Engine, Tokenizer], tools: str, **bias: float) -> tuple[Generator, list[Any]]:
    """A Generator whose rounds are recorded (the messages each round was prompted with)."""
    engine, tok = engine_and_tok
    quote = tok.encode('"')[0]  # closing strings early keeps random-model arguments short
    logit_bias = ((quote, 15.0), *((int(k), v) for k, v in bias.items()))
    params = SamplingParams(max_new_tokens=60, temperature=0.0, logit_bias=logit_bias)
    gen = Generator(engine, tok, params, tool_registry(tools))
    prompts: list[Any] = []
    original = gen.answer

    def recording(messages: list[dict[str, Any]], thinking: bool, tool_choice: Any = "auto") -> Any:
        prompts.append((json.loads(json.dumps(messages)), tool_choice))
        return original(messages, thinking, tool_choice)

    gen.answer = recording  # type: ignore[method-assign]
    return gen, prompts


def test_forced_call_is_executed_and_fed_back(engine_and_tok: tuple[Engine, Tokenizer]) -> None:
    gen, prompts = make_gen(engine_and_tok, "text_stats")
    history: list[dict[str, Any]] = list(USER)
    out = io.StringIO()
    agent_turn(gen, history, False, out, first_choice="required", max_rounds=3)
    call_msg, tool_msg = history[1], history[2]
    call = call_msg["tool_calls"][0]
    assert call["id"].startswith("call_") and len(call["id"]) >= 21 and call["function"]["name"] == "text_stats"
    # the result in the history is exactly what the real tool returns for those arguments
    assert tool_msg == {
        "role": "tool",
        "tool_call_id": call["id"],
        "name": "text_stats",
        "content": default_registry().call("text_stats", call["function"]["arguments"]),
    }
    # ... and the next round was prompted with it (the model saw the result)
    assert prompts[0][1] == "required" and prompts[1][1] == "auto"
    assert prompts[1][0][-1] == tool_msg
    assert history[-1]["role"] == "assistant" and "tool_calls" not in history[-1]
    text = out.getvalue()
    assert "[tool call] text_stats(" in text and f"[tool result] {tool_msg['content']}" in text


def test_tool_errors_go_back_as_text_and_rounds_are_bounded(engine_and_tok: tuple[Engine, Tokenizer]) -> None:
    # pushed to call in every round: two rounds of calls, then a last round with calls banned
    gen, prompts = make_gen(engine_and_tok, "calculator", **{str(TOOL_CALL_ID): 100.0})
    history: list[dict[str, Any]] = list(USER)
    final = agent_turn(gen, history, False, io.StringIO(), first_choice="required", max_rounds=2)
    assert [choice for _, choice in prompts] == ["required", "auto", "none"]
    rounds = [m for m in history if m["role"] == "assistant" and "tool_calls" in m]
    assert len(rounds) == 2  # (several parallel calls per round are fine)
    results = [m for m in history if m["role"] == "tool"]
    assert len(results) == sum(len(m["tool_calls"]) for m in rounds) >= 2
    for tool_msg in results:
        assert tool_msg["content"].startswith("error: ")  # calculator("") is rejected, and the model is told so
    assert history[-1] == {"role": "assistant", "content": final}


def test_chat_mode_runs_the_loop_per_turn(engine_and_tok: tuple[Engine, Tokenizer]) -> None:
    gen, prompts = make_gen(engine_and_tok, "text_stats,calculator")
    out = io.StringIO()
    run_chat(gen, None, False, io.StringIO("count the words\nexit\n"), out, tool_choice="required")
    assert prompts[0][1] == "required" and "[tool call] " in out.getvalue() and "[tool result] " in out.getvalue()


def test_cli_flags(capsys: pytest.CaptureFixture[str]) -> None:
    # the bundled demo model: random weights may never close a string argument within the token budget
    args = ["--model-path", str(DEMO_MODEL_DIR), "--mode", "single", "--prompt", "What time is it in Asia/Tokyo?"]
    args += ["--temperature", "0", "--max-length", "40", "--device", "cpu"]
    assert generate_main([*args, "--tools", "current_time", "--tool-choice", "required", "--max-tool-rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "[tool call] current_time(" in out and "[tool result] " in out
    assert generate_main([*args, "--tools", "no_such_tool"]) == 2
    assert "no_such_tool" in capsys.readouterr().err
