"""Data readers, the token cache, the SFT loss mask (token by token) and the packed, resumable loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from minigpt_core.tokenizer import EOT_ID, IM_END_ID, Tokenizer
from tests.training.helpers import pretrain_lines, sft_lines, write_jsonl
from training.errors import DataError
from training.loader import IGNORE_INDEX, PackedLoader, documents_of, load_datasets, resolve_data_files
from training.plaintext import iter_text_pieces
from training.shards import detect_format, normalize_conversation, open_shard, sft_tokens

CONVERSATION = [
    {"role": "system", "content": "You are MiniGPT."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hi there"},
    {"role": "user", "content": "what is two plus two?"},
    {"role": "assistant", "content": "four", "reasoning_content": "two and two make four"},
]


def _runs(ids: list[int], mask: list[bool]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, (tok, m) in enumerate(zip(ids, mask, strict=True)):
        if m:
            if i == 0 or not mask[i - 1]:
                runs.append([])
            runs[-1].append(tok)
    return runs


def test_sft_mask_covers_exactly_the_assistant_replies(tiny_tokenizer: Tokenizer) -> None:
    ids, mask = sft_tokens({"conversations": CONVERSATION}, tiny_tokenizer)
    texts = [tiny_tokenizer.decode(run) for run in _runs(ids, mask)]
    # The last reply keeps its reasoning; the think tags around it and <|im_end|> are learned, the rest is not.
    assert texts[0] == "hi there<|im_end|>"
    assert texts[1] == "two and two make four\n</think>\n\nfour<|im_end|>"
    assert len(texts) == 2
    assert ids.count(IM_END_ID) == 5
    learned_ends = [i for i, t in enumerate(ids) if t == IM_END_ID and mask[i]]
    assert len(learned_ends) == 2  # only the assistants' <|im_end|>


def test_loader_targets_follow_the_mask_token_by_token(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": CONVERSATION}] * 3)
    shard = open_shard(data, "sft", tiny_tokenizer)
    ids, mask = sft_tokens({"conversations": CONVERSATION}, tiny_tokenizer)
    assert shard.n_docs == 3 and shard.mask is not None
    np.testing.assert_array_equal(shard.doc(1)[0], ids)
    loader = PackedLoader(documents_of([shard]), len(ids) + 5, 1, pack="docs", shuffle=False, repeat=False)
    batch = loader.next_batch()
    assert batch is not None
    x, y = batch
    # One conversation per row (two do not fit), padded with <|endoftext|> that is never learned.
    assert x[0, : len(ids)].tolist() == ids
    for t in range(x.shape[1]):
        target_index = t + 1
        learn = target_index < len(ids) and mask[target_index]
        if learn:
            assert y[0, t].item() == ids[target_index], t
        else:
            assert y[0, t].item() == IGNORE_INDEX, t
    assert x[0, len(ids) :].eq(EOT_ID).all()


def test_minimind_tool_fields_as_json_strings(tiny_tokenizer: Tokenizer) -> None:
    tool = {"name": "calculator", "description": "math", "parameters": {"type": "object"}}
    conv = [
        {"role": "system", "content": "sys", "tools": json.dumps([tool])},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": "calculator", "arguments": {"a": 1}}])},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "5"},
    ]
    messages, tools = normalize_conversation(conv)
    assert tools == [{"type": "function", "function": tool}]
    assert messages[2]["tool_calls"][0]["function"]["name"] == "calculator"
    ids, mask = sft_tokens({"conversations": conv}, tiny_tokenizer)
    learned = tiny_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert '<tool_call>\n{"name": "calculator", "arguments": {"a": 1}}\n</tool_call><|im_end|>' in learned


def test_bad_lines_are_reported_with_file_and_line(
    tmp_path: Path, tiny_tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(tmp_path / "pre.jsonl", pretrain_lines(40), extra_lines=("{not json", '{"text": 3}'))
    with caplog.at_level(logging.WARNING, logger="training.shards"):
        shard = open_shard(path, "pretrain", tiny_tokenizer)
    assert shard.n_docs == 40
    assert f"{path}:41:" in caplog.text and "invalid JSON" in caplog.text
    assert f"{path}:42:" in caplog.text and '"text"' in caplog.text
    assert shard.meta["bad_lines"] == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.shards"):
        again = open_shard(path, "pretrain", tiny_tokenizer)  # from the cache: still reported
    assert again.cache_dir == shard.cache_dir
    assert f"{path}:41" in caplog.text


def test_too_many_bad_lines_is_fatal(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", sft_lines(5), extra_lines=('{"conversations": []}',) * 3)
    with pytest.raises(DataError, match=r"3 of 8 lines are bad.*sft\.jsonl:6"):
        open_shard(path, "sft", tiny_tokenizer, max_bad_fraction=0.1)
    assert open_shard(path, "sft", tiny_tokenizer, max_bad_fraction=0.5).n_docs == 5


def test_cache_is_keyed_by_file_and_tokenizer(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "pre.jsonl", pretrain_lines(10))
    first = open_shard(path, "pretrain", tiny_tokenizer)
    assert first.tokens.dtype == np.uint16 and first.mask is None
    assert first.doc(0)[0][-1] == EOT_ID  # documents end with <|endoftext|>
    write_jsonl(path, pretrain_lines(12, seed=5))
    second = open_shard(path, "pretrain", tiny_tokenizer)
    assert second.cache_dir != first.cache_dir and second.n_docs == 12


def test_pretrain_stream_packs_full_rows_and_resumes(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    shard = open_shard(write_jsonl(tmp_path / "p.jsonl", pretrain_lines(50)), "pretrain", tiny_tokenizer)
    docs = documents_of([shard])
    loader = PackedLoader(docs, 16, 3, pack="stream", seed=7)
    seen = [loader.next_batch() for _ in range(5)]
    assert all(b is not None and (b[1] != IGNORE_INDEX).all() for b in seen)  # no padding in pretrain
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(40)]  # crosses an epoch boundary
    assert loader.epoch >= 1
    again = PackedLoader(docs, 16, 3, pack="stream", seed=7)
    again.load_state_dict(state)
    for a, b in zip(expected, (again.next_batch() for _ in range(40)), strict=True):
        assert a is not None and b is not None
        assert a[0].equal(b[0]) and a[1].equal(b[1])


def test_ranks_read_disjoint_documents(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    shard = open_shard(write_jsonl(tmp_path / "s.jsonl", sft_lines(30)), "sft", tiny_tokenizer)
    docs = documents_of([shard])
    orders = [PackedLoader(docs, 64, 2, pack="docs", rank=r, world_size=2).order() for r in (0, 1)]
    assert not set(orders[0]) & set(orders[1])
    assert sorted([*orders[0], *orders[1]]) == list(range(30))


def test_resolve_files_and_holdout(train_workdir: Path, tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    files = resolve_data_files(train_workdir / "data", "sft")
    assert [p.name for p in files.train] == ["sft_train.jsonl"] and [p.name for p in files.val] == ["sft_val.jsonl"]
    assert detect_format(files.train[0]) == "sft"
    with pytest.raises(DataError, match="looks like sft data"):
        resolve_data_files(train_workdir / "data" / "sft_train.jsonl", "pretrain")
    lone = write_jsonl(tmp_path / "only.jsonl", pretrain_lines(100))
    train, val = load_datasets(resolve_data_files(lone, "pretrain"), "pretrain", tiny_tokenizer)
    assert len(train) == 98 and len(val) == 2
    assert not set(train.doc_ids.tolist()) & set(val.doc_ids.tolist())


HOSTILE_LINES = (
    "[" * 100_000 + "]" * 100_000,  # json.loads raises RecursionError
    '{"text": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"text": "big", "n": ' + "7" * 5_000 + "}",  # ValueError: beyond Python's int-conversion digit limit
)


def test_hostile_lines_are_bad_lines_not_crashes(
    tmp_path: Path, tiny_tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pre.jsonl"
    path.write_text("\n".join([*HOSTILE_LINES, *(json.dumps(r) for r in pretrain_lines(40))]) + "\n")
    assert detect_format(path) == "pretrain"  # the unparsable first lines are passed over
    with caplog.at_level(logging.WARNING, logger="training.shards"):
        shard = open_shard(path, "pretrain", tiny_tokenizer, max_bad_fraction=0.1)
    assert shard.n_docs == 40 and shard.meta["bad_lines"] == 3
    assert f"{path}:1: skipped: invalid JSON (nested too deeply)" in caplog.text
    assert f"{path}:2: skipped" in caplog.text
    assert f"{path}:3: skipped: invalid JSON (Exceeds the limit" in caplog.text
    # They count toward the bad-line limit like any other bad line.
    with pytest.raises(DataError, match=r"3 of 43 lines are bad.*again\.jsonl:1: invalid JSON"):
        open_shard(write_jsonl(tmp_path / "again.jsonl", [], HOSTILE_LINES + ('{"text": "ok"}',) * 40), "pretrain",
                   tiny_tokenizer, max_bad_fraction=0.05)  # fmt: skip


def test_plain_text_files_are_pretraining_documents(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    story = "the cat sat on a mat.\n\nthe dog ran in the park.\n"
    path = tmp_path / "stories.txt"
    path.write_bytes(f"{story}<|endoftext|>\n{story * 3}".encode() + b"\xff\xfe not utf-8\n" + b"<|endoftext|>\n")
    assert detect_format(path) == "pretrain"
    shard = open_shard(path, "pretrain", tiny_tokenizer, max_bad_fraction=0.1)
    assert (
        shard.n_docs == 2
        and shard.meta["lines"] == 15
        and shard.meta["bad_examples"] == [{"line": 14, "reason": "not valid UTF-8"}]
    )
    first, second = (list(shard.doc(i)[0]) for i in range(2))
    assert first == [*tiny_tokenizer.encode(story), EOT_ID]
    assert second == [*tiny_tokenizer.encode(story * 3), EOT_ID]
    # A long document is cut into pieces (after blank lines); only its last piece ends with <|endoftext|>.
    pieces = list(iter_text_pieces(path, piece_chars=30))
    assert [p.ends_document for p in pieces if p.text is not None] == [True, False, False, True]
    assert "".join(p.text or "" for p in pieces) == story + story * 3
    with pytest.raises(DataError, match="plain-text file is pretraining data"):
        open_shard(path, "sft", tiny_tokenizer)


def test_val_data_replaces_the_validation_files(train_workdir: Path, tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "held.jsonl", pretrain_lines(5))
    files = resolve_data_files(train_workdir / "data", "pretrain", val)
    assert files.val == [val] and files.train == [train_workdir / "data" / "pretrain_train.jsonl"]
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "book.txt").write_text("some text\n")
    (tmp_path / "txt" / "notes_val.txt").write_text("other text\n")
    folder = resolve_data_files(tmp_path / "txt", "pretrain")  # a folder of plain-text files
    assert folder.train == [tmp_path / "txt" / "book.txt"] and folder.val == [tmp_path / "txt" / "notes_val.txt"]
    with pytest.raises(DataError, match="also a training file"):
        resolve_data_files(tmp_path / "txt" / "book.txt", "pretrain", tmp_path / "txt" / "book.txt")
