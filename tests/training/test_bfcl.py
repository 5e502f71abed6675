"""`training.bfcl`: BFCL's AST scoring on hand-made calls (near misses included), the schema dialect, and
`minigpt-eval bfcl` end to end on the tiny checkpoint, in-process and through a live server with `--base-url`.

The data files here are made up in BFCL's format (no BFCL case is copied: BFCL is a test set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from minigpt_core.grammar import ToolCallConstraint
from minigpt_core.tokenizer import Tokenizer
from tests.server.conftest import live_server
from training import bfcl, eval_cli
from training.bfcl import Case, check_case, openai_tools, to_json_schema, tool_name

pytestmark = pytest.mark.usefixtures("one_thread")

AREA = {
    "name": "geo.rect_area",
    "description": "Area of a rectangle.",
    "parameters": {
        "type": "dict",
        "properties": {
            "width": {"type": "float", "description": "Width in metres."},
            "height": {"type": "integer", "description": "Height in metres."},
            "unit": {"type": "string", "description": "Unit (default 'm')."},
            "exact": {"type": "boolean", "description": "Exact arithmetic."},
        },
        "required": ["width", "height"],
    },
}
AREA_TRUTH = {"geo.rect_area": {"width": [2.5], "height": [4], "unit": ["m", ""], "exact": [""]}}
PING = {
    "name": "net_ping",
    "description": "Ping a host.",
    "parameters": {
        "type": "dict",
        "properties": {
            "host": {"type": "string"},
            "ports": {"type": "array", "items": {"type": "integer"}},
            "opts": {
                "type": "dict",
                "properties": {"timeout": {"type": "float"}, "mode": {"type": "string"}},
            },
        },
        "required": ["host"],
    },
}


def case(category: str, functions: list[dict[str, Any]], truth: list[dict[str, Any]]) -> Case:
    return Case(f"{category}_0", category, [{"role": "user", "content": "q"}], functions, truth)


def simple(**arguments: Any) -> str | None:
    return check_case(case("simple_python", [AREA], [AREA_TRUTH]), [("geo_rect_area", arguments)])


def test_a_call_with_the_allowed_values_passes() -> None:
    assert simple(width=2.5, height=4) is None
    assert simple(width=2.5, height=4, unit="m") is None


def test_an_integer_is_accepted_where_a_float_is_expected() -> None:
    truth = {"geo.rect_area": {"width": [3.0], "height": [4]}}
    assert check_case(case("simple_python", [AREA], [truth]), [("geo_rect_area", {"width": 3, "height": 4})]) is None


def test_wrong_types_fail_even_when_the_number_is_equal() -> None:
    assert simple(width=2.5, height=4.0) == "wrong type for 'height': float"
    assert simple(width=2.5, height=4, exact=1) == "wrong type for 'exact': int"
    assert simple(width="2.5", height=4) == "wrong type for 'width': str"
    truth = {"geo.rect_area": {"width": [2.5], "height": [1], "exact": [True]}}
    got = check_case(case("simple_python", [AREA], [truth]), [("geo_rect_area", {"width": 2.5, "height": True})])
    assert got == "wrong type for 'height': bool"  # a boolean is not an integer


def test_missing_extra_and_wrong_values() -> None:
    assert simple(width=2.5) == "missing required parameter 'height'"
    assert simple(width=2.5, height=4, colour="red") == "unexpected parameter 'colour'"
    assert simple(width=2.5, height=4, exact=True) == "wrong value for 'exact': true"  # only leaving it out
    assert simple(width=2.5, height=5) == "wrong value for 'height': 5"
    assert simple(width=2.5, height=4, unit="cm") == "wrong value for 'unit': \"cm\""


def test_optional_parameters_may_be_left_out_only_when_the_answer_allows_it() -> None:
    truth = {"geo.rect_area": {"width": [2.5], "height": [4], "unit": ["ft"]}}
    got = check_case(case("simple_python", [AREA], [truth]), [("geo_rect_area", {"width": 2.5, "height": 4})])
    assert got == "missing parameter 'unit'"


def test_strings_ignore_case_spaces_and_punctuation_but_not_letters() -> None:
    truth = {"geo.rect_area": {"width": [1.0], "height": [1], "unit": ["Square Metre"]}}
    one = case("simple_python", [AREA], [truth])
    for ok in ("square metre", "SQUARE-METRE", "square_metre.", " Square  Metre"):
        assert check_case(one, [("geo_rect_area", {"width": 1, "height": 1, "unit": ok})]) is None, ok
    assert check_case(one, [("geo_rect_area", {"width": 1, "height": 1, "unit": "square meter"})]) is not None


def test_names_are_compared_as_sent_and_the_call_count_matters() -> None:
    assert tool_name("geo.rect_area") == "geo_rect_area" and tool_name("a b/c-d") == "a_b_c-d"
    one = case("simple_python", [AREA], [AREA_TRUTH])
    good = ("geo_rect_area", {"width": 2.5, "height": 4})
    assert check_case(one, [("geo.rect_area", good[1])]) == "wrong function 'geo.rect_area'"
    assert check_case(one, []) == "0 call(s), expected 1"
    assert check_case(one, [good, good]) == "2 call(s), expected 1"
    assert check_case(one, [("geo_rect_area", '{"width": 2.5')]) == "arguments are not a JSON object"


def test_multiple_needs_the_right_function_among_those_offered() -> None:
    many = case("multiple", [PING, AREA], [AREA_TRUTH])
    assert check_case(many, [("geo_rect_area", {"width": 2.5, "height": 4})]) is None
    assert check_case(many, [("net_ping", {"host": "a"})]) == "wrong function 'net_ping'"


def test_parallel_calls_match_in_any_order_each_used_once() -> None:
    truth = [
        {"geo.rect_area": {"width": [1.0], "height": [2]}},
        {"geo.rect_area": {"width": [3.0], "height": [4]}},
    ]
    par = case("parallel", [AREA], truth)
    first, second = ("geo_rect_area", {"width": 1, "height": 2}), ("geo_rect_area", {"width": 3.0, "height": 4})
    assert check_case(par, [first, second]) is None
    assert check_case(par, [second, first]) is None
    assert check_case(par, [first, first]) is not None  # one call cannot stand for two
    assert check_case(par, [first]) == "1 call(s), expected 2"
    reason = check_case(par, [first, ("geo_rect_area", {"width": 3.0, "height": 5})])
    assert reason is not None and reason.startswith("no call matches geo_rect_area")


def test_irrelevance_passes_only_without_a_call() -> None:
    irr = case("irrelevance", [AREA], [])
    assert check_case(irr, []) is None
    assert check_case(irr, [("geo_rect_area", {"width": 1, "height": 1})]) is not None
    assert check_case(irr, [("geo_rect_area", '{"width": 1')]) is None  # BFCL: arguments that do not parse
    answers = [bfcl.Answer(), bfcl.Answer(calls=[("geo_rect_area", "{")]), bfcl.Answer(calls=[("geo_rect_area", {})])]
    stats = bfcl.score([irr] * 3, answers)["categories"]["irrelevance"]
    assert stats["correct"] == 2 and stats["strict_accuracy"] == pytest.approx(1 / 3)


def test_lists_dicts_and_nested_optional_keys() -> None:
    truth = {
        "net_ping": {
            "host": ["example.org"],
            "ports": [[80, 443], ""],
            "opts": [{"timeout": [1.5], "mode": ["fast", ""]}, ""],
        }
    }
    one = case("simple_python", [PING], [truth])

    def check(**arguments: Any) -> str | None:
        return check_case(one, [("net_ping", arguments)])

    assert check(host="Example.org") is None
    assert check(host="example.org", ports=[80, 443]) is None
    assert check(host="example.org", ports=[443, 80]) is not None  # list order matters
    assert check(host="example.org", ports=[80]) is not None
    assert check(host="example.org", ports=[80, 443.0]) == "wrong type for 'ports': list"
    assert check(host="example.org", opts={"timeout": 1.5}) is None  # "mode" may be left out
    assert check(host="example.org", opts={"timeout": 1.5, "mode": "FAST"}) is None
    assert check(host="example.org", opts={"mode": "fast"}) is not None  # "timeout" may not
    assert check(host="example.org", opts={"timeout": 1.5, "retries": 2}) is not None


def test_schema_dialect_becomes_json_schema_the_grammar_enforces(tiny_tokenizer: Tokenizer) -> None:
    bfcl_schema = {
        "type": "dict",
        "properties": {
            "point": {"type": "tuple", "items": {"type": "float"}},
            "data": {"type": "any", "description": "anything"},
            "meta": {"type": "dict", "properties": {"optional": {"type": "string"}}, "optional": True},
            "n": {"type": "integer", "default": 3},
        },
        "required": ["point", "ghost"],
    }
    assert to_json_schema(bfcl_schema) == {
        "type": "object",
        "properties": {
            "point": {"type": "array", "items": {"type": "number"}},
            "data": {"description": "anything"},
            "meta": {"type": "object", "properties": {"optional": {"type": "string"}}},
            "n": {"type": "integer", "default": 3},
        },
        "required": ["point"],
    }
    tools = openai_tools([{"name": "shape.fit", "description": "Fit.", "parameters": bfcl_schema}])
    assert tools[0]["function"]["name"] == "shape_fit"
    ToolCallConstraint(tiny_tokenizer, tools, "auto")  # compiles (an unenforceable schema raises here)


# ----- end to end -----

WEATHER = {
    "name": "weather.now",
    "description": "Current weather in a city.",
    "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CASES: dict[str, list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]] = {
    "simple_python": [("What is 2.5 by 4 in area?", [AREA], [AREA_TRUTH])] * 3,
    "multiple": [("Weather in Oslo?", [AREA, WEATHER], [{"weather.now": {"city": ["Oslo"]}}])] * 3,
    "parallel": [("Weather in Oslo and Lima?", [WEATHER], [{"weather.now": {"city": [c]}} for c in ("Oslo", "Lima")])]
    * 3,
    "irrelevance": [("Tell me a joke.", [WEATHER], [])] * 3,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bfcl")
    for category, rows in CASES.items():
        questions, answers = [], []
        for i, (text, functions, truth) in enumerate(rows):
            cid = f"{category}_{i}"
            questions.append({"id": cid, "question": [[{"role": "user", "content": text}]], "function": functions})
            answers.append({"id": cid, "ground_truth": truth})
        (root / f"BFCL_v4_{category}.json").write_text("\n".join(json.dumps(q) for q in questions) + "\n")
        if category != "irrelevance":
            (root / f"BFCL_v4_{category}.answers.json").write_text("\n".join(json.dumps(a) for a in answers))
    return root


def test_load_cases(data_dir: Path, tmp_path: Path) -> None:
    cases = bfcl.load_cases(data_dir, "parallel", limit=2)
    assert [c.id for c in cases] == ["parallel_0", "parallel_1"]
    assert cases[0].messages == [{"role": "user", "content": "Weather in Oslo and Lima?"}]
    assert len(cases[0].ground_truth) == 2
    (tmp_path / "BFCL_v4_multiple.json").write_text('{"id": "multiple_0", "question": [], "function": []}\n')
    with pytest.raises(bfcl.BfclError, match="answers.json: no such file"):
        bfcl.load_cases(tmp_path, "multiple")


def _run(argv: list[str], out: Path) -> dict[str, Any]:
    assert eval_cli.main(["bfcl", *argv, "--limit", "2", "--max-new-tokens", "24", "--out", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    return report


def test_cli_in_process_and_through_a_server_agree(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = _run(["--model", str(tiny_checkpoint), "--data", str(data_dir)], tmp_path / "local.json")
    table = capsys.readouterr().out
    for category in bfcl.CATEGORIES:
        assert category in table
        assert local["result"]["categories"][category]["n"] == 2
    assert local["result"]["total"]["n"] == 8
    offered = {c: {tool_name(f["name"]) for f in rows[0][1]} for c, rows in CASES.items()}
    for sample in local["result"]["samples"]:
        assert {call["name"] for call in sample["calls"]} <= offered[sample["category"]]  # the grammar held
    with live_server(tiny_checkpoint) as srv:
        remote = _run(["--base-url", srv.base_url, "--data", str(data_dir), "--api-key", "x"], tmp_path / "r.json")
    assert remote["target"] == f"tiny at {srv.base_url}"
    # greedy, the same template, grammar and parser: the server path gives the same calls and text
    strip = [{k: s[k] for k in ("id", "ok", "calls", "content")} for s in local["result"]["samples"]]
    assert strip == [{k: s[k] for k in ("id", "ok", "calls", "content")} for s in remote["result"]["samples"]]


def test_cli_bad_input_is_one_line_and_nonzero(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv(bfcl.DATA_ENV, raising=False)
    model = ["--model", str(tiny_checkpoint)]
    assert eval_cli.main(["bfcl", *model]) == 2
    assert eval_cli.main(["bfcl", *model, "--data", str(data_dir), "--categories", "simple,multiple"]) == 2
    assert eval_cli.main(["bfcl", *model, "--data", str(tmp_path / "nope")]) == 2
    assert eval_cli.main(["bfcl", *model, "--data", str(data_dir), "--limit", "0"]) == 2
    assert eval_cli.main(["bfcl", "--data", str(data_dir)]) == 2  # neither --model nor --base-url
    assert eval_cli.main(["bfcl", "--base-url", "http://127.0.0.1:9/v1", "--data", str(data_dir)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 6 and all(line.startswith("minigpt-eval: error: ") for line in errors), errors
    assert f"or set {bfcl.DATA_ENV}" in errors[0] and "cannot reach" in errors[-1]
    monkeypatch.setenv(bfcl.DATA_ENV, str(data_dir))
    args = ["bfcl", *model, "--categories", "irrelevance", "--limit", "1", "--max-new-tokens", "4"]
    assert eval_cli.main(args) == 0
    assert "irrelevance" in capsys.readouterr().out
