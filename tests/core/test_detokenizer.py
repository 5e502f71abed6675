"""Tests for minigpt_core.detokenizer: UTF-8-safe incremental decoding and stop-string hold-back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt_core.detokenizer import IncrementalDetokenizer, StopStringMatcher
from minigpt_core.tokenizer import NUM_SPECIAL, Tokenizer, train_tokenizer

TEXT = "你好，世界！😀👍🏽 café ñ — 中文测试🎉"


def _byte_vocab() -> dict[int, bytes]:
    """id 100 + b is the single byte b: the worst case, every multi-byte character split across tokens."""
    return {100 + b: bytes([b]) for b in range(256)}


def _bytewise_ids(text: str) -> list[int]:
    return [100 + b for b in text.encode("utf-8")]


def test_multibyte_characters_split_byte_by_byte() -> None:
    vocab = _byte_vocab()
    detok = IncrementalDetokenizer(vocab.__getitem__)
    pieces = [detok.push(i) for i in _bytewise_ids(TEXT)]
    assert "".join(pieces) + detok.flush() == TEXT
    assert "\ufffd" not in "".join(pieces)  # never a half character on the way
    emoji_bytes = "😀".encode()
    start = TEXT.index("😀")
    offset = len(TEXT[:start].encode())
    assert pieces[offset : offset + 3] == ["", "", ""]  # the first three bytes of the emoji hold back
    assert pieces[offset + 3] == "😀" and len(emoji_bytes) == 4


def test_skip_ids_and_invalid_bytes() -> None:
    vocab = {1: b"<tag>", 2: b"\xf0\x9f", 3: b"ok", 4: b"\xff"}
    detok = IncrementalDetokenizer(vocab.__getitem__, skip_ids={1})
    assert detok.push(1) == ""
    assert detok.push(2) == ""
    assert detok.has_pending
    assert detok.flush() == "\ufffd"  # incomplete character at the end
    assert not detok.has_pending
    assert detok.push(3) == "ok"
    assert detok.push(4) == "\ufffd"  # a byte that can never start a character is replaced at once


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(max_size=40), st.lists(st.integers(min_value=1, max_value=5), max_size=40))
def test_incremental_equals_one_shot_decode(data: bytes, cuts: list[int]) -> None:
    detok = IncrementalDetokenizer(lambda _i: b"")
    out, pos = [], 0
    for cut in [*cuts, len(data)]:
        out.append(detok.push_bytes(data[pos : pos + cut]))
        pos += cut
    out.append(detok.push_bytes(data[pos:]))
    assert "".join(out) + detok.flush() == data.decode("utf-8", errors="replace")


def test_real_tokenizer_chinese_and_emoji() -> None:
    corpus = ["你好世界，今天天气很好。", "我喜欢学习中文和机器学习。", "hello world 🙂 emoji", "the cat sat"] * 20
    tok: Tokenizer = train_tokenizer(corpus, vocab_size=NUM_SPECIAL + 256 + 40)
    text = "你好！天气🙂😀很好 🎉 learning"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok.token_bytes)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) + detok.flush() == text == tok.decode(ids)
    partial = [i for i in ids if _is_partial_utf8(tok.token_bytes(i))]
    assert partial  # some tokens hold only part of a character: the test really exercises buffering
    assert all("\ufffd" not in p for p in pieces)


def _is_partial_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _stream(matcher: StopStringMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    emitted, stopped = [], False
    for piece in pieces:
        emit, stopped = matcher.push(piece)
        emitted.append(emit)
        if stopped:
            break
    if not stopped:
        emitted.append(matcher.flush())
    return emitted, stopped


def test_stop_string_split_across_pushes_never_leaks() -> None:
    matcher = StopStringMatcher(["END"])
    emitted, stopped = _stream(matcher, ["Hello E", "N", "D and more"])
    assert stopped and matcher.matched == "END"
    assert emitted == ["Hello ", "", ""]
    assert "".join(emitted) == "Hello "
    assert matcher.push("later") == ("", True)
    assert matcher.flush() == ""


def test_partial_stop_is_released_when_it_cannot_match() -> None:
    matcher = StopStringMatcher(["END"])
    emitted, stopped = _stream(matcher, ["abc E", "N", "x", " tail E"])
    assert not stopped
    assert emitted == ["abc ", "", "ENx", " tail ", "E"]  # the final "E" comes out at flush


def test_earliest_of_several_stops_wins_and_overlaps() -> None:
    matcher = StopStringMatcher(["world", "lo w", ""])
    assert matcher.push("hello world") == ("hel", True)
    assert matcher.matched == "lo w"
    overlapping = StopStringMatcher(["aab"])
    assert _stream(overlapping, ["a", "a", "a", "b!"]) == (["", "", "a", ""], True)


@pytest.mark.parametrize("stop", ["。", "😀", "停止"])
def test_unicode_stop_strings(stop: str) -> None:
    text = f"前面的文字{stop}后面"
    matcher = StopStringMatcher([stop])
    emitted, stopped = _stream(matcher, list(text))
    assert stopped and "".join(emitted) == "前面的文字"


def test_no_stops_passes_through() -> None:
    matcher = StopStringMatcher([])
    assert matcher.push("anything") == ("anything", False)
    assert matcher.flush() == ""


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(alphabet="abAB停", max_size=30), st.lists(st.integers(min_value=1, max_value=4), max_size=30))
def test_matcher_equals_one_shot_find(text: str, cuts: list[int]) -> None:
    stops = ["abA", "B停", "bb"]
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(text[pos : pos + cut])
        pos += cut
    pieces.append(text[pos:])
    emitted, stopped = _stream(StopStringMatcher(stops), pieces)
    hits = [text.find(s) for s in stops if s in text]
    assert stopped == bool(hits)
    assert "".join(emitted) == (text[: min(hits)] if hits else text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=12), st.data())
def test_push_many_equals_pushing_one_by_one(pieces: list[bytes], data: st.DataObject) -> None:
    """Split characters and invalid bytes included: a batch decodes to the per-token text, joined."""
    vocab = {NUM_SPECIAL + i: piece for i, piece in enumerate(pieces)}
    ids = list(vocab)
    cut = data.draw(st.integers(0, len(ids)))
    one = IncrementalDetokenizer(vocab.__getitem__, skip_ids=[ids[0]])
    many = IncrementalDetokenizer(vocab.__getitem__, skip_ids=[ids[0]])
    expected = "".join(one.push(t) for t in ids) + one.flush()
    assert many.push_many(ids[:cut]) + many.push_many(ids[cut:]) + many.flush() == expected
