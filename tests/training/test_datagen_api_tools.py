"""The realistic-API tool dialogues (training/datagen/api_tools.py) and the BFCL contamination check.

BFCL is a test set: no BFCL function name or question may appear in the generated corpus (the composed tools of
composed_tools.py included). That check reads the
BFCL data from ../shared/data/bfcl (or $MINIGPT_BFCL_DIR) and is skipped, saying why, when it is absent.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from training.bfcl import CATEGORIES, DATA_ENV, tool_name
from training.datagen import api_tools, composed_tools, generate_corpus, iter_texts, schema_errors

ROOT = Path(__file__).resolve().parents[2]


def conversations(n: int, split: str = "train", seed: int = 0) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    return [api_tools.api_conversation(rng, split) for _ in range(n)]  # type: ignore[arg-type]


def test_calls_are_schema_valid_and_cover_every_shape() -> None:
    shapes: Counter[str] = Counter()
    types: set[str] = set()
    for conv in conversations(600):
        tools = {t["function"]["name"]: t for t in conv[0]["tools"]}
        assert 1 <= len(tools) <= 6
        for tool in tools.values():
            types |= {p.get("type", "") for p in tool["function"]["parameters"]["properties"].values()}
        calls = [c for m in conv for c in m.get("tool_calls") or []]
        for call in calls:
            params = tools[call["function"]["name"]]["function"]["parameters"]
            assert not schema_errors(params, json.loads(call["function"]["arguments"])), call
        if not calls:
            shapes["no call"] += 1
            assert conv[-1]["role"] == "assistant" and conv[-1]["content"]
        elif calls[0]["function"]["name"] == "calculator":
            shapes["calculator"] += 1
        else:
            shapes["parallel" if len(calls) > 1 else "single"] += 1
            result = json.loads(conv[-2]["content"])
            assert str(next(iter(result.values()))) in conv[-1]["content"]  # the answer uses the result
    assert min(shapes.values()) > 30, shapes
    assert {"string", "integer", "number", "boolean", "array", "object"} <= types


def test_values_are_stated_in_words_and_carried_in_the_schema_form() -> None:
    """ISO dates from written dates, minutes from hours, Chinese requests, optional parameters left out."""
    seen: Counter[str] = Counter()
    for conv in conversations(1500, seed=1):
        request = conv[1]["content"]
        calls = [json.loads(c["function"]["arguments"]) for m in conv for c in m.get("tool_calls") or []]
        seen["zh"] += bool(re.search(r"[\u4e00-\u9fff]", request))
        for args in calls:
            for value in args.values():
                if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) and value not in request:
                    seen["date in words"] += 1
                if isinstance(value, int) and value % 60 == 0 and value >= 60 and re.search(r"\d+ hours?\b", request):
                    seen["hours to minutes"] += 1
        tools = {t["function"]["name"]: t for t in conv[0]["tools"]}
        for m in conv:
            for c in m.get("tool_calls") or []:
                declared = tools[c["function"]["name"]]["function"]["parameters"]["properties"]
                seen["optional left out"] += len(declared) > len(json.loads(c["function"]["arguments"]))
    assert all(seen[k] > 10 for k in ("zh", "date in words", "optional left out")) and seen["hours to minutes"] > 3, (
        seen
    )


def test_calculator_arithmetic_is_exact() -> None:
    for conv in conversations(400, seed=2):
        calls = [c for m in conv for c in m.get("tool_calls") or []]
        if not calls or calls[0]["function"]["name"] != "calculator":
            continue
        a, op, b = json.loads(calls[0]["function"]["arguments"])["expression"].split()
        assert len(a) >= 2 and len(b) >= 2 and op in "*/"
        exact = int(a) * int(b) if op == "*" else int(a) / int(b)
        assert float(conv[-2]["content"]) == pytest.approx(exact)


def test_held_out_tools_never_reach_training() -> None:
    def names(split: str) -> set[str]:
        return {t["function"]["name"] for conv in conversations(400, split) for t in conv[0]["tools"]}

    train, val = names("train"), names("val")
    assert val and train and not (train & val) - {"calculator"}


def _bfcl_dir() -> Path:
    found = os.environ.get(DATA_ENV) or str(ROOT.parent / "shared" / "data" / "bfcl")
    if not (Path(found) / "BFCL_v4_simple_python.json").is_file():
        pytest.skip(f"no BFCL data at {found} (set {DATA_ENV} to check the corpus against BFCL)")
    return Path(found)


def test_no_bfcl_function_or_question_in_the_corpus(tmp_path: Path) -> None:
    data = _bfcl_dir()
    functions: set[str] = set()
    questions: set[str] = set()
    for category in CATEGORIES:
        for line in (data / f"BFCL_v4_{category}.json").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            functions |= {f["name"] for f in record["function"]} | {tool_name(f["name"]) for f in record["function"]}
            questions |= {" ".join(m["content"].split()) for turn in record["question"] for m in turn}
    generate_corpus(tmp_path, seed=0, scale=0.1)
    offered: set[str] = set()
    for path in tmp_path.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for conv in (record.get(k) or [] for k in ("conversations", "chosen", "rejected", "messages")):
                for m in conv:
                    offered |= {t["function"]["name"] for t in m.get("tools") or []}
                    offered |= {c["function"]["name"] for c in m.get("tool_calls") or []}
            offered |= {t["function"]["name"] for t in record.get("tools") or []}
    offered |= {t["function"]["name"] for conv in conversations(3000) for t in conv[0]["tools"]}
    # composed tools (issue 18) are built from word lists: a name like a BFCL one must not come out of them either
    rng = random.Random(0)
    built = [composed_tools.composed_conversation(rng, split) for split in ("train", "val") for _ in range(4000)]
    offered |= {t["function"]["name"] for conv in built for t in conv[0].get("tools") or []}
    assert offered and not offered & functions, sorted(offered & functions)[:10]
    texts = [*iter_texts(tmp_path), *(json.dumps(m, ensure_ascii=False) for conv in built for m in conv)]
    text = "\n".join(" ".join(t.split()) for t in texts)
    long_names = {n for n in functions if len(n) >= 12 and ("_" in n or "." in n)}
    found = [n for n in long_names if n in text]
    assert not found, found[:10]
    leaked = [q for q in questions if len(q) >= 25 and q in text]
    assert not leaked, leaked[:3]
