"""Models, health, metrics, tokenize/detokenize, legacy completions, and disconnect handling (live uvicorn)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

import httpx
import openai

from tests.server.conftest import MODEL_NAME, LiveServer


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing"
    return float(match.group(1))


def test_models_and_health(live: LiveServer) -> None:
    with live.client() as c:
        assert c.get("/health").json()["status"] == "ok"
        data = c.get("/v1/models").json()
        assert data["object"] == "list" and [m["id"] for m in data["data"]] == [MODEL_NAME]
        card = c.get(f"/v1/models/{MODEL_NAME}").json()
        assert card["object"] == "model" and card["max_model_len"] == 512
    sdk = openai.OpenAI(base_url=live.base_url, api_key="x", max_retries=0)
    assert [m.id for m in sdk.models.list()] == [MODEL_NAME]


def test_tokenize_roundtrip(live: LiveServer) -> None:
    with live.client() as c:
        tok = c.post("/tokenize", json={"prompt": "hello world 你好"}).json()
        assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 512
        assert c.post("/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == "hello world 你好"
        chat = c.post("/tokenize", json={"messages": [{"role": "user", "content": "hello"}]}).json()
        assert chat["tokens"][0] == 1  # <|im_start|>


def test_completions(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/completions",
            json={
                "model": MODEL_NAME,
                "prompt": ["hello", "the model"],
                "max_tokens": 4,
                "temperature": 0,
                "echo": True,
                "logprobs": 2,
                "ignore_eos": True,
            },
        )
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        assert [ch["index"] for ch in body["choices"]] == [0, 1]
        assert body["choices"][0]["text"].startswith("hello") and body["choices"][1]["text"].startswith("the model")
        lp = body["choices"][0]["logprobs"]
        assert len(lp["tokens"]) == 4 and all(len(t) <= 2 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 5
        assert body["usage"]["completion_tokens"] == 8
        s = c.post(
            "/v1/completions",
            json={
                "model": MODEL_NAME,
                "prompt": "hello",
                "max_tokens": 4,
                "temperature": 0,
                "stream": True,
                "ignore_eos": True,
            },
        )
        events = [json.loads(b[6:]) for b in s.content.split(b"\n\n")[:-2]]
        assert s.content.endswith(b"data: [DONE]\n\n")
        text = "".join(e["choices"][0]["text"] for e in events)
        assert "hello" + text == body["choices"][0]["text"]
    sdk = openai.OpenAI(base_url=live.base_url, api_key="x", max_retries=0)
    res = sdk.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=3, temperature=0)
    assert res.choices[0].finish_reason in ("stop", "length")


def test_metrics_exposition(live: LiveServer) -> None:
    with live.client() as c:
        c.post(
            "/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
        )
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "minigpt_generation_tokens_total") >= 1 and metric(text, "minigpt_prompt_tokens_total") >= 1
    assert metric(text, "minigpt_kv_cache_tokens_total") == 4 * 512
    assert metric(text, "minigpt_time_to_first_token_seconds_count") >= 1
    assert 'minigpt_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert '_bucket{le="+Inf"}' in text


def _running(live: LiveServer, client: Any) -> float:
    return metric(client.get("/metrics").text, "minigpt_num_requests_running")


def test_abandoned_streams_are_cancelled(live: LiveServer) -> None:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
    }
    before = live.engine.stats().generation_tokens_total
    with live.client() as c:
        for _ in range(100):
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                next(r.iter_raw())  # the first chunk, then hang up
        deadline = time.monotonic() + 5
        while _running(live, c) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(live, c) == 0
        assert metric(c.get("/metrics").text, "minigpt_num_requests_waiting") == 0
        # had they run to the end, 100 x 200 tokens would have been generated
        assert live.engine.stats().generation_tokens_total - before < 100 * 200 / 4
        start = time.monotonic()
        r2 = c.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5})
        assert r2.status_code == 200 and time.monotonic() - start < 5


def test_non_stream_disconnect_cancels(live: LiveServer) -> None:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "go"}], "max_tokens": 480, "ignore_eos": True}
    before = live.engine.stats().generation_tokens_total
    with httpx.Client(base_url=live.url, timeout=0.3) as c, contextlib.suppress(httpx.TimeoutException):
        c.post("/v1/chat/completions", json=body)
    with live.client() as c:
        deadline = time.monotonic() + 5
        while _running(live, c) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(live, c) == 0
    assert live.engine.stats().generation_tokens_total - before < 400
