"""server.metrics on its own: one registry per app, the engine's gauges read at scrape time (issue 19, item 5)."""

from __future__ import annotations

import re

from minigpt_core.engine import EngineStats
from server.metrics import Metrics


def value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{sample} missing"
    return float(match.group(1))


def stats(running: int, used: int, cached: int) -> EngineStats:
    return EngineStats(
        running=running,
        waiting=2,
        kv_tokens_used=used,
        kv_tokens_total=1024,
        num_slots=4,
        max_model_len=256,
        prompt_tokens_total=0,
        generation_tokens_total=0,
        cached_prompt_tokens_total=cached,
        steps_total=0,
    )


def test_engine_gauges_are_read_at_each_scrape() -> None:
    current: list[EngineStats | None] = [None]
    metrics = Metrics(lambda: current[0])
    text = metrics.render().decode()
    assert value(text, "minigpt_model_loaded") == 0 and value(text, "minigpt_kv_cache_usage_ratio") == 0
    current[0] = stats(running=3, used=256, cached=40)
    text = metrics.render().decode()
    assert value(text, "minigpt_model_loaded") == 1
    assert value(text, "minigpt_num_requests_running") == 3 and value(text, "minigpt_num_requests_waiting") == 2
    assert (value(text, "minigpt_kv_cache_tokens_used"), value(text, "minigpt_kv_cache_tokens_total")) == (256, 1024)
    assert value(text, "minigpt_kv_cache_usage_ratio") == 0.25
    assert value(text, "minigpt_prefix_cache_hit_tokens_total") == 40
    assert "# TYPE minigpt_prefix_cache_hit_tokens_total counter" in text
    current[0] = stats(running=1, used=0, cached=41)
    assert value(metrics.render().decode(), "minigpt_num_requests_running") == 1


def test_each_app_counts_in_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.count_request("/v1/chat/completions", 200)
    first.count_tokens(prompt=5, generated=7)
    first.observe_itl(0.004, count=3)
    one, two = first.render().decode(), second.render().decode()
    assert value(one, 'minigpt_requests_total{endpoint="/v1/chat/completions",status="200"}') == 1
    assert "minigpt_requests_total{" not in two
    assert (value(one, "minigpt_prompt_tokens_total"), value(one, "minigpt_generation_tokens_total")) == (5, 7)
    assert value(two, "minigpt_generation_tokens_total") == 0
    assert value(one, "minigpt_inter_token_latency_seconds_count") == 3
    assert value(one, 'minigpt_inter_token_latency_seconds_bucket{le="0.005"}') == 3
    assert value(one, 'minigpt_inter_token_latency_seconds_bucket{le="0.0025"}') == 0
