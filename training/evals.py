"""Generation evaluations behind `minigpt-eval think | tools | identity`: held-out prompts, greedy answers, scores.

What it is: `run_jobs` (queue every prompt on one `Engine` at once, so the engine batches them, and collect the
generated ids), the three evaluators `evaluate_think`, `evaluate_tools`, `evaluate_identity` (each returns a flat
dict of metrics plus per-sample rows), and the pure scoring functions they use (`think_block_check`,
`answer_correct`, `reasoning_token_count`, `arguments_match`, `score_tool_call`, `result_mentioned`,
`identity_hit`), which the tests drive with hand-made outputs.

Every generation is prepared by `minigpt_core.prompting` (template, banned ids, grammar, thinking budget) and read
by `OutputParser`, exactly as the server and the CLI do.
What it is not: a CLI (training/eval_cli.py), a benchmark harness for speed, or a data generator (the held-out
files come from training/datagen).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from minigpt_core.constraints import Constraint
from minigpt_core.engine import Engine, TokenEvent
from minigpt_core.output_parser import ParsedOutput, parse_all
from minigpt_core.prompting import ChatRequest, prepare
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, NUM_SPECIAL, THINK_END_ID, THINK_ID, Tokenizer
from tools.base import ToolError
from tools.registry import default_registry
from training.datagen.schema_check import arguments_valid
from training.errors import DataError

logger = logging.getLogger(__name__)

WELL_FORMED_TARGET = 0.95
_ENDS = frozenset({IM_END_ID, EOT_ID})
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


# ----- generation -----


@dataclass(frozen=True)
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    constraint: Constraint | None = None


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | ... ; "too_long" when the prompt left no room to answer


def run_jobs(engine: Engine, jobs: Sequence[Job]) -> list[Generation]:
    """Queue jobs (up to the engine's queue bound at a time), then collect each one's generated ids in order."""
    out: list[Generation] = []
    window = max(1, engine.max_queued)
    for start in range(0, len(jobs), window):
        streams: list[Iterator[TokenEvent] | None] = []
        for job in jobs[start : start + window]:
            room = engine.max_model_len - len(job.prompt_ids)
            if room < 1:
                streams.append(None)
                continue
            params = replace(job.params, max_new_tokens=min(job.params.max_new_tokens, room))
            streams.append(engine.generate(job.prompt_ids, params, job.constraint))
        for stream in streams:
            if stream is None:
                out.append(Generation([], "too_long"))
                continue
            ids: list[int] = []
            finish: str | None = None
            for event in stream:
                if event.token_id is not None:
                    ids.append(event.token_id)
                finish = event.finish_reason or finish
            out.append(Generation(ids, finish))
    return out


def greedy(max_new_tokens: int, banned_token_ids: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, banned_token_ids=banned_token_ids)


def chat_job(tok: Tokenizer, vocab_size: int, chat: ChatRequest, max_new_tokens: int) -> Job:
    """A chat prepared as `minigpt-serve` prepares it (template, banned ids, grammar, thinking budget)."""
    prep = prepare(chat, tok, vocab_size=vocab_size)
    return Job(prep.prompt_ids, greedy(max_new_tokens, prep.banned_token_ids), prep.constraint())


def jsonl_records(path: Path, key: str, kind: type) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file in order (blank lines skipped), each holding `key` of type `kind`;
    DataError names the line of a bad one. The one JSONL reader of the evals (this module's and BFCL's)."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: not JSON ({str(exc).splitlines()[0]})") from exc
        except RecursionError as exc:
            raise DataError(f"{path}:{lineno}: not JSON (nested too deeply)") from exc
        if not isinstance(record, dict) or not isinstance(record.get(key), kind):
            article = "an" if key[0] in "aeiou" else "a"
            raise DataError(f"{path}:{lineno}: expected an object with {article} '{key}' {kind.__name__}")
        yield record


def load_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped), at most `limit`; DataError on a bad line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = list(itertools.islice(jsonl_records(path, "messages", list), limit))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _fraction(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


# ----- think -----


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def answer_correct(content: str, answer: str | float) -> bool:
    """The last number in the content equals the expected answer (numerically)."""
    got = last_number(content)
    return got is not None and math.isclose(got, float(answer), rel_tol=1e-9, abs_tol=1e-9)


def think_block_check(token_ids: Sequence[int], reasoning: str, content: str) -> str | None:
    """Why a thinking-on answer (the prompt ended inside `<think>`) is malformed, or None when well formed.

    Well formed: non-empty reasoning with no tag inside, closed by `</think>`, then a non-empty answer with
    neither tag tokens (other than the end of turn) nor think tags written out as text.
    """
    if THINK_END_ID not in token_ids:
        return "unclosed"
    end = list(token_ids).index(THINK_END_ID)
    if any(t < NUM_SPECIAL for t in token_ids[:end]):
        return "tag inside reasoning"
    if not reasoning.strip():
        return "empty reasoning"
    if any(t < NUM_SPECIAL and t not in _ENDS for t in token_ids[end + 1 :]):
        return "tag in content"
    if "<think>" in content or "</think>" in content:
        return "tag text in content"
    if not content.strip():
        return "no answer"
    return None


def reasoning_token_count(token_ids: Sequence[int]) -> int:
    """Tokens strictly inside the think block (a leading `<think>` the model writes is not counted)."""
    ids = list(token_ids)
    if ids and ids[0] == THINK_ID:
        ids = ids[1:]
    return ids.index(THINK_END_ID) if THINK_END_ID in ids else len(ids)


def evaluate_think(
    engine: Engine, tok: Tokenizer, records: Sequence[dict[str, Any]], *, max_new_tokens: int = 256, budget: int = 8
) -> dict[str, Any]:
    """Thinking on, off, and on with `max_thinking_tokens=budget`: format, accuracy and budget compliance."""

    def jobs_of(thinking: bool, cap: int | None = None) -> list[Job]:
        chats = [ChatRequest(r["messages"], thinking=thinking, max_thinking_tokens=cap) for r in records]
        return [chat_job(tok, engine.vocab_size, c, max_new_tokens) for c in chats]

    jobs = jobs_of(True) + jobs_of(False) + jobs_of(True, budget)
    gens = run_jobs(engine, jobs)
    n = len(records)
    samples: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        g_on, g_off, g_budget = gens[i], gens[n + i], gens[2 * n + i]
        p_on, _ = parse_all(tok, g_on.token_ids, thinking=True, parse_tools=False)
        p_off, _ = parse_all(tok, g_off.token_ids, thinking=False, parse_tools=False)
        p_budget, _ = parse_all(tok, g_budget.token_ids, thinking=True, parse_tools=False)
        problem = think_block_check(g_on.token_ids, p_on.reasoning, p_on.content)
        used = reasoning_token_count(g_budget.token_ids)
        samples.append(
            {
                "answer": record["answer"],
                "reasoning": p_on.reasoning,
                "content_think": p_on.content,
                "content_no_think": p_off.content,
                "content_budget": p_budget.content,
                "malformed": problem,
                "correct_think": answer_correct(p_on.content, record["answer"]),
                "correct_no_think": answer_correct(p_off.content, record["answer"]),
                "correct_budget": answer_correct(p_budget.content, record["answer"]),
                "reasoning_tokens": reasoning_token_count(g_on.token_ids),
                "budget_reasoning_tokens": used,
                "within_budget": used <= budget,
            }
        )
    well_formed = _fraction([s["malformed"] is None for s in samples])
    return {
        "samples_n": n,
        "well_formed": well_formed,
        "well_formed_target": WELL_FORMED_TARGET,
        "meets_target": well_formed >= WELL_FORMED_TARGET,
        "accuracy_think": _fraction([s["correct_think"] for s in samples]),
        "accuracy_no_think": _fraction([s["correct_no_think"] for s in samples]),
        "budget": budget,
        "budget_compliance": _fraction([s["within_budget"] for s in samples]),
        "accuracy_budget": _fraction([s["correct_budget"] for s in samples]),
        "max_budget_reasoning_tokens": max(s["budget_reasoning_tokens"] for s in samples),
        "mean_reasoning_tokens": sum(s["reasoning_tokens"] for s in samples) / n,
        "malformed_reasons": _counts(s["malformed"] for s in samples if s["malformed"]),
        "samples": samples,
    }


def _counts(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


# ----- identity -----


def identity_hit(content: str, must_contain: Sequence[str], must_not_contain: Sequence[str] = ()) -> bool:
    """Every required string occurs in the answer (exact substring) and no forbidden one does."""
    return all(s in content for s in must_contain) and not any(s in content for s in must_not_contain)


def evaluate_identity(
    engine: Engine, tok: Tokenizer, records: Sequence[dict[str, Any]], *, max_new_tokens: int = 96
) -> dict[str, Any]:
    jobs = [chat_job(tok, engine.vocab_size, ChatRequest(r["messages"]), max_new_tokens) for r in records]
    samples = []
    for record, gen in zip(records, run_jobs(engine, jobs), strict=True):
        parsed, _ = parse_all(tok, gen.token_ids, thinking=False, parse_tools=False)
        must, must_not = record.get("must_contain", []), record.get("must_not_contain", [])
        hit = identity_hit(parsed.content, must, must_not)
        kind = record.get("kind", "identity")
        samples.append({"kind": kind, "must_contain": must, "content": parsed.content, "hit": hit})
    return {
        "samples_n": len(samples),
        # records without a kind are identity questions; `persona` ones carry a system persona that must win,
        # `off_topic` ones a world question that must not get the identity answer (issue 18)
        "accuracy": _fraction([s["hit"] for s in samples if s["kind"] == "identity"]),
        "persona_accuracy": _fraction([s["hit"] for s in samples if s["kind"] == "persona"]),
        "off_topic_accuracy": _fraction([s["hit"] for s in samples if s["kind"] == "off_topic"]),
        "samples": samples,
    }


# ----- tools -----


def arguments_match(predicted: Any, expected: Any) -> bool:
    """Equal after JSON normalisation: same keys and list order, numbers compared numerically, bools not numbers."""
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return isinstance(expected, bool) and isinstance(predicted, bool) and expected == predicted
    if isinstance(expected, int | float) and isinstance(predicted, int | float):
        return math.isclose(float(predicted), float(expected), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, dict) and isinstance(predicted, dict):
        return expected.keys() == predicted.keys() and all(arguments_match(predicted[k], expected[k]) for k in expected)
    if isinstance(expected, list) and isinstance(predicted, list):
        return len(expected) == len(predicted) and all(
            arguments_match(p, e) for p, e in zip(predicted, expected, strict=True)
        )
    return type(expected) is type(predicted) and expected == predicted


def score_tool_call(parsed: ParsedOutput, record: dict[str, Any]) -> dict[str, bool]:
    """Judge the first call (if any) of an answer against the record's `expected` call (or null: no call)."""
    expected = record.get("expected")
    calls = parsed.tool_calls
    if expected is None:
        return {"expects_call": False, "called": bool(calls), "no_call_ok": not calls}
    offered = {t["function"]["name"]: t for t in record.get("tools", [])}
    called = bool(calls)
    name_ok = schema_ok = args_ok = False
    if called:
        first = calls[0]
        name_ok = first.name == expected["name"]
        try:
            arguments = json.loads(first.arguments_json)
        except ValueError:
            arguments = None
        schema_ok = first.name in offered and arguments is not None and arguments_valid(offered[first.name], arguments)
        args_ok = name_ok and arguments_match(arguments, expected["arguments"])
    return {"expects_call": True, "called": called, "tool_ok": name_ok, "schema_ok": schema_ok, "args_ok": args_ok}


def _scalars(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _scalars(v)]
    if isinstance(value, list):
        return _scalars(value[0]) if value else []  # a ranked list: its first item is the answer
    return [value]


def result_keys(result: str, request: str) -> list[str | float]:
    """What an answer must mention to use a tool result: its values not already in the request.

    JSON results give their scalar leaves (strings of 3+ characters, numbers other than 0 and 1); plain text
    gives its last number, or the whole text when it has none.
    """
    try:
        leaves = _scalars(json.loads(result))
    except ValueError:
        number = last_number(result)
        leaves = [number] if number is not None else [result.strip()]
    keys: list[str | float] = []
    for leaf in leaves:
        if isinstance(leaf, bool) or leaf is None:
            continue
        if isinstance(leaf, int | float):
            if float(leaf) not in (0.0, 1.0) and not any(_num_eq(n, float(leaf)) for n in _numbers(request)):
                keys.append(float(leaf))
        elif isinstance(leaf, str) and len(leaf.strip()) >= 3 and leaf not in request:
            keys.append(leaf)
    return keys


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in _NUMBER.findall(text)]


def _num_eq(a: float, b: float) -> bool:
    """Equal, or `a` is `b` rounded to 2+ decimals (answers may round a long result)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (a != round(a) and abs(a - b) <= 0.005 + 1e-9)


def result_mentioned(answer: str, result: str, request: str) -> bool:
    """The final answer mentions at least one value of the tool result that the request did not contain."""
    keys = result_keys(result, request)
    found = _numbers(answer)
    return any(any(_num_eq(n, key) for n in found) if isinstance(key, float) else key in answer for key in keys)


def tool_result(record: dict[str, Any], index: int) -> str:
    """The result fed back for the expected call: the record's own `result`, else the real built-in's through
    `tools.registry`, else (a synthetic tool, which has no implementation) `{"status": "ok", "id": ...}` as in
    the training dialogues."""
    if isinstance(record.get("result"), str):
        return str(record["result"])
    expected = record["expected"]
    registry = default_registry()
    if expected["name"] in registry:
        try:
            return registry.call(expected["name"], expected["arguments"])
        except ToolError as exc:
            return f"error: {exc}"
    noun = expected["name"].rsplit("_", 1)[-1]  # synthetic tools are verb_noun; ids look like "ORD-1234"
    return json.dumps({"status": "ok", "id": f"{noun[:3].upper() or 'REC'}-{1000 + index}"})


def _tool_jobs(
    tok: Tokenizer, records: Sequence[dict[str, Any]], constrained: bool, max_new_tokens: int, vocab_size: int
) -> tuple[list[Job], list[Job], list[str]]:
    """First-round jobs, final-answer jobs (after the expected call and its result) and the results fed."""

    def job(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Job:
        return chat_job(tok, vocab_size, ChatRequest(messages, tools, grammar=constrained), max_new_tokens)

    first, final, results = [], [], []
    for i, record in enumerate(records):
        first.append(job(record["messages"], record["tools"]))
        if record.get("expected") is None:
            continue
        call_id = f"call_eval{i:012d}"
        call = {
            "name": record["expected"]["name"],
            "arguments": json.dumps(record["expected"]["arguments"], ensure_ascii=False),
        }
        results.append(tool_result(record, i))
        history = [
            *record["messages"],
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": results[-1]},
        ]
        final.append(job(history, record["tools"]))
    return first, final, results


def evaluate_tools(
    engine: Engine,
    tok: Tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    constrained: bool,
    max_new_tokens: int = 160,
) -> dict[str, Any]:
    """Right tool, schema-valid and correct arguments, no call when none fits, and the answer after the result."""
    first, final, results = _tool_jobs(tok, records, constrained, max_new_tokens, engine.vocab_size)
    gens = run_jobs(engine, first + final)
    finals = iter(zip(gens[len(first) :], results, strict=True))
    samples: list[dict[str, Any]] = []
    for record, gen in zip(records, gens[: len(first)], strict=True):
        parsed, parser = parse_all(tok, gen.token_ids, thinking=False, parse_tools=True)
        row: dict[str, Any] = {"expected": record.get("expected"), "content": parsed.content}
        row["calls"] = [{"name": c.name, "arguments": c.arguments_json} for c in parsed.tool_calls]
        row |= score_tool_call(parsed, record) | {"parse_failed": parser.tool_parse_failed}
        if record.get("expected") is not None:
            final_gen, result = next(finals)
            answer, _ = parse_all(tok, final_gen.token_ids, thinking=False, parse_tools=True)
            request = " ".join(str(m.get("content") or "") for m in record["messages"])
            row |= {"result": result, "final_answer": answer.content}
            row["final_ok"] = not answer.tool_calls and result_mentioned(answer.content, result, request)
        samples.append(row)
    calls = [s for s in samples if s["expects_call"]]
    nones = [s for s in samples if not s["expects_call"]]
    return {
        "constrained": constrained,
        "samples_n": len(samples),
        "expects_call_n": len(calls),
        "expects_none_n": len(nones),
        "called": _fraction([s["called"] for s in calls]),
        "tool_selection": _fraction([s["tool_ok"] for s in calls]),
        "schema_valid": _fraction([s["schema_ok"] for s in calls]),
        "selection_and_valid": _fraction([s["tool_ok"] and s["schema_ok"] for s in calls]),
        "arguments_correct": _fraction([s["args_ok"] for s in calls]),
        "no_call_when_none": _fraction([s["no_call_ok"] for s in nones]),
        "final_answer": _fraction([s["final_ok"] for s in calls]),
        "parse_failures": sum(s["parse_failed"] for s in samples),
        "samples": samples,
    }
