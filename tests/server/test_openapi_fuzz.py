"""Schemathesis against the live server: every operation of /openapi.json, bodies generated from its schemas.

Bounded and reproducible: a fixed Hypothesis seed, a fixed number of examples per operation, no shrinking, the
model name fixed and completions kept short (so that the engine's work stays small on a 2-core machine). Valid
bodies for every operation, then bodies that break the schema for every POST. A case fails on any 5xx and on
any response the document does not describe (status code, content type, body schema).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import MODEL_NAME, LiveServer

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 20250515
EXAMPLES = {"POST /v1/chat/completions": 50, "POST /v1/completions": 30}
DEFAULT_EXAMPLES = 20
NEGATIVE_EXAMPLES = 12  # bodies that break the schema: POST operations only (GETs here have no input to break)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def shrink_work(body: Any) -> Any:
    """The generated body with our model name and a small completion budget (validity otherwise untouched)."""
    if not isinstance(body, dict):
        return body
    if "model" in body:
        body["model"] = MODEL_NAME
    for key in ("max_tokens", "max_completion_tokens", "max_thinking_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body[key], bool):
            body[key] = min(body[key], 4)
    body.setdefault("max_tokens", 4) if "messages" in body or "prompt" in body else None
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool):
        body["n"] = min(body["n"], 2)
        if "best_of" in body:
            body["best_of"] = body["n"]
    return body


def fuzz(operation: Any, mode: GenerationMode, base_url: str, statuses: Counter[tuple[str, str, int]]) -> None:
    """Run one operation's cases; raises the first failure (Hypothesis reports its example)."""
    label = f"{operation.method.upper()} {operation.path}"
    examples = EXAMPLES.get(label, DEFAULT_EXAMPLES) if mode is GenerationMode.POSITIVE else NEGATIVE_EXAMPLES

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode))
    def check(case: Any) -> None:
        case.body = shrink_work(case.body)
        response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
        statuses[label, mode.value, response.status_code] += 1

    check()


def test_every_operation_conforms_to_the_document(live: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    runs = [(op, GenerationMode.POSITIVE) for op in operations]
    runs += [(op, GenerationMode.NEGATIVE) for op in operations if op.method.upper() == "POST"]
    failures: list[str] = []
    statuses: Counter[tuple[str, str, int]] = Counter()
    for operation, mode in runs:
        try:
            fuzz(operation, mode, live.url, statuses)
        except Exception as exc:  # collect the first failure of every operation, then report them all
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    answered = sum(n for (_, mode, status), n in statuses.items() if mode == "positive" and status == 200)
    assert answered >= 20, statuses  # the valid cases reach the engine, not just the validators
