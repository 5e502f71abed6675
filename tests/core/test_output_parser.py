"""Tests for minigpt_core.output_parser: reasoning/content split, tool calls, stop strings, streaming."""

from __future__ import annotations

import itertools
import json

from minigpt_core.output_parser import (
    Content,
    Finished,
    OutputParser,
    Reasoning,
    Segment,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    accumulate,
    parse_all,
)
from minigpt_core.tokenizer import (
    IM_END_ID,
    NUM_SPECIAL,
    THINK_END_ID,
    THINK_ID,
    TOOL_CALL_END_ID,
    TOOL_CALL_ID,
    train_tokenizer,
)

TAGS = [b"<|endoftext|>", b"<|im_start|>", b"<|im_end|>", b"<think>", b"</think>", b"<tool_call>"]
TAGS += [b"</tool_call>", b"<tool_response>", b"</tool_response>"]


class ByteTok:
    """Stub vocab: the 9 fixed specials, then one token per byte (every multi-byte char is split)."""

    def token_bytes(self, token_id: int) -> bytes:
        return TAGS[token_id] if token_id < NUM_SPECIAL else bytes([token_id - 100])


def ids(*parts: str | int) -> list[int]:
    out: list[int] = []
    for part in parts:
        out += [part] if isinstance(part, int) else [100 + b for b in part.encode("utf-8")]
    return out


def stream(token_ids: list[int], **kwargs: object) -> tuple[list[list[Segment]], OutputParser]:
    kwargs.setdefault("thinking", False)
    kwargs.setdefault("parse_tools", True)
    parser = OutputParser(ByteTok(), **kwargs)  # type: ignore[arg-type]
    steps = [parser.push(i) for i in token_ids]
    steps.append(parser.finish())
    return steps, parser


def flat(steps: list[list[Segment]]) -> list[Segment]:
    return [seg for step in steps for seg in step]


def call(name: str, arguments: object) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def test_reasoning_then_content_and_tags_never_in_text() -> None:
    tokens = ids("\nLet me think 🤔.\n", THINK_END_ID, "\n\nThe answer is 42.", IM_END_ID)
    steps, parser = stream(tokens, thinking=True)
    out = accumulate(flat(steps))
    assert out.reasoning == "Let me think 🤔."
    assert out.content == "The answer is 42."
    assert parser.reasoning_tokens == len(ids("\nLet me think 🤔.\n"))  # the tags are not counted
    segs = flat(steps)
    first_content = next(i for i, s in enumerate(segs) if isinstance(s, Content))
    assert all(isinstance(s, Reasoning) for s in segs[:first_content])
    assert all("<" not in s.text for s in segs if isinstance(s, Content | Reasoning))


def test_model_written_think_tag_is_accepted() -> None:
    out, parser = parse_all(ByteTok(), ids(THINK_ID, "hmm", THINK_END_ID, "ok"), thinking=True, parse_tools=False)
    assert (out.reasoning, out.content, parser.reasoning_tokens) == ("hmm", "ok", 3)


def test_stray_think_block_swallowed_when_thinking_off() -> None:
    out, parser = parse_all(
        ByteTok(), ids(THINK_ID, "\n\n", THINK_END_ID, "\n\nHi!"), thinking=False, parse_tools=False
    )
    assert (out.reasoning, out.content) == ("", "Hi!")
    assert parser.reasoning_tokens == 2
    late, _ = parse_all(ByteTok(), ids("Hi ", THINK_ID, "there"), thinking=False, parse_tools=False)
    assert late.content == "Hi there"  # a tag later in the answer is just dropped


def test_swallow_think_off_keeps_every_token_text() -> None:
    """/v1/completions: plain text, the tags dropped and nothing else (so logprobs can line up with it)."""
    tokens = ids(THINK_ID, "\n\n", THINK_END_ID, "\n\nHi!")
    out, _ = parse_all(ByteTok(), tokens, thinking=False, parse_tools=False)
    assert out.content == "Hi!"
    parser = OutputParser(ByteTok(), thinking=False, parse_tools=False, swallow_think=False)
    segs = [seg for t in tokens for seg in parser.push(t)] + parser.finish()
    assert accumulate(segs).content == "\n\n\n\nHi!"


def test_single_tool_call_with_text_before() -> None:
    args = {"expression": "2+3*4", "note": "中文 😀"}
    tokens = ids("Let me compute.\n", TOOL_CALL_ID, "\n" + call("calculator", args) + "\n", TOOL_CALL_END_ID)
    steps, parser = stream(tokens)
    segs = flat(steps)
    n_text = sum(isinstance(s, Content) for s in segs)
    assert "".join(s.text for s in segs[:n_text] if isinstance(s, Content)) == "Let me compute."
    arguments_json = json.dumps(args, ensure_ascii=False)
    assert segs[n_text] == ToolCallStart(0, "calculator") and segs[-1] == ToolCallEnd(0, arguments_json)
    assert "".join(s.fragment for s in segs if isinstance(s, ToolCallArgs)) == arguments_json
    out = accumulate(segs)
    assert out.content == "Let me compute."
    assert [(c.index, c.name, json.loads(c.arguments_json)) for c in out.tool_calls] == [(0, "calculator", args)]
    assert not parser.tool_parse_failed


def test_two_tool_calls_whitespace_between_is_not_content() -> None:
    tokens = ids(
        TOOL_CALL_ID, call("a", {"x": 1}), TOOL_CALL_END_ID, "\n", TOOL_CALL_ID,
        call("b", {}), TOOL_CALL_END_ID, "\n", IM_END_ID,
    )  # fmt: skip
    out, parser = parse_all(ByteTok(), tokens, thinking=False, parse_tools=True)
    assert [(c.index, c.name, c.arguments_json) for c in out.tool_calls] == [(0, "a", '{"x": 1}'), (1, "b", "{}")]
    assert out.content == "" and parser.tool_calls == 2


def test_tool_call_after_reasoning_and_double_encoded_arguments() -> None:
    raw = json.dumps({"name": "f", "arguments": json.dumps({"q": "x"})})
    tokens = ids("plan", THINK_END_ID, TOOL_CALL_ID, raw, TOOL_CALL_END_ID)
    out, _ = parse_all(ByteTok(), tokens, thinking=True, parse_tools=True)
    assert out.reasoning == "plan" and out.content == ""
    assert [(c.name, c.arguments_json) for c in out.tool_calls] == [("f", '{"q": "x"}')]


def test_bad_json_falls_back_to_content() -> None:
    bad = '{"name": calc, "arguments": {"x": 1}}'  # never got as far as a name and the start of the arguments
    steps, parser = stream(ids("Sure. ", TOOL_CALL_ID, bad, TOOL_CALL_END_ID, " done"))
    out = accumulate(flat(steps))
    assert parser.tool_parse_failed and out.tool_calls == []
    assert bad.strip() in out.content and out.content.startswith("Sure.") and out.content.endswith("done")
    for wrong in ('["list"]', '{"arguments": {}}', '{"name": "f", "arguments": 3}'):
        out2, p2 = parse_all(ByteTok(), ids(TOOL_CALL_ID, wrong, TOOL_CALL_END_ID), thinking=False, parse_tools=True)
        assert p2.tool_parse_failed and out2.content == wrong


def test_unterminated_call_at_finish() -> None:
    good, p1 = parse_all(ByteTok(), ids(TOOL_CALL_ID, call("f", {"a": 1})), thinking=False, parse_tools=True)
    assert [c.name for c in good.tool_calls] == ["f"] and not p1.tool_parse_failed
    cut, p2 = parse_all(ByteTok(), ids(TOOL_CALL_ID, '{"name": "f", "argu'), thinking=False, parse_tools=True)
    assert cut.tool_calls == [] and p2.tool_parse_failed and cut.content == '{"name": "f", "argu'


def test_parse_tools_off_keeps_text_drops_tags() -> None:
    out, parser = parse_all(ByteTok(), ids("a", TOOL_CALL_ID, "b", TOOL_CALL_END_ID), thinking=False, parse_tools=False)
    assert out.content == "ab" and out.tool_calls == [] and not parser.tool_parse_failed


def test_stop_string_split_across_tokens_in_content() -> None:
    steps, parser = stream(ids("Hello STOP", "more text"), stops=["STOP"])
    segs = flat(steps)
    assert segs[-1] == Finished("stop")
    assert accumulate(segs).content == "Hello "
    assert parser.stopped and parser.mode == "done"
    stop_step = next(i for i, step in enumerate(steps) if Finished("stop") in step)
    assert stop_step == len(ids("Hello STOP")) - 1  # reported at the token that completes the match
    assert all(step == [] for step in steps[stop_step + 1 :])
    assert parser.push(ids("x")[0]) == []


def test_stop_string_in_reasoning_and_partial_stop_released() -> None:
    out, _ = parse_all(ByteTok(), ids("think ##", THINK_END_ID, "x"), thinking=True, parse_tools=False, stops=["##"])
    assert out.stopped and out.reasoning == "think " and out.content == ""
    held, _ = parse_all(ByteTok(), ids("value #"), thinking=False, parse_tools=False, stops=["##"])
    assert not held.stopped and held.content == "value #"


def test_emoji_split_across_tokens_never_half_emitted() -> None:
    text = "Hi 😀👍🏽 你好"
    steps, _ = stream(ids(text))
    texts = [s.text for s in flat(steps) if isinstance(s, Content)]
    assert "".join(texts) == text
    assert all("\ufffd" not in t for t in texts)


def test_stream_and_one_shot_agree_with_real_tokenizer() -> None:
    corpus = ["你好世界，今天天气很好。", "calculator expression 😀", "the answer is"] * 20
    tok = train_tokenizer(corpus, vocab_size=NUM_SPECIAL + 256 + 30)
    args = {"expression": "1+1", "备注": "🎉"}
    tokens = [
        THINK_ID, *tok.encode("想一想😀"), THINK_END_ID, *tok.encode("\n\n好的。\n"),
        TOOL_CALL_ID, *tok.encode(call("calculator", args)), TOOL_CALL_END_ID, IM_END_ID,
    ]  # fmt: skip
    parser = OutputParser(tok, thinking=True, parse_tools=True, stops=[])
    segs: list[Segment] = []
    for t in tokens:
        segs += parser.push(t)
    segs += parser.finish()
    out, _ = parse_all(tok, tokens, thinking=True, parse_tools=True)
    assert accumulate(segs) == out
    assert (out.reasoning, out.content) == ("想一想😀", "好的。")
    assert json.loads(out.tool_calls[0].arguments_json) == args
    assert out.tool_calls[0].arguments_json == json.dumps(args, ensure_ascii=False)


def test_tool_call_streams_name_then_arguments_as_generated() -> None:
    """OpenAI's stream shape: the name as soon as it is known, then the arguments text token by token."""
    args = {"q": 'a}b{"c\\', "n": [1, {"x": 2}], "s": "中文"}  # braces and escapes inside strings
    arguments_json = json.dumps(args, ensure_ascii=False)
    head = '\n{"name": "search", "arguments": '
    tokens = ids("Sure.", TOOL_CALL_ID, head, arguments_json, "}\n", TOOL_CALL_END_ID, IM_END_ID)
    steps, parser = stream(tokens)
    start_step = next(i for i, step in enumerate(steps) if ToolCallStart(0, "search") in step)
    end_step = next(i for i, step in enumerate(steps) if any(isinstance(s, ToolCallEnd) for s in step))
    assert start_step == len(ids("Sure.", TOOL_CALL_ID, head))  # at the `{` that opens the arguments
    assert end_step == len(ids("Sure.", TOOL_CALL_ID, head, arguments_json, "}\n"))  # at </tool_call>
    fragments = [(i, s.fragment) for i, step in enumerate(steps) for s in step if isinstance(s, ToolCallArgs)]
    # a fragment at every token that completes a character of the arguments (the stub has one token per byte)
    assert fragments[0][0] == start_step and all(a[0] < b[0] for a, b in itertools.pairwise(fragments))
    assert [f for _, f in fragments] == list(arguments_json)
    # that add up to the arguments exactly: not the closing brace of the call, not the whitespace after it
    assert "".join(f for _, f in fragments) == arguments_json
    assert steps[end_step] == [ToolCallEnd(0, arguments_json)]
    out = accumulate(flat(steps))
    assert out.content == "Sure." and [(c.name, json.loads(c.arguments_json)) for c in out.tool_calls] == [
        ("search", args)
    ]
    assert not parser.tool_parse_failed


def test_streamed_call_cut_short_keeps_its_arguments_text() -> None:
    """Once the name and arguments have been streamed, a call cut off (max_tokens) stays a call, as OpenAI's does."""
    out, parser = parse_all(
        ByteTok(), ids(TOOL_CALL_ID, '{"name": "f", "arguments": {"x": [1, '), thinking=False, parse_tools=True
    )
    assert [(c.index, c.name, c.arguments_json) for c in out.tool_calls] == [(0, "f", '{"x": [1, ')]
    assert parser.tool_parse_failed and out.content == ""


def test_call_with_arguments_first_is_parsed_at_its_end() -> None:
    raw = '{"arguments": {"a": 1}, "name": "f"}'
    steps, parser = stream(ids(TOOL_CALL_ID, raw, TOOL_CALL_END_ID))
    assert all(step == [] for step in steps[:-2])  # nothing to stream before the name is known
    assert steps[-2] == [ToolCallStart(0, "f"), ToolCallArgs(0, '{"a": 1}'), ToolCallEnd(0, '{"a": 1}')]
    assert not parser.tool_parse_failed


# --- push_many: a batch of ids parses as the same ids pushed one by one --------------------------------
_PIECES = [b'{"name": "f", "arguments": {"a": [1, "}"]}}', b"ab", b"a b ", b"\xe2\x82\xac", b"\xf0\x9f", b"\n"]


def _one_by_one(ids: list[int], parser: OutputParser, stop_at_call_end: bool) -> tuple[list[Segment], int]:
    segments: list[Segment] = []
    for n, token_id in enumerate(ids):
        new = parser.push(token_id)
        segments += new
        if parser.mode == "done" or (stop_at_call_end and any(isinstance(s, ToolCallEnd) for s in new)):
            return segments, n + 1
    return segments + parser.finish(), len(ids)


def _in_batches(
    ids: list[int], parser: OutputParser, stop_at_call_end: bool, cuts: list[int]
) -> tuple[list[Segment], int]:
    segments: list[Segment] = []
    taken = 0
    for start, end in itertools.pairwise([0, *cuts, len(ids)]):
        new, n = parser.push_many(ids[start:end], stop_at_call_end=stop_at_call_end)
        segments += new
        taken += n
        if n < end - start or parser.mode == "done":
            return segments, taken
        if stop_at_call_end and any(isinstance(s, ToolCallEnd) for s in new):
            return segments, taken
    return segments + parser.finish(), taken


def test_push_many_equals_pushing_one_by_one() -> None:
    """Every mix of text (split characters, a call in the template's layout), tags, stop strings and thinking;
    cut into batches every way: the same text, calls, stop, reasoning count, and the same number of ids taken."""
    import random

    rng = random.Random(0)
    specials = [THINK_ID, THINK_END_ID, TOOL_CALL_ID, TOOL_CALL_END_ID, IM_END_ID]
    for trial in range(400):
        ids: list[int] = []
        for _ in range(rng.randrange(1, 8)):
            if rng.random() < 0.3:
                ids.append(rng.choice(specials))
            else:
                ids += [100 + b for b in rng.choice(_PIECES)]
        cuts = sorted(rng.sample(range(1, len(ids)), min(len(ids) - 1, rng.randrange(0, 6)))) if len(ids) > 1 else []
        kw = {"thinking": rng.random() < 0.5, "parse_tools": rng.random() < 0.7, "stops": rng.choice([(), ("b",)])}
        stop_at_call_end = rng.random() < 0.5
        one = OutputParser(ByteTok(), **kw)  # type: ignore[arg-type]
        many = OutputParser(ByteTok(), **kw)  # type: ignore[arg-type]
        seg_one, taken_one = _one_by_one(ids, one, stop_at_call_end)
        seg_many, taken_many = _in_batches(ids, many, stop_at_call_end, cuts)
        assert accumulate(seg_many) == accumulate(seg_one), (trial, ids, cuts, kw)
        assert taken_many == taken_one, (trial, ids, cuts, kw)
        assert (many.reasoning_tokens, many.tool_calls, many.tool_parse_failed) == (
            one.reasoning_tokens,
            one.tool_calls,
            one.tool_parse_failed,
        )


def test_push_many_takes_the_ids_up_to_a_stop_string_only() -> None:
    parser = OutputParser(ByteTok(), thinking=False, parse_tools=False, stops=["cd"])
    ids = [100 + b for b in b"abcdef"]
    segments, taken = parser.push_many(ids)
    assert taken == 4 and accumulate(segments).content == "ab" and accumulate(segments).stopped
