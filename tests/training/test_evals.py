"""`training.evals` scoring on hand-made outputs, and `minigpt-eval think | tools | identity` smoke runs.

The smoke runs use the random tiny checkpoint: its answers are noise, so they check the plumbing and the
guarantees that hold whatever the weights (the thinking budget, grammar-constrained calls are schema-valid).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.engine import Engine
from minigpt_core.output_parser import ParsedOutput, ParsedToolCall
from minigpt_core.tokenizer import IM_END_ID, THINK_END_ID, THINK_ID, TOOL_CALL_ID, Tokenizer
from training import eval_cli
from training.errors import DataError
from training.evals import (
    Job,
    answer_correct,
    arguments_match,
    greedy,
    identity_hit,
    load_records,
    reasoning_token_count,
    result_mentioned,
    run_jobs,
    score_tool_call,
    think_block_check,
    tool_result,
)

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add_numbers",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def test_think_block_check(tiny_tokenizer: Tokenizer) -> None:
    enc = tiny_tokenizer.encode
    good = [*enc("two plus three"), THINK_END_ID, *enc("five"), IM_END_ID]
    assert think_block_check(good, "two plus three", "five") is None
    assert think_block_check([*enc("two plus"), IM_END_ID], "two plus", "") == "unclosed"
    assert think_block_check([THINK_END_ID, *enc("five")], "", "five") == "empty reasoning"
    assert think_block_check([THINK_ID, *enc("a"), THINK_END_ID, *enc("b")], "a", "b") == "tag inside reasoning"
    tagged = [*enc("a"), THINK_END_ID, TOOL_CALL_ID, *enc("b")]
    assert think_block_check(tagged, "a", "b") == "tag in content"
    assert think_block_check([*enc("a"), THINK_END_ID, *enc("x")], "a", "so </think> 5") == "tag text in content"
    assert think_block_check([*enc("a"), THINK_END_ID, IM_END_ID], "a", " ") == "no answer"


def test_answer_correct_uses_the_last_number() -> None:
    assert answer_correct("12 + 9 = 21.", "21")
    assert answer_correct("So the total is 1,234 apples", "1234")
    assert answer_correct("It is 2.50", "2.5")
    assert not answer_correct("21 is not it, 22 is", "21")
    assert not answer_correct("211", "21")
    assert not answer_correct("no number here", "21")


def test_reasoning_token_count() -> None:
    assert reasoning_token_count([50, 51, THINK_END_ID, 60]) == 2
    assert reasoning_token_count([THINK_ID, 50, 51, 52, THINK_END_ID]) == 3
    assert reasoning_token_count([50, 51, 52]) == 3  # unclosed: everything is reasoning
    assert reasoning_token_count([THINK_END_ID]) == 0


def test_arguments_match_normalises_json() -> None:
    assert arguments_match({"b": 3.0, "a": "x"}, {"a": "x", "b": 3})
    assert arguments_match({"n": {"xs": [1, 2.0]}}, {"n": {"xs": [1.0, 2]}})
    assert not arguments_match({"xs": [2, 1]}, {"xs": [1, 2]})  # list order matters
    assert not arguments_match({"flag": 1}, {"flag": True})  # a bool is not a number
    assert not arguments_match({"a": "x"}, {"a": "x", "b": 1})
    assert not arguments_match({"a": "3"}, {"a": 3})
    assert not arguments_match(None, {"a": 1})


def _parsed(*calls: tuple[str, dict[str, Any]]) -> ParsedOutput:
    return ParsedOutput(tool_calls=[ParsedToolCall(i, n, json.dumps(a)) for i, (n, a) in enumerate(calls)])


def test_score_tool_call() -> None:
    record = {"tools": [ADD_TOOL], "expected": {"name": "add_numbers", "arguments": {"a": 2, "b": 3}}}
    right = score_tool_call(_parsed(("add_numbers", {"a": 2.0, "b": 3})), record)
    assert right == {"expects_call": True, "called": True, "tool_ok": True, "schema_ok": True, "args_ok": True}
    wrong_value = score_tool_call(_parsed(("add_numbers", {"a": 2, "b": 4})), record)
    assert wrong_value["schema_ok"] and not wrong_value["args_ok"]
    bad_type = score_tool_call(_parsed(("add_numbers", {"a": "2", "b": 3})), record)
    assert bad_type["tool_ok"] and not bad_type["schema_ok"] and not bad_type["args_ok"]
    unknown = score_tool_call(_parsed(("subtract", {"a": 2, "b": 3})), record)
    assert not unknown["tool_ok"] and not unknown["schema_ok"]
    assert not score_tool_call(_parsed(), record)["called"]
    none_record = {"tools": [ADD_TOOL], "expected": None}
    assert score_tool_call(_parsed(), none_record)["no_call_ok"]
    assert not score_tool_call(_parsed(("add_numbers", {"a": 1, "b": 1})), none_record)["no_call_ok"]


def test_result_mentioned() -> None:
    assert result_mentioned("The result is 3503.", "3503", "What is 437 + 73 * 42?")
    assert not result_mentioned("The result is 350.", "3503", "What is 437 + 73 * 42?")
    unit = "45.5 mi = 73.225152 km"
    assert result_mentioned("45.5 mi is 73.23 km.", unit, "What is 45.5 mi in km?")  # rounded is fine
    assert not result_mentioned("45.5 mi is far.", unit, "What is 45.5 mi in km?")  # only repeats the request
    record_id = json.dumps({"status": "ok", "id": "ORD-1042"})
    assert result_mentioned("Done (id ORD-1042).", record_id, "Cancel order 7")
    assert not result_mentioned("Done: the order was cancelled.", record_id, "Cancel order 7")
    date = json.dumps({"date": "2025-03-24", "weekday": "Monday"})
    assert result_mentioned("It is 2025-03-24.", date, "109 days after 2024-12-05?")


def test_identity_hit() -> None:
    assert identity_hit("I am MiniGPT, made by alex-ckl.com.", ["MiniGPT", "alex-ckl.com"])
    assert not identity_hit("I am MiniGPT.", ["MiniGPT", "alex-ckl.com"])
    assert not identity_hit("I am minigpt.", ["MiniGPT"])
    assert identity_hit("Arr! I'm Bob, a pirate.", ["Bob"], ["MiniGPT"])
    assert not identity_hit("I'm Bob. I am MiniGPT.", ["Bob"], ["MiniGPT"])  # the persona must win outright


def test_tool_result_runs_builtins_and_stands_in_for_synthetic_tools() -> None:
    calc = {"expected": {"name": "calculator", "arguments": {"expression": "2 + 3 * 4"}}}
    assert tool_result(calc, 0) == "14"
    synthetic = json.loads(tool_result({"expected": {"name": "cancel_order", "arguments": {}}}, 7))
    assert synthetic == {"status": "ok", "id": "ORD-1007"}
    assert tool_result({"expected": calc["expected"], "result": "given"}, 0) == "given"


def test_load_records(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [], "answer": str(i)}) for i in range(5)) + "\n\n")
    assert [r["answer"] for r in load_records(path, limit=3)] == ["0", "1", "2"]
    path.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(DataError, match=":2"):
        load_records(path)
    with pytest.raises(DataError):
        load_records(tmp_path / "missing.jsonl")


def test_run_jobs_marks_prompts_that_leave_no_room(tiny_checkpoint: Path) -> None:
    model, _ = load_checkpoint(tiny_checkpoint, "cpu")
    with Engine(model, max_num_seqs=2, max_model_len=32, max_queued=2) as engine:
        gens = run_jobs(engine, [Job([10] * 32, greedy(4)), Job([10, 11], greedy(4)), Job([12], greedy(3))])
    assert gens[0].finish_reason == "too_long" and gens[0].token_ids == []
    assert len(gens[1].token_ids) <= 4 and gens[1].finish_reason in ("stop", "length")
    assert len(gens[2].token_ids) <= 3


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _smoke(name: str, data: Path, ckpt: Path, out: Path, *extra: str) -> dict[str, Any]:
    argv = [name, "--model", str(ckpt), "--data", str(data), "--limit", "4", "--json", str(out), "--device", "cpu"]
    assert eval_cli.main([*argv, *extra]) == 0
    report = json.loads(out.read_text())
    assert report["eval"] == name and report["limit"] == 4
    return dict(report["result"])


def test_think_smoke(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [
        {"messages": [{"role": "user", "content": f"what is {i} plus {i}"}], "answer": str(2 * i)} for i in range(5)
    ]
    result = _smoke("think", _write(tmp_path / "t.jsonl", records), tiny_checkpoint, tmp_path / "t.json",
                    "--max-new-tokens", "24", "--budget", "3")  # fmt: skip
    assert result["samples_n"] == 4 and len(result["samples"]) == 4
    assert result["budget_compliance"] == 1.0 and result["max_budget_reasoning_tokens"] <= 3
    for key in ("well_formed", "accuracy_think", "accuracy_no_think", "accuracy_budget"):
        assert 0.0 <= result[key] <= 1.0
    assert "well-formed think blocks" in capsys.readouterr().out


def test_tools_smoke(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = [{"role": "user", "content": "add 2 and 3"}]
    call = {"messages": user, "tools": [ADD_TOOL], "expected": {"name": "add_numbers", "arguments": {"a": 2, "b": 3}}}
    none = {"messages": [{"role": "user", "content": "hello"}], "tools": [ADD_TOOL], "expected": None}
    data = _write(tmp_path / "tools.jsonl", [call, none, call, none, call])
    modes = _smoke("tools", data, tiny_checkpoint, tmp_path / "tools.json", "--max-new-tokens", "24")
    assert set(modes) == {"constrained", "free"}
    for mode in modes.values():
        assert mode["samples_n"] == 4 and mode["expects_call_n"] == 2 and mode["expects_none_n"] == 2
    for i, sample in enumerate(modes["constrained"]["samples"]):  # the grammar makes every call valid
        assert not sample["parse_failed"]
        if sample["expects_call"] and sample["called"]:
            assert sample["schema_ok"]
        if sample["expects_call"]:  # add_numbers is no built-in: the stand-in result, as in training
            assert json.loads(sample["result"]) == {"status": "ok", "id": f"NUM-{1000 + i}"}
    assert "arguments correct" in capsys.readouterr().out


def test_identity_smoke(tiny_checkpoint: Path, tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "who are you"}], "must_contain": ["MiniGPT"]}
    ] * 3
    asked = [{"role": "system", "content": "You are Bob, a pirate."}, {"role": "user", "content": "who are you"}]
    persona = {"kind": "persona", "must_contain": ["Bob"], "must_not_contain": ["MiniGPT"], "messages": asked}
    records += [persona] * 2
    result = _smoke("identity", _write(tmp_path / "i.jsonl", records), tiny_checkpoint, tmp_path / "i.json",
                    "--max-new-tokens", "16")  # fmt: skip
    assert result["samples_n"] == 4
    kinds = [s["kind"] for s in result["samples"]]
    assert kinds == ["identity", "identity", "identity", "persona"]
    assert result["accuracy"] == sum(s["hit"] for s in result["samples"][:3]) / 3
    assert result["persona_accuracy"] == float(result["samples"][3]["hit"])
    assert result["off_topic_accuracy"] is None  # no such records: null in the JSON report


def test_generation_evals_reject_bad_flags(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert eval_cli.main(["think", "--model", str(tiny_checkpoint), "--limit", "0"]) == 2
    assert eval_cli.main(["tools", "--model", str(tiny_checkpoint), "--data", str(tmp_path / "none.jsonl")]) == 1
