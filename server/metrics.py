"""Prometheus metrics through `prometheus_client`: one registry per app, and a collector over `engine.stats()`.

What it is: `Metrics` owns a `CollectorRegistry` (per app, so that several apps in one process never share
counts), the HTTP / token counters and the latency histograms the event loop updates, and an `EngineCollector`
that reads the engine's own counters and gauges at scrape time, so they can never drift from the engine's truth.
`render()` is the text exposition (format 0.0.4) `/metrics` returns. The metric names are documented beside
vLLM's equivalents in docs/api.md.

What it is not: no HTTP (the route is in `server.routes`), no timing logic (callers pass seconds).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# `engine.stats()` (a `minigpt_core.engine.EngineStats`), or None while the model loads
EngineStatsSource = Callable[[], Any]


class EngineCollector(Collector):
    """The engine's gauges and its prefix-cache counter, read from `stats()` at each scrape."""

    def __init__(self, stats: EngineStatsSource) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        running = stats.running if stats is not None else 0
        waiting = stats.waiting if stats is not None else 0
        used = stats.kv_tokens_used if stats is not None else 0
        total = stats.kv_tokens_total if stats is not None else 0
        cached = stats.cached_prompt_tokens_total if stats is not None else 0
        yield GaugeMetricFamily("minigpt_num_requests_running", "Sequences decoding in the engine.", value=running)
        yield GaugeMetricFamily("minigpt_num_requests_waiting", "Sequences queued for a slot.", value=waiting)
        yield GaugeMetricFamily("minigpt_kv_cache_tokens_used", "KV-cache positions in use.", value=used)
        yield GaugeMetricFamily("minigpt_kv_cache_tokens_total", "KV-cache positions available.", value=total)
        yield GaugeMetricFamily(
            "minigpt_kv_cache_usage_ratio", "KV-cache use, 0..1.", value=used / total if total else 0
        )
        yield GaugeMetricFamily("minigpt_model_loaded", "1 once the model serves.", value=int(stats is not None))
        yield CounterMetricFamily(
            "minigpt_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.", value=cached
        )


def observe_many(histogram: Histogram, seconds: float, count: int) -> None:
    """`count` observations of `seconds` in one step: prometheus_client's `observe` takes one value, and a chunk
    of K tokens observed one by one cost K times its locks (a visible share of the event loop per streamed
    token). This adds to the same sum and bucket values `observe` updates, as `observe` does; a prometheus_client
    without them gets `count` plain observations."""
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if count == 1 or buckets is None or bounds is None or total is None:
        for _ in range(count):
            histogram.observe(seconds)
        return
    total.inc(seconds * count)
    buckets[bisect.bisect_left(bounds, seconds)].inc(count)  # the first bucket whose bound is >= seconds


class Metrics:
    """All server metrics of one app. prometheus_client's metrics are thread safe; no lock of our own."""

    def __init__(self, engine_stats: EngineStatsSource = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine_stats))
        self.requests = Counter(
            "minigpt_requests", "HTTP requests by endpoint and status.", ("endpoint", "status"), registry=self.registry
        )
        self.prompt_tokens = Counter("minigpt_prompt_tokens", "Prompt tokens processed.", registry=self.registry)
        self.generation_tokens = Counter("minigpt_generation_tokens", "Tokens generated.", registry=self.registry)
        self.ttft = self._histogram("minigpt_time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS_S)
        self.itl = self._histogram("minigpt_inter_token_latency_seconds", "Time between tokens.", ITL_BUCKETS_S)
        self.e2e = self._histogram("minigpt_e2e_request_latency_seconds", "Request latency.", E2E_BUCKETS_S)

    def _histogram(self, name: str, help_: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, help_, buckets=buckets, registry=self.registry)

    def count_request(self, endpoint: str, status: int | str) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def count_tokens(self, prompt: int = 0, generated: int = 0) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_itl(self, seconds: float, count: int = 1) -> None:
        """`count` observations of `seconds` (a chunk of tokens that shared one gap), at the cost of one."""
        observe_many(self.itl, seconds, count)

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def render(self) -> bytes:
        """The text exposition of every metric, the engine's read now."""
        return generate_latest(self.registry)
