"""minigpt-serve flags -> Settings, the app loading its own model (health 503 -> 200), and minigpt-generate."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from server.__main__ import settings_from_args
from server.app import create_app
from server.generate_cli import Generator, run_chat
from server.generate_cli import main as generate_main
from server.settings import Settings
from tests.server.conftest import MODEL_NAME, LiveServer, serve_app


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINIGPT_PORT", "9001")
    monkeypatch.setenv("MINIGPT_API_KEY", "from-env")
    s = settings_from_args(["--model", str(tmp_path), "--max-num-seqs", "3", "--api-key", "flag"])
    assert (s.port, s.api_key, s.max_num_seqs, s.model) == (9001, "flag", 3, tmp_path)
    assert s.model_name() == tmp_path.name
    assert Settings().model_name() == "minigpt-demo"
    with pytest.raises(SystemExit):
        settings_from_args(["--max-num-seqs", "0"])


def test_model_as_positional_argument_and_threads_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`minigpt-serve MODEL`, as `vllm serve MODEL`; --model still works; giving two different ones is an error."""
    assert settings_from_args([str(tmp_path), "--port", "9"]).model == tmp_path
    assert settings_from_args(["--model", str(tmp_path), str(tmp_path)]).model == tmp_path
    with pytest.raises(SystemExit) as exc:
        settings_from_args(["--model", str(tmp_path), str(tmp_path / "other")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "minigpt-serve: error: the model is given twice (MODEL and --model); give one"
    ]
    monkeypatch.setenv("MINIGPT_THREADS", "3")
    assert settings_from_args([]).threads == 3
    assert settings_from_args(["--threads", "1"]).threads == 1


def test_app_loads_model_in_lifespan(tiny_checkpoint: Path) -> None:
    settings = Settings(model=tiny_checkpoint, served_model_name="t", max_model_len=128, max_num_seqs=2)
    app = create_app(settings)
    with serve_app(app, log_level="warning") as url, httpx.Client(base_url=url, timeout=30) as c:
        assert app.state.server.load_done.wait(20)
        assert c.get("/health").status_code == 200
        r = c.post(
            "/v1/chat/completions",
            json={"model": "t", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert c.get("/v1/models").json()["data"][0]["max_model_len"] == 128


def test_app_reports_missing_model(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = create_app(Settings(model=tmp_path / "nope"))
    with TestClient(app) as client:
        assert app.state.server.load_done.wait(10)
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error" and "nope" in r.json()["detail"]
        r = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """minigpt-generate sets torch's thread count for the whole process; put it back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("keep_threads")
def test_generate_single_and_batch(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", str(tiny_checkpoint), "--max-length", "4", "--temperature", "0"]
    assert generate_main([*args, "--mode", "single", "--prompt", "hello"]) == 0
    single = capsys.readouterr().out
    old_flag = ["--model-path", str(tiny_checkpoint), "--max-length", "4", "--temperature", "0"]
    assert generate_main([*old_flag, "--mode", "single", "--prompt", "hello"]) == 0  # the old name stays an alias
    assert capsys.readouterr().out == single
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n\nthe model\n", encoding="utf-8")
    assert generate_main([*args, "--mode", "batch", "--prompts-file", str(prompts)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["hello", "the model"]
    assert rows[0]["output"] + "\n" == single  # batch and single agree at temperature 0
    assert generate_main([*args, "--mode", "batch"]) == 2


def test_chat_keeps_history_and_think_prefix(tiny_checkpoint: Path) -> None:
    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.sampling import SamplingParams

    model, tokenizer = load_checkpoint(tiny_checkpoint, "cpu")
    with Engine(model, max_num_seqs=1, max_model_len=256) as engine:
        gen = Generator(engine, tokenizer, SamplingParams(max_new_tokens=3, temperature=0.0))
        seen: list[tuple[int, str, bool]] = []
        original = gen.answer

        def spy(messages: list[dict[str, object]], thinking: bool):  # type: ignore[no-untyped-def]
            seen.append((len(messages), str(messages[-1]["content"]), thinking))
            return original(messages, thinking)

        gen.answer = spy  # type: ignore[method-assign]
        out = io.StringIO()
        run_chat(gen, "be brief", False, io.StringIO("hello\nthink: why\nexit\n"), out)
    # system + user, then system + user + assistant + user, with the think: prefix switching thinking on
    assert seen == [(2, "hello", False), (4, "why", True)]
    assert out.getvalue().count("> ") == 3


@pytest.mark.usefixtures("keep_threads")
def test_generate_raw_continues_plain_text_like_completions(
    tiny_checkpoint: Path, live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--raw: no chat template, the prompt encoded as plain text, so greedy output equals /v1/completions'."""
    args = ["--model", str(tiny_checkpoint), "--max-length", "6", "--temperature", "0", "--mode", "single"]
    assert generate_main([*args, "--raw", "--prompt", "the model is"]) == 0
    raw = capsys.readouterr().out
    with live.client() as c:
        body = {"model": MODEL_NAME, "prompt": "the model is", "max_tokens": 6, "temperature": 0}
        expected = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert raw == expected + "\n"
    assert generate_main([*args, "--prompt", "the model is"]) == 0
    assert capsys.readouterr().out != raw  # the chat template makes a different prompt
    assert generate_main([*args, "--raw", "--tools", "calculator", "--prompt", "x"]) == 2
    assert "--raw" in capsys.readouterr().err


@pytest.mark.usefixtures("keep_threads")
def test_generate_threads_flag(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", str(tiny_checkpoint), "--max-length", "2", "--mode", "single", "--prompt", "hi"]
    torch.set_num_threads(2)
    assert generate_main([*args, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    assert generate_main([*args, "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["minigpt-generate: error: --threads must be at least 1, got 0"]
