"""Prometheus metrics, hand-written text exposition (format 0.0.4): counters, gauges and histograms.

Thread-safe and dependency-free. The gauges for running / waiting sequences and KV-cache use are read from
`engine.stats()` at scrape time, so they can never drift from the engine's truth. This is not a general
metrics library: only what `/metrics` shows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    def __init__(self, name: str, help_: str, buckets: Iterable[float]) -> None:
        self.name, self.help = name, help_
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float, count: int = 1) -> None:
        """`count` observations of `value` (a chunk of tokens that shared one gap)."""
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += count
                break
        else:
            self.counts[-1] += count
        self.total += value * count
        self.n += count

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for upper, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{_num(upper)}"}} {cumulative}')
        lines += [f"{self.name}_sum {_num(self.total)}", f"{self.name}_count {self.n}"]
        return lines


class Metrics:
    """All server metrics. Methods are called from the event loop; the lock guards against scrape races."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram("minigpt_time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS_S)
        self.itl = Histogram("minigpt_inter_token_latency_seconds", "Time between tokens.", ITL_BUCKETS_S)
        self.e2e = Histogram("minigpt_e2e_request_latency_seconds", "Request latency.", E2E_BUCKETS_S)

    def count_request(self, endpoint: str, status: int | str) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def count_tokens(self, prompt: int = 0, generated: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def observe_itl(self, seconds: float, count: int = 1) -> None:
        with self._lock:
            self.itl.observe(seconds, count)

    def observe_e2e(self, seconds: float) -> None:
        with self._lock:
            self.e2e.observe(seconds)

    def render(self, engine_stats: Mapping[str, Any] | None) -> str:
        """The exposition text; `engine_stats` is `engine.stats()` (None while the model loads)."""
        stats = dict(engine_stats or {})
        running = float(stats.get("running", 0))
        waiting = float(stats.get("waiting", 0))
        used = float(stats.get("kv_tokens_used", 0))
        total = float(stats.get("kv_tokens_total", 0))
        lines: list[str] = []

        def gauge(name: str, help_: str, value: float) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {_num(value)}"])

        gauge("minigpt_num_requests_running", "Sequences decoding in the engine.", running)
        gauge("minigpt_num_requests_waiting", "Sequences queued for a slot.", waiting)
        gauge("minigpt_kv_cache_tokens_used", "KV-cache positions in use.", used)
        gauge("minigpt_kv_cache_tokens_total", "KV-cache positions available.", total)
        gauge("minigpt_kv_cache_usage_ratio", "KV-cache use, 0..1.", used / total if total else 0.0)
        gauge("minigpt_model_loaded", "1 once the model serves.", 1.0 if engine_stats is not None else 0.0)
        cached = float(stats.get("cached_prompt_tokens_total", 0))
        lines += ["# HELP minigpt_prefix_cache_hit_tokens_total Prompt tokens served from the prefix cache."]
        lines += ["# TYPE minigpt_prefix_cache_hit_tokens_total counter"]
        lines += [f"minigpt_prefix_cache_hit_tokens_total {_num(cached)}"]
        with self._lock:
            lines += ["# HELP minigpt_requests_total HTTP requests by endpoint and status."]
            lines += ["# TYPE minigpt_requests_total counter"]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f"minigpt_requests_total{_labels({'endpoint': endpoint, 'status': status})} {count}")
            lines += ["# HELP minigpt_prompt_tokens_total Prompt tokens processed."]
            lines += ["# TYPE minigpt_prompt_tokens_total counter", f"minigpt_prompt_tokens_total {self.prompt_tokens}"]
            lines += ["# HELP minigpt_generation_tokens_total Tokens generated."]
            lines += ["# TYPE minigpt_generation_tokens_total counter"]
            lines += [f"minigpt_generation_tokens_total {self.generation_tokens}"]
            for hist in (self.ttft, self.itl, self.e2e):
                lines += hist.render()
        return "\n".join(lines) + "\n"
