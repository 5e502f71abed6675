"""What the SFT corpus repeats: `python -m training.datagen.stats --scale 24` counts the training split's dialogues.

What it is: `sft_stats(seed, scale)`, built from the generator's own entry point (`corpus.sft_kind_conversation`,
the same RNG stream as `generate_corpus`, nothing written): rows per kind, distinct rows, distinct offered tool
names / descriptions / schemas and how often the most common repeat, distinct called names, the share of
tool-offering dialogues that make no call (per kind and overall) and what those answers say, distinct user
requests, numeric arguments that repeat one value within a call, and how many epochs the demo's SFT (6000 steps
x 64 rows) makes over the rows. Issue 18 measured the memorization of the retrained demo with it.
What it is not: a quality check of the texts (the tests do that) or a tokenizer-level count.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from typing import Any

from training.datagen.base import Conversation, make_rng
from training.datagen.corpus import BASE_COUNTS, sft_kind_conversation

DEMO_SFT_ROWS = 6000 * 64  # training/demo.py's default --sft-steps x --sft-batch-size


def _distinct(counter: Counter[str], top: int = 3) -> dict[str, Any]:
    total = sum(counter.values())
    return {
        "distinct": len(counter),
        "total": total,
        "most_common": [[key[:80], n] for key, n in counter.most_common(top)],
    }


def _offered(conv: Conversation) -> list[dict[str, Any]]:
    return [t["function"] for m in conv for t in m.get("tools") or []]


def _calls(conv: Conversation) -> list[dict[str, Any]]:
    return [c["function"] for m in conv for c in m.get("tool_calls") or []]


def sft_stats(seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Counts over the `sft_train` rows that `generate_corpus(seed=seed, scale=scale)` would write."""
    rng = make_rng(seed, "sft", "train")
    n = max(1, round(BASE_COUNTS["sft_train"] * scale))
    kinds: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    names: Counter[str] = Counter()
    descriptions: Counter[str] = Counter()
    schemas: Counter[str] = Counter()
    called: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    offering: Counter[str] = Counter()
    silent: defaultdict[str, int] = defaultdict(int)
    repeated_value_calls = multi_number_calls = 0
    for _ in range(n):
        kind, conv = sft_kind_conversation(rng, "train")
        kinds[kind] += 1
        # call ids are random: a row's key leaves them out
        bare = [{k: v for k, v in m.items() if k != "tool_call_id"} for m in conv]
        for m in bare:
            m["tool_calls"] = [c["function"] for c in m.get("tool_calls") or []]
        rows[json.dumps(bare, sort_keys=True, ensure_ascii=False)] += 1
        offered, calls = _offered(conv), _calls(conv)
        for f in offered:
            names[f["name"]] += 1
            descriptions[f.get("description", "")] += 1
            schemas[json.dumps(f, sort_keys=True)] += 1
        for c in calls:
            called[c["name"]] += 1
            numbers = [v for v in json.loads(c["arguments"]).values() if type(v) in (int, float)]
            if len(numbers) >= 2:
                multi_number_calls += 1
                repeated_value_calls += len(set(numbers)) < len(numbers)
        users = [m["content"] for m in conv if m["role"] == "user"]
        if users:
            requests[users[-1]] += 1
        if offered:
            offering[kind] += 1
            if not calls:
                silent[kind] += 1
                refusals[conv[-1]["content"]] += 1
    tool_rows = sum(offering.values())
    return {
        "seed": seed,
        "scale": scale,
        "rows": n,
        "distinct_rows": len(rows),
        "demo_sft_epochs": round(DEMO_SFT_ROWS / n, 2),
        "kinds": dict(kinds.most_common()),
        "offered_names": _distinct(names),
        "offered_descriptions": _distinct(descriptions),
        "offered_schemas": _distinct(schemas),
        "called_names": _distinct(called),
        "user_requests": _distinct(requests),
        "no_call_share": round(sum(silent.values()) / tool_rows, 4) if tool_rows else None,
        "no_call_share_by_kind": {k: round(silent[k] / offering[k], 4) for k in sorted(offering)},
        "no_call_answers": _distinct(refusals, top=8),
        "calls_with_a_repeated_number": [repeated_value_calls, multi_number_calls],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.datagen.stats", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--scale", type=float, default=1.0, help="corpus scale (the demo uses 24)")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        print("error: --scale must be positive", file=sys.stderr)
        return 2
    print(json.dumps(sft_stats(args.seed, args.scale), ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
