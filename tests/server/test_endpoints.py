"""Models, health, metrics, tokenize/detokenize, legacy completions, and disconnect handling (live uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai

from minigpt_core.output_parser import Content, Finished, OutputParser
from minigpt_core.tokenizer import IM_END_ID, NUM_SPECIAL, THINK_ID, TOOL_CALL_END_ID
from server.generation import ChoiceDelta, TokenLogprob
from server.streaming import ResponseMeta, completion_response, completion_stream
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
        assert live.engine.wait_idle(5)
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
    assert live.engine.wait_idle(5)
    with live.client() as c:
        assert _running(live, c) == 0
    assert live.engine.stats().generation_tokens_total - before < 400


TAGS = {IM_END_ID: "<|im_end|>", THINK_ID: "<think>", TOOL_CALL_END_ID: "</tool_call>"}


def check_logprobs_match_text(choice: dict[str, Any], echo: str) -> list[str]:
    """tokens join to the text after the echo, and text_offset[i] is where token i's text starts in `text`."""
    text, lp = choice["text"], choice["logprobs"]
    assert text.startswith(echo)
    tokens = lp["tokens"]
    assert "".join(tokens) == text[len(echo) :]
    assert lp["text_offset"] == [len(echo) + len("".join(tokens[:i])) for i in range(len(tokens))]
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(tokens)
    return list(tokens)


def test_completion_logprobs_agree_with_text_around_special_tokens(live: LiveServer) -> None:
    """Tags the model writes are not text: their tokens are "" in logprobs, offsets stay inside the text."""
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "prompt": ["hello", "the model"],
        "max_tokens": 40,
        "temperature": 1.0,
        "seed": 1,  # with this seed each choice samples every one of the three tags
        "logprobs": 3,
        "ignore_eos": True,  # <|im_end|> is generated and the request goes on
        "logit_bias": {str(t): 4.5 for t in TAGS},
    }
    with live.client() as c:
        for echo in (False, True):
            full = c.post("/v1/completions", json=body | {"echo": echo}).json()
            for k, choice in enumerate(full["choices"]):
                prompt = body["prompt"][k] if echo else ""
                tokens = check_logprobs_match_text(choice, prompt)
                assert len(tokens) == 40
                lp = choice["logprobs"]
                for tag in TAGS.values():  # sampled (the token's logprob is the tag's), it is "" and not in the text
                    at = [i for i, top in enumerate(lp["top_logprobs"]) if top.get(tag) == lp["token_logprobs"][i]]
                    assert at and all(tokens[i] == "" for i in at) and tag not in choice["text"], tag
            assert full["usage"]["completion_tokens"] == 80
            # streamed: the same tokens, offsets and text, chunk by chunk
            with c.stream("POST", "/v1/completions", json=body | {"echo": echo, "stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            for k, choice in enumerate(full["choices"]):
                mine = [ch for e in events for ch in e["choices"] if ch["index"] == k]
                joined = {
                    key: [x for ch in mine if ch["logprobs"] for x in ch["logprobs"][key]] for key in choice["logprobs"]
                }
                assert "".join(ch["text"] for ch in mine) == choice["text"] and joined == choice["logprobs"]
        # a stop string cuts the text and the tokens the same way
        text = full["choices"][0]["text"][len("hello") :]
        stop = text[len(text) // 2 :][:3]
        cut = c.post("/v1/completions", json=body | {"stop": [stop], "n": 1, "prompt": "hello"}).json()["choices"][0]
        assert cut["finish_reason"] == "stop" and cut["text"] == text[: text.index(stop)]
        check_logprobs_match_text(cut, "")


def test_usage_reports_cached_tokens_as_zero(live: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=live.base_url, api_key="x", max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    chat = sdk.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2)
    text = sdk.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=2)
    opts: Any = {"include_usage": True}
    chat_s = list(
        sdk.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2, stream=True, stream_options=opts)
    )
    text_s = list(
        sdk.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=2, stream=True, stream_options=opts)
    )
    for usage in (chat.usage, text.usage, chat_s[-1].usage, text_s[-1].usage):
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 0
    with live.client() as c:  # on the wire: an integer, not null
        raw = c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hello", "max_tokens": 2}).json()
    assert raw["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


class _ByteVocab:
    """Stub vocab for the wire formatting: the specials, then one token per byte (every character split)."""

    def token_bytes(self, token_id: int) -> bytes:
        return TAGS.get(token_id, "<tag>").encode() if token_id < NUM_SPECIAL else bytes([token_id - 100])


def _completion_bodies(parts: list[str | bytes | int], stops: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One token per delta through the real parser (as /v1/completions builds it), then both wire shapes."""
    ids: list[int] = []
    for part in parts:
        if isinstance(part, int):
            ids.append(part)
        else:
            ids += [100 + b for b in (part.encode() if isinstance(part, str) else part)]
    vocab = _ByteVocab()
    parser = OutputParser(vocab, thinking=False, parse_tools=False, stops=stops, swallow_think=False)
    deltas = []
    for n, token_id in enumerate(ids):
        delta = ChoiceDelta(0, completion_tokens=1, logprobs=[TokenLogprob(token_id, -0.5, [])])
        segments = parser.push(token_id) + (parser.finish() if n == len(ids) - 1 else [])
        delta.content = "".join(s.text for s in segments if isinstance(s, Content))
        stopped = any(isinstance(s, Finished) for s in segments)
        delta.finish_reason = "stop" if stopped else ("length" if n == len(ids) - 1 else None)
        deltas.append(delta)
        if stopped:
            break

    async def each() -> AsyncIterator[ChoiceDelta]:
        for d in deltas:
            yield d

    def meta() -> ResponseMeta:
        return ResponseMeta("cmpl-x", 1, "m", 1, 1, vocab.token_bytes, logprobs=True, prompt_texts=["echo: "])

    async def run() -> tuple[dict[str, Any], list[bytes]]:
        return await completion_response(meta(), each()), [c async for c in completion_stream(meta(), each())]

    body, chunks = asyncio.run(run())
    return body["choices"][0], [json.loads(c[6:]) for c in chunks[:-1]]


def test_completion_logprobs_split_characters_tags_and_stop_strings() -> None:
    cases: list[tuple[list[str | bytes | int], list[str], str]] = [
        # a tag first (no think block is hidden here), characters split over byte tokens, one cut by the end
        ([THINK_ID, "Hi 😀 ", IM_END_ID, "x", TOOL_CALL_END_ID, "né", "中".encode()[:2]], [], "Hi 😀 xné\ufffd"),
        # a stop string across tokens, text before it in the token that completes it
        (["Hello ST", "OP there"], ["STOP"], "Hello "),
    ]
    for parts, stops, expected in cases:
        choice, events = _completion_bodies(parts, stops)
        assert choice["text"] == "echo: " + expected
        tokens = check_logprobs_match_text(choice, "echo: ")
        streamed = [ch for e in events for ch in e["choices"]]
        assert "".join(ch["text"] for ch in streamed) == choice["text"]
        assert [t for ch in streamed if ch["logprobs"] for t in ch["logprobs"]["tokens"]] == tokens
        assert [o for ch in streamed if ch["logprobs"] for o in ch["logprobs"]["text_offset"]] == choice["logprobs"][
            "text_offset"
        ]


def test_openapi_lists_the_real_responses(live: LiveServer) -> None:
    with live.client() as c:
        doc = c.get("/openapi.json").json()
    assert '"422"' not in json.dumps(doc) and "HTTPValidationError" not in doc["components"]["schemas"]
    envelope = doc["components"]["schemas"]["ErrorResponse"]
    assert envelope["required"] == ["error"]
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"message", "type", "param", "code"}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "415", "429"} <= set(chat)
    for status in ("400", "401", "404", "408", "413", "415", "429", "503"):
        assert chat[status]["content"] == {"application/json": {"schema": error_ref}}, status
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    metrics = doc["paths"]["/metrics"]["get"]["responses"]
    assert list(metrics["200"]["content"]) == ["text/plain"]
    assert metrics["401"]["content"] == {"application/json": {"schema": error_ref}}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "post":
                assert {"400", "401", "413", "415"} <= set(op["responses"]), path
                assert list(op["requestBody"]["content"]) == ["application/json"], path


def test_a_shared_system_prompt_is_reported_as_cached_tokens(live: LiveServer) -> None:
    """The second chat with the same long system prompt reuses its keys/values: the OpenAI SDK reads
    usage.prompt_tokens_details.cached_tokens (0 for the first), streamed and not; /metrics counts the hits."""
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x")
    system = "You are a careful assistant for the harbour office. " * 6 + f"Ticket {uuid.uuid4().hex}."
    usages = []
    for question, stream in (("When does the ferry leave?", False), ("Where is pier four?", False), ("Hi", True)):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL_NAME,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=4,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(
                model=MODEL_NAME,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=4,
            ).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        usages.append((usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
    (_, c0), (p1, c1), (p2, c2) = usages
    assert c0 == 0
    assert 48 <= c1 < p1 and 48 <= c2 < p2  # the system prompt's whole blocks, never the whole prompt
    assert metric(httpx.get(f"{live.url}/metrics").text, "minigpt_prefix_cache_hit_tokens_total") >= c1 + c2


def test_inter_token_histogram_counts_every_token_when_they_arrive_k_at_a_time(live: LiveServer) -> None:
    """The engine sends 8 decode steps at once; the ITL histogram still gets one observation per token after the
    first (the chunk's gap spread over its tokens), and a positive total, not zeros."""

    def counts() -> tuple[float, float, float]:
        text = httpx.get(f"{live.url}/metrics").text
        return (
            metric(text, "minigpt_time_to_first_token_seconds_count"),
            metric(text, "minigpt_inter_token_latency_seconds_count"),
            metric(text, "minigpt_inter_token_latency_seconds_sum"),
        )

    ttft0, itl0, sum0 = counts()
    body = {"model": MODEL_NAME, "prompt": "Once", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    assert httpx.post(f"{live.url}/v1/completions", json=body).json()["usage"]["completion_tokens"] == 24
    ttft1, itl1, sum1 = counts()
    assert (ttft1 - ttft0, itl1 - itl0) == (1, 23)
    assert sum1 > sum0


def test_a_chunk_of_tokens_spreads_its_gap_over_the_inter_token_histogram() -> None:
    """8 tokens that arrive together 36 ms after the previous chunk are 8 inter-token observations of 4.5 ms
    (all in the 2.5-5 ms bucket), not one of 36 ms and seven of zero."""
    from server.generation import ChoiceJob, _ChoiceState
    from server.metrics import Metrics

    metrics = Metrics()
    state = _ChoiceState(
        ChoiceJob(
            0, None, OutputParser(_ByteVocab(), thinking=False, parse_tools=False, stops=[], swallow_think=False)
        ),
        metrics,
        time.perf_counter(),
    )
    state.observe_arrival(1)  # the first token: TTFT
    state.last_token = time.perf_counter() - 0.036
    state.observe_arrival(8)

    def itl(sample: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(f"minigpt_inter_token_latency_seconds_{sample}", labels)
        assert value is not None
        return value

    assert metrics.registry.get_sample_value("minigpt_time_to_first_token_seconds_count") == 1 and itl("count") == 8
    assert itl("bucket", le="0.005") - itl("bucket", le="0.0025") == 8  # 4.5 ms each: the 2.5-5 ms bucket
    assert 0.035 < itl("sum") < 0.045
