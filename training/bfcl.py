"""BFCL (Berkeley Function Calling Leaderboard) on our model or any OpenAI-compatible server: data, schemas, scoring.

What it is: `load_cases` reads BFCL v4 data files (`BFCL_v4_<category>.json` and, except for `irrelevance`,
`BFCL_v4_<category>.answers.json`); `openai_tools` turns BFCL's schema dialect into OpenAI tools with JSON Schema
parameters; `check_case` scores a model's calls with BFCL's AST rules; `generate_in_process` (a checkpoint on our
`Engine`, through the chat template, the tool-call grammar and the output parser, as `minigpt-serve` does it) and
`generate_openai` (any server, through the `openai` SDK) produce the calls; `score` builds the report.
What it is not: the CLI (training/eval_cli.py, `minigpt-eval bfcl`), and never training data: BFCL is a test set.

Scoring (BFCL's AST checker, on the names as sent: every character outside `[A-Za-z0-9_-]` becomes `_`):
- simple / multiple: exactly one call, to the expected function; parallel: as many calls as expected, matched to
  the expected ones in any order (each call used once); irrelevance: no call that decodes (BFCL counts a call
  whose arguments are not valid JSON, e.g. cut by the token limit, as no call; `score` also reports the strict
  share with no call at all as `strict_accuracy`);
- a call: every required parameter present, no parameter the function does not declare or the answer does not
  list, every value of the declared type and equal to one of the allowed values; a parameter left out is fine
  only when `""` is among its allowed values;
- types: exact JSON types (a boolean is not an integer, 5.0 is not an integer); an integer is accepted where a
  float is expected (BFCL's Python rule; here also inside arrays, since JSON clients rarely keep `4.0`); a value
  of another type passes the type check when an allowed value has that type (BFCL's "variable" rule);
- values: strings compared lower-cased without spaces and `,./-_*^` (and `'` read as `"`), numbers as numbers,
  lists element by element in order, dicts key by key (each key's value among its own allowed values).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import DataError, TrainingError

logger = logging.getLogger(__name__)

CATEGORIES = ("simple_python", "multiple", "parallel", "irrelevance")
DATA_ENV = "MINIGPT_BFCL_DIR"  # the default of `--data`
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_STRIP = re.compile(r"[ ,./\-_*^]")
# BFCL type names -> JSON Schema types (None: no type, any value).
_JSON_TYPES: dict[str, str | None] = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "list": "array",
    "any": None,
    "bool": "boolean",
    "int": "integer",
}
# BFCL type names -> the Python type a parsed JSON value must have (None: any).
_PY_TYPES: dict[str, type | None] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": None,
}

Call = tuple[str, Any]  # (function name as the model sent it, parsed arguments; not a dict when they did not parse)


class BfclError(TrainingError):
    """The BFCL run cannot go on (data missing or malformed, server unreachable)."""


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]  # BFCL's own function descriptions
    ground_truth: list[dict[str, dict[str, list[Any]]]] = field(default_factory=list)  # [{name: {param: [...]}}]

    @property
    def tools(self) -> list[dict[str, Any]]:
        return openai_tools(self.functions)


@dataclass
class Answer:
    content: str = ""
    calls: list[Call] = field(default_factory=list)
    error: str | None = None  # the request failed (a 400, a prompt longer than the context, ...)


# ----- data -----


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from training.evals import jsonl_records  # the evals' reader (it imports the engine, so not at the top)

    if not path.is_file():
        raise BfclError(f"{path}: no such file")
    return list(jsonl_records(path, "id", str))


def load_cases(data_dir: Path, category: str, limit: int | None = None) -> list[Case]:
    """The first `limit` cases of one category (all when None), with their ground truth."""
    if category not in CATEGORIES:
        raise BfclError(f"unknown BFCL category {category!r} (one of {', '.join(CATEGORIES)})")
    path = Path(data_dir) / f"BFCL_v4_{category}.json"
    records = _read_jsonl(path)[:limit]
    answers: dict[str, Any] = {}
    if category != "irrelevance":
        answers = {r["id"]: r.get("ground_truth") for r in _read_jsonl(path.with_suffix(".answers.json"))}
    cases = []
    for r in records:
        turns, functions = r.get("question"), r.get("function")
        if (
            not isinstance(turns, list)
            or not all(isinstance(t, list) for t in turns)
            or not isinstance(functions, list)
        ):
            raise DataError(f"{path}: case {r['id']} needs a 'question' list of turns and a 'function' list")
        truth = answers.get(r["id"], [])
        if category != "irrelevance" and not (isinstance(truth, list) and truth):
            raise DataError(f"{path}: case {r['id']} has no ground truth in {path.with_suffix('.answers.json').name}")
        messages = [m for turn in turns for m in turn]
        cases.append(Case(r["id"], category, messages, functions, truth))
    return cases


# ----- schemas -----


def tool_name(name: str) -> str:
    """A BFCL function name as OpenAI-style APIs take it (BFCL's own rule: `math.factorial` -> `math_factorial`)."""
    return _NAME_CHARS.sub("_", name)


def to_json_schema(schema: Any) -> Any:
    """BFCL's schema dialect -> JSON Schema: `dict` -> object, `float` -> number, `tuple` -> array, `any` -> no type;
    the non-standard `optional` flag is dropped and `required` keeps only declared properties."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            kind = _JSON_TYPES.get(value, value)
            if kind is not None:
                out["type"] = kind
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key == "optional" and isinstance(value, bool):
            continue
        else:
            out[key] = value
    if isinstance(out.get("required"), list) and isinstance(out.get("properties"), dict):
        out["required"] = [name for name in out["required"] if name in out["properties"]]
    return out


def openai_tools(functions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function descriptions -> OpenAI `tools` (names made API-safe, parameters in JSON Schema)."""
    tools = []
    for fn in functions:
        params = to_json_schema(fn.get("parameters") or {"type": "dict", "properties": {}})
        function = {"name": tool_name(fn["name"]), "description": fn.get("description", ""), "parameters": params}
        tools.append({"type": "function", "function": function})
    return tools


# ----- scoring -----


def standardize(text: str) -> str:
    return _STRIP.sub("", text).lower().replace("'", '"')


def values_equal(value: Any, allowed: Any) -> bool:
    """`value` (from the model) equals one allowed alternative (from the ground truth); see the module docstring."""
    if isinstance(allowed, dict):
        if not isinstance(value, dict):
            return False
        if any(k not in allowed or not any(values_equal(v, a) for a in allowed[k]) for k, v in value.items()):
            return False
        return all(k in value or "" in alts for k, alts in allowed.items())
    if isinstance(allowed, list):
        return (
            isinstance(value, list)
            and len(value) == len(allowed)
            and all(values_equal(v, a) for v, a in zip(value, allowed, strict=True))
        )
    if isinstance(allowed, str):
        return isinstance(value, str) and standardize(value) == standardize(allowed)
    if isinstance(allowed, bool) or isinstance(value, bool):
        return isinstance(allowed, bool) and isinstance(value, bool) and value == allowed
    if isinstance(allowed, int | float):
        return isinstance(value, int | float) and float(value) == float(allowed)
    return bool(value is None and allowed is None)


def _type_ok(value: Any, schema: dict[str, Any], allowed: Sequence[Any]) -> bool:
    kind = schema.get("type")
    expected = _PY_TYPES.get(kind) if isinstance(kind, str) else None
    if expected is None:
        return True
    if not (type(value) is expected or (expected is float and type(value) is int)):
        # BFCL's "variable" rule: an allowed value of the given value's type
        return any(type(a) is type(value) for a in allowed if a != "")
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return all(_type_ok(v, items, []) for v in value)
    return True


def check_call(function: dict[str, Any], arguments: Any, expected: dict[str, list[Any]]) -> str | None:
    """Why a call with `arguments` to `function` (a BFCL description) misses `expected`, or None when it passes."""
    if not isinstance(arguments, dict):
        return "arguments are not a JSON object"
    params = function.get("parameters") or {}
    declared = params.get("properties") or {}
    for name in params.get("required") or []:
        if name not in arguments:
            return f"missing required parameter {name!r}"
    for name, value in arguments.items():
        if name not in declared or name not in expected:
            return f"unexpected parameter {name!r}"
        if not _type_ok(value, declared[name], expected[name]):
            return f"wrong type for {name!r}: {type(value).__name__}"
        if not any(values_equal(value, a) for a in expected[name]):
            return f"wrong value for {name!r}: {json.dumps(value, ensure_ascii=False)[:80]}"
    for name, alts in expected.items():
        if name not in arguments and "" not in alts:
            return f"missing parameter {name!r}"
    return None


def _expected_call(case: Case, wanted: dict[str, dict[str, list[Any]]]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(API name, BFCL description, allowed values) of one ground-truth call."""
    (name, allowed), *_ = wanted.items()
    function = next((f for f in case.functions if f["name"] == name), {"name": name})
    return tool_name(name), function, allowed


def check_case(case: Case, calls: Sequence[Call]) -> str | None:
    """Why the calls fail the case, or None when they pass (BFCL's AST rules for the case's category)."""
    if case.category == "irrelevance":  # as BFCL decodes: a call whose arguments do not parse is no call
        decoded = [c for c in calls if isinstance(c[1], dict)]
        return None if not decoded else f"made {len(decoded)} call(s) where no function fits"
    expected = [_expected_call(case, wanted) for wanted in case.ground_truth]
    if len(calls) != len(expected):
        return f"{len(calls)} call(s), expected {len(expected)}"
    unused = list(calls)
    for api_name, function, allowed in expected:  # each expected call takes the first unused call that passes
        reasons = []
        for call in unused:
            reason = (
                "wrong function " + repr(call[0]) if call[0] != api_name else check_call(function, call[1], allowed)
            )
            if reason is None:
                unused.remove(call)
                break
            reasons.append(reason)
        else:
            return reasons[0] if len(expected) == 1 else f"no call matches {api_name}: {'; '.join(reasons)}"
    return None


def score(cases: Sequence[Case], answers: Sequence[Answer]) -> dict[str, Any]:
    """Per-category n / correct / accuracy, the total, and one sample row per case."""
    samples: list[dict[str, Any]] = []
    for case, answer in zip(cases, answers, strict=True):
        failed = f"request failed: {answer.error}" if answer.error is not None else None
        reason = failed or check_case(case, answer.calls)
        samples.append(
            {
                "id": case.id,
                "category": case.category,
                "ok": reason is None,
                "reason": reason,
                "content": answer.content,
                "calls": [{"name": n, "arguments": a} for n, a in answer.calls],
            }
        )
    categories: dict[str, dict[str, Any]] = {}
    for row in samples:
        stats = categories.setdefault(row["category"], {"n": 0, "correct": 0})
        stats["n"] += 1
        stats["correct"] += int(row["ok"])
    for stats in categories.values():
        stats["accuracy"] = stats["correct"] / stats["n"]
    if "irrelevance" in categories:
        silent = [not row["calls"] and row["ok"] for row in samples if row["category"] == "irrelevance"]
        categories["irrelevance"]["strict_accuracy"] = sum(silent) / len(silent)
    n, correct = len(samples), sum(r["ok"] for r in samples)
    total = {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan")}
    return {"categories": categories, "total": total, "samples": samples}


# ----- generation -----


def _parse_arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # not a dict: check_call reports it


def generate_in_process(engine: Any, tok: Any, cases: Sequence[Case], *, max_new_tokens: int) -> list[Answer]:
    """Greedy answers from our engine, prepared as `minigpt-serve` prepares a chat request with `tools`
    (tool_choice "auto", parallel calls allowed, thinking off): template, grammar, output parser."""
    from minigpt_core.errors import InvalidRequest
    from minigpt_core.output_parser import parse_all
    from minigpt_core.prompting import ChatRequest
    from training.evals import Job, chat_job, run_jobs

    jobs: list[Job | None] = []
    errors: dict[int, str] = {}
    for i, case in enumerate(cases):
        try:
            jobs.append(chat_job(tok, engine.vocab_size, ChatRequest(case.messages, case.tools), max_new_tokens))
        except InvalidRequest as exc:  # the server would answer 400
            errors[i] = f"400: {exc}"
            jobs.append(None)
    generations = iter(run_jobs(engine, [j for j in jobs if j is not None]))
    answers = []
    for i, job in enumerate(jobs):
        if job is None:
            answers.append(Answer(error=errors[i]))
            continue
        gen = next(generations)
        if gen.finish_reason == "too_long":
            answers.append(Answer(error=f"prompt of {len(job.prompt_ids)} tokens leaves no room to answer"))
            continue
        parsed, _ = parse_all(tok, gen.token_ids, thinking=False, parse_tools=True)
        calls = [(c.name, _parse_arguments(c.arguments_json)) for c in parsed.tool_calls]
        answers.append(Answer(parsed.content, calls))
    return answers


def generate_openai(
    cases: Sequence[Case],
    *,
    base_url: str,
    api_key: str | None,
    model: str | None,
    max_tokens: int,
    concurrency: int = 4,
) -> tuple[str, list[Answer]]:
    """(model name, greedy answers) from an OpenAI-compatible server: chat.completions with `tools`, temperature 0.

    A request the server refuses (4xx/5xx) is that case's failure; a server that cannot be reached is BfclError.
    """
    try:
        import openai
    except ImportError as exc:
        raise BfclError("--base-url needs the openai package (pip install openai)") from exc
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=2, timeout=600)
    try:
        if model is None:
            listed = client.models.list().data
            if not listed:
                raise BfclError(f"{base_url} lists no models: pass --model-name")
            model = listed[0].id
    except openai.APIConnectionError as exc:
        raise BfclError(f"cannot reach {base_url}: {exc}") from exc
    except openai.APIStatusError as exc:
        raise BfclError(f"{base_url}/models answered {exc.status_code}: {exc.message}") from exc
    name = model

    def one(case: Case) -> Answer:
        try:
            r = client.chat.completions.create(
                model=name,
                messages=case.messages,  # type: ignore[arg-type]
                tools=case.tools,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=max_tokens,
            )
        except openai.APIConnectionError as exc:
            raise BfclError(f"cannot reach {base_url}: {exc}") from exc
        except openai.APIStatusError as exc:
            return Answer(error=f"{exc.status_code}: {exc.message}")
        message = r.choices[0].message
        calls = [
            (c.function.name, _parse_arguments(c.function.arguments))
            for c in message.tool_calls or []
            if c.type == "function"
        ]
        return Answer(message.content or "", calls)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return name, list(pool.map(one, cases))
