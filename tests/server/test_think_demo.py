"""Ultra think acceptance (issue 5, done-when): the `openai` SDK against a live server on the shipped DEMO model.

`extra_body={"ultra_think": True}` gives non-empty `reasoning_content` and `reasoning`, streamed and not, and
no think tags in `content`; without it (or with `reasoning_effort="none"`) there are no reasoning fields; a
budget of 5 thinking tokens is never exceeded, by the usage count nor by the reasoning text's own tokens.
Skipped (not failed) when the demo model is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from minigpt_core.resources import DEMO_MODEL_DIR
from minigpt_core.tokenizer import Tokenizer
from tests.server.conftest import MODEL_NAME, LiveServer, live_server

pytestmark = pytest.mark.skipif(
    not (Path(DEMO_MODEL_DIR) / "model.safetensors").is_file(), reason="the demo model is not installed"
)

QUESTIONS = ("What is 17 + 25?", "Tom has 3 bags of 4 apples. How many apples does he have?", "Who are you?")
TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")


@pytest.fixture(scope="module")
def demo() -> Iterator[LiveServer]:
    with live_server(Path(DEMO_MODEL_DIR), max_num_seqs=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(demo: LiveServer) -> openai.OpenAI:
    return demo.sdk()


@pytest.fixture(scope="module")
def demo_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(Path(DEMO_MODEL_DIR) / "tokenizer.json")


def _create(client: openai.OpenAI, question: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=160,
        **kwargs,
    )


def _extra(obj: Any) -> dict[str, Any]:
    return dict(obj.model_extra or {})


def _stream(client: openai.OpenAI, question: str, **kwargs: Any) -> tuple[str, str, str, list[str], Any]:
    """(reasoning_content, reasoning, content, kinds in arrival order, usage) of a streamed answer."""
    rc, rs, content, kinds, usage = "", "", "", [], None
    for chunk in _create(client, question, stream=True, stream_options={"include_usage": True}, **kwargs):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            extra = _extra(choice.delta)
            rc += extra.get("reasoning_content") or ""
            rs += extra.get("reasoning") or ""
            if extra.get("reasoning_content"):
                kinds.append("reasoning")
            if choice.delta.content:
                content += choice.delta.content
                kinds.append("content")
    return rc, rs, content, kinds, usage


@pytest.mark.parametrize("question", QUESTIONS)
def test_ultra_think_returns_reasoning(client: openai.OpenAI, question: str) -> None:
    resp = _create(client, question, extra_body={"ultra_think": True})
    msg = resp.choices[0].message
    extra = _extra(msg)
    assert extra["reasoning_content"].strip(), "empty reasoning_content"
    assert extra["reasoning"] == extra["reasoning_content"]
    assert msg.content is not None and not any(tag in msg.content for tag in TAGS)
    assert not any(tag in extra["reasoning_content"] for tag in TAGS)
    details = resp.usage.completion_tokens_details
    assert details is not None and 0 < (details.reasoning_tokens or 0) <= resp.usage.completion_tokens


@pytest.mark.parametrize("question", QUESTIONS)
def test_ultra_think_streamed_equals_non_streamed(client: openai.OpenAI, question: str) -> None:
    rc, rs, content, kinds, usage = _stream(client, question, extra_body={"ultra_think": True})
    assert rc.strip() and rs == rc
    assert not any(tag in content or tag in rc for tag in TAGS)
    if "content" in kinds:  # reasoning deltas all come before the first content delta
        assert "reasoning" not in kinds[kinds.index("content") :]
    whole = _create(client, question, extra_body={"ultra_think": True})
    assert (rc, content) == (_extra(whole.choices[0].message)["reasoning_content"], whole.choices[0].message.content)
    assert usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens_details.reasoning_tokens


@pytest.mark.parametrize("kwargs", [{}, {"reasoning_effort": "none"}, {"extra_body": {"ultra_think": False}}])
def test_no_reasoning_fields_without_thinking(client: openai.OpenAI, demo: LiveServer, kwargs: dict[str, Any]) -> None:
    msg = _create(client, QUESTIONS[0], **kwargs).choices[0].message
    assert "reasoning_content" not in _extra(msg) and "reasoning" not in _extra(msg)
    assert msg.content and not any(tag in msg.content for tag in TAGS)
    rc, rs, content, _, usage = _stream(client, QUESTIONS[0], **kwargs)
    assert (rc, rs) == ("", "") and content == msg.content
    assert not (usage.completion_tokens_details and usage.completion_tokens_details.reasoning_tokens)
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 32}
    body |= kwargs.get("extra_body", {}) | {k: v for k, v in kwargs.items() if k != "extra_body"}
    raw = httpx.post(demo.base_url + "/chat/completions", json=body, timeout=60).json()  # the wire, not the SDK
    assert not {"reasoning_content", "reasoning"} & set(raw["choices"][0]["message"])


def _budgeted(client: openai.OpenAI, question: str, stream: bool) -> tuple[str, str, Any]:
    """(reasoning, content, usage) of an answer with ultra think on and a budget of 5 thinking tokens."""
    extra_body = {"ultra_think": True, "max_thinking_tokens": 5}
    if stream:
        reasoning, _, content, _, usage = _stream(client, question, extra_body=extra_body)
        return reasoning, content, usage
    resp = _create(client, question, extra_body=extra_body)
    return _extra(resp.choices[0].message)["reasoning_content"], resp.choices[0].message.content or "", resp.usage


@pytest.mark.parametrize("question", QUESTIONS)
@pytest.mark.parametrize("stream", [False, True])
def test_thinking_budget_of_5_bounds_the_reasoning_text(
    client: openai.OpenAI, demo_tokenizer: Tokenizer, question: str, stream: bool
) -> None:
    reasoning, content, _ = _budgeted(client, question, stream)
    assert reasoning.strip() and len(demo_tokenizer.encode(reasoning)) <= 5
    assert content.strip() and not any(tag in content for tag in TAGS)  # the answer follows the forced </think>


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_budget_of_5_bounds_the_usage_count(client: openai.OpenAI, stream: bool) -> None:
    _, _, usage = _budgeted(client, QUESTIONS[0], stream)
    assert 0 < usage.completion_tokens_details.reasoning_tokens <= 5
