"""The web chat page end to end in a real headless Chromium, driven by Playwright's Python package.

A live uvicorn serves the random-weight tiny checkpoint: its answers are gibberish, but they stream token by
token, which is all the page needs. The browser's network is throttled (DevTools) where a test must act while
a stream is still running, so that "mid-stream" does not depend on how fast this machine generates.
Skipped unless both /usr/bin/chromium and the `playwright` package are installed (`playwright install` is never
needed: the Debian Chromium is launched through `executable_path`). Run with `pytest -m browser`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from minigpt_core.checkpoint import save_checkpoint
from minigpt_core.engine import Engine
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from server.app import create_app
from server.settings import Settings
from tests.conftest import tiny_config
from tests.server.conftest import LiveServer, live_server, serve_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
LONG_CONTEXT = 8192  # five tool rounds of gibberish fit
# Records, at every DOM change, the length of the answer text shown while the answer is still streaming.
RECORD_STREAMING = """
window.__streamed = [];
new MutationObserver(() => {
  const node = document.querySelector(".msg.assistant.streaming .content");
  if (node && node.textContent) window.__streamed.push(node.textContent.length);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs the playwright package"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, live: LiveServer) -> Iterator[Any]:
    """A fresh page (own localStorage) on the chat page, connected and ready."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1200, "height": 820}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_STREAMING)
    errors: list[str] = []
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(live.url + "/")
    expect(pg.locator("#status")).to_have_text("Ready")
    expect(pg.locator("#model-name")).to_have_text("tiny")
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _throttle(page: Any, bytes_per_s: int) -> None:
    """Slow the browser's downloads (DevTools network emulation) so a stream lasts long enough to act in it."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": bytes_per_s, "uploadThroughput": -1},
    )


def _set_max_tokens(page: Any, n: int) -> None:
    page.locator("#max-tokens").fill(str(n))
    page.locator("#max-tokens").press("Tab")  # `change` fires on blur


def _set_extra(page: Any, fields: str) -> None:
    page.locator("#extra").fill(fields)
    page.locator("#extra").press("Tab")


def _send(page: Any, text: str) -> None:
    prompt = page.locator("#prompt")
    prompt.focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def _wait_idle(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#send")).to_be_enabled()


def test_enter_sends_and_the_answer_streams_in(page: Any) -> None:
    from playwright.sync_api import expect

    _set_max_tokens(page, 48)
    _set_extra(page, '{"ignore_eos": true, "seed": 7}')
    _send(page, "hello world")
    expect(page.locator("#prompt")).to_have_value("")
    expect(page.locator(".msg.user .content")).to_have_text("hello world")
    _wait_idle(page)
    # the text grew piece by piece while the answer was streaming
    lengths = page.evaluate("window.__streamed")
    assert len(set(lengths)) >= 5 and lengths == sorted(lengths), lengths
    answer = page.locator(".msg.assistant .content")
    expect(answer).to_have_count(1)
    assert answer.inner_text().strip()
    expect(page.locator(".msg.assistant .meta")).to_contain_text("48 tokens")
    # the conversation survives a reload (localStorage)
    page.reload()
    expect(page.locator(".msg.user .content")).to_have_text("hello world")
    expect(page.locator(".msg.assistant")).to_have_count(1)


def test_shift_enter_is_a_new_line_and_regenerate_and_clear(page: Any) -> None:
    from playwright.sync_api import expect

    _set_max_tokens(page, 8)
    page.locator("#prompt").focus()
    page.keyboard.type("one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("two")
    expect(page.locator("#prompt")).to_have_value("one\ntwo")
    page.keyboard.press("Enter")
    _wait_idle(page)
    expect(page.locator(".msg.user .content")).to_have_text("one\ntwo")
    page.locator("#regenerate").click()
    _wait_idle(page)
    expect(page.locator(".msg.user")).to_have_count(1)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    page.locator("#clear").click()
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#prompt")).to_be_focused()


def test_ultra_think_shows_a_reasoning_block_and_screenshot(page: Any) -> None:
    from playwright.sync_api import expect

    _set_max_tokens(page, 24)
    _set_extra(page, '{"seed": 5}')  # unseeded, a random model's thought is sometimes empty
    _send(page, "what is two plus three")
    _wait_idle(page)
    think = page.locator("#think")
    think.focus()
    page.keyboard.press("Space")  # keyboard only
    expect(think).to_be_checked()
    _set_max_tokens(page, 64)
    _send(page, "think: how many numbers are there")
    _wait_idle(page)
    reasoning = page.locator(".msg.assistant").nth(1).locator("details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning.locator(".reasoning-text")).not_to_be_empty()
    expect(page.locator(".msg.assistant").first.locator("details.reasoning")).to_have_count(0)
    # collapsible: the summary toggles it
    reasoning.locator("summary").click()
    expect(reasoning).not_to_have_attribute("open", "")
    reasoning.locator("summary").click()
    expect(reasoning).to_have_attribute("open", "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)
    assert (ARTIFACTS / "web_chat.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def long_live(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Tokenizer) -> Iterator[str]:
    """A live server whose random tiny model has room for a tool's schema (the tiny tokenizer needs ~550 tokens)."""
    torch.manual_seed(0)
    model = MiniGPT(dataclasses.replace(tiny_config(tiny_tokenizer.vocab_size), max_seq_len=LONG_CONTEXT))
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-long", model, tiny_tokenizer)
    engine = Engine(model, max_num_seqs=2, max_model_len=LONG_CONTEXT)
    engine.start()
    app = create_app(Settings(model=checkpoint, served_model_name="tiny"), engine=engine)
    try:
        with serve_app(app, log_level="warning") as url:
            yield url
    finally:
        engine.shutdown()


def test_tool_calls_run_and_their_results_go_back(browser: Any, long_live: str) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1200, "height": 820})
    page = context.new_page()
    page.goto(long_live + "/")
    expect(page.locator("#status")).to_have_text("Ready")
    _set_max_tokens(page, 300)
    # random weights never choose a tool on their own: make the call required (the grammar shapes it)
    _set_extra(page, '{"tool_choice": "required", "parallel_tool_calls": false, "seed": 3}')
    page.get_by_label("Offer the calculator tool").check()
    _send(page, "what is two plus three")
    _wait_idle(page)
    calls = page.locator(".msg.assistant .call")
    expect(calls.first).to_contain_text("Tool call: calculator")
    results = page.locator(".msg.tool")
    expect(results.first.locator(".role")).to_have_text("Result of calculator")
    assert results.first.locator("pre").inner_text().strip()
    expect(page.locator(".msg.error")).to_have_count(0)
    # `required` makes every answer a call: the page answers four rounds of calls, then stops (MAX_TOOL_ROUNDS)
    expect(page.locator(".msg.assistant")).to_have_count(5)
    expect(results).to_have_count(4)
    expect(page.locator(".msg").last).to_have_class("msg assistant")
    expect(page.locator(".msg").last.locator(".meta")).to_contain_text("not run")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_chat_tools.png"))
    context.close()


@pytest.mark.parametrize("how", ["button", "escape"])
def test_stop_ends_the_stream_mid_way(page: Any, how: str) -> None:
    from playwright.sync_api import expect

    _set_max_tokens(page, 400)
    # seeded: an unseeded random model sometimes opens a <think> it never closes, and the answer shows no text
    _set_extra(page, '{"ignore_eos": true, "seed": 5}')
    _throttle(page, 1_500)
    _send(page, "tell me a long story")
    expect(page.locator(".msg.assistant.streaming .content")).not_to_be_empty()
    expect(page.locator("#stop")).to_be_enabled()
    if how == "button":
        page.locator("#stop").click()
    else:
        page.keyboard.press("Escape")
    _wait_idle(page)
    expect(page.locator("#status")).to_have_text("Stopped")
    answer = page.locator(".msg.assistant")
    expect(answer.locator(".meta")).to_contain_text("stopped")
    expect(answer).not_to_have_class("msg assistant streaming")
    shown = answer.locator(".content").inner_text()
    page.wait_for_timeout(500)  # nothing more may arrive once stopped
    assert answer.locator(".content").inner_text() == shown
    assert 0 < len(shown) < 400 * 20
    expect(page.locator("#prompt")).to_be_focused()


def test_every_control_is_reachable_by_tab_with_a_visible_focus(page: Any) -> None:
    seen: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        info = page.evaluate(
            "() => { const e = document.activeElement; const s = getComputedStyle(e);"
            " return [e.id || e.getAttribute('aria-label') || e.tagName, s.outlineStyle, e.getAttribute('aria-label')"
            " || (e.labels && e.labels.length ? e.labels[0].textContent : e.textContent)]; }"
        )
        name, outline, label = info
        seen.append(name)
        if name not in ("BODY",):
            assert outline != "none", f"{name} has no visible focus"
            assert (label or "").strip(), f"{name} has no accessible name"
    for control in ("think", "temperature", "top-p", "max-tokens", "prompt", "send", "regenerate", "clear"):
        assert control in seen, f"{control} not reachable by Tab: {seen}"
    assert any(name.startswith("Offer the calculator") for name in seen), seen


def test_api_key_field_shows_on_401_and_the_key_is_kept(browser: Any, tiny_checkpoint: Path) -> None:
    from playwright.sync_api import expect

    with live_server(tiny_checkpoint, api_key="sekrit") as srv:
        context = browser.new_context()
        page = context.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#status")).to_have_text("API key needed")
        expect(page.locator("#key-section")).to_be_visible()
        page.locator("#api-key").focus()
        page.keyboard.type("sekrit")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text("Ready")
        _set_max_tokens(page, 8)
        _send(page, "hello")
        _wait_idle(page)
        expect(page.locator(".msg.assistant")).to_have_count(1)
        expect(page.locator(".msg.error")).to_have_count(0)
        page.reload()  # the key stays in this browser
        expect(page.locator("#status")).to_have_text("Ready")
        context.close()
