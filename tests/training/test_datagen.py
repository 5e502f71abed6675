"""Tests of the bundled synthetic corpus generator (training/datagen): format, determinism, honest splits,
schema-valid tool calls, correct arithmetic and real preference differences."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tools.registry import default_registry
from training.datagen import __main__ as cli
from training.datagen import arithmetic, generate_corpus, iter_texts, math_dialogues, schema_errors
from training.datagen.base import TEMPLATE_REGISTRY, make_rng
from training.datagen.stand_ins import current_time_result, search_result
from training.datagen.tools_data import builtin_schema

FILES = (
    "pretrain_train",
    "pretrain_val",
    "sft_train",
    "sft_val",
    "dpo_train",
    "dpo_val",
    "eval_think",
    "eval_tools",
    "eval_identity",
)
ROLES = {"system", "user", "assistant", "tool"}
EQUATION = re.compile(r"(?<![\d.])(?<![+\-×÷*/(] )(\d+) ([+\-×÷]) (\d+) = (\d+)(?![\d.]\d| [+\-×÷])")
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "<tool_call>")


def load(folder: Path, name: str) -> list[dict[str, Any]]:
    with (folder / f"{name}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, seed=0, scale=0.3)
    return out


def all_conversations(folder: Path, split: str, rejected: bool = True) -> list[list[dict[str, Any]]]:
    convs = [r["conversations"] for r in load(folder, f"sft_{split}")]
    for pair in load(folder, f"dpo_{split}"):
        convs += [pair["chosen"], pair["rejected"]] if rejected else [pair["chosen"]]
    return convs


def user_texts(convs: list[list[dict[str, Any]]]) -> set[str]:
    return {m["content"] for conv in convs for m in conv if m["role"] == "user"}


def test_counts_and_every_line_parses(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    for name in FILES:
        lines = (corpus / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == manifest["counts"][name] > 0
        for line in lines:
            assert isinstance(json.loads(line), dict)
    assert manifest["counts"]["sft_train"] == 1800
    assert manifest["templates"] == {k: {s: list(t) for s, t in v.items()} for k, v in TEMPLATE_REGISTRY.items()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_corpus(a, seed=3, scale=0.05)
    generate_corpus(b, seed=3, scale=0.05)
    generate_corpus(c, seed=4, scale=0.05)
    for name in FILES:
        assert (a / f"{name}.jsonl").read_bytes() == (b / f"{name}.jsonl").read_bytes(), name
    assert (a / "sft_train.jsonl").read_bytes() != (c / "sft_train.jsonl").read_bytes()


def test_pretrain_is_plain_text(corpus: Path) -> None:
    for split in ("train", "val"):
        for record in load(corpus, f"pretrain_{split}"):
            assert set(record) == {"text"} and record["text"].strip()
            assert not any(tok in record["text"] for tok in SPECIAL)


def check_conversation(conv: list[dict[str, Any]]) -> None:
    """Roles, tool-call structure and tool results that answer an earlier call id."""
    assert conv and conv[-1]["role"] == "assistant"
    pending: set[str] = set()
    for i, msg in enumerate(conv):
        assert msg["role"] in ROLES and isinstance(msg["content"], str)
        assert msg["role"] != "system" or i == 0
        if msg["role"] == "tool":
            assert msg["tool_call_id"] in pending
        for call in msg.get("tool_calls", []):
            assert msg["role"] == "assistant" and msg["content"] == ""
            assert call["type"] == "function" and re.fullmatch(r"call_[A-Za-z0-9]{16}", call["id"])
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
            pending.add(call["id"])
        if msg["role"] == "assistant" and not msg.get("tool_calls"):
            assert msg["content"].strip()
        assert not any(tok in msg["content"] for tok in SPECIAL)


def test_sft_and_dpo_message_format(corpus: Path) -> None:
    for split in ("train", "val"):
        for conv in all_conversations(corpus, split):
            check_conversation(conv)
    kinds = {"reasoning": 0, "tools": 0, "parallel": 0, "plain_with_tools": 0, "zh": 0}
    for record in load(corpus, "sft_train"):
        conv = record["conversations"]
        kinds["reasoning"] += any("reasoning_content" in m for m in conv)
        calls = [c for m in conv for c in m.get("tool_calls", [])]
        kinds["tools"] += bool(calls)
        kinds["parallel"] += any(len(m.get("tool_calls", [])) == 2 for m in conv)
        kinds["plain_with_tools"] += bool(conv[0].get("tools")) and not calls
        kinds["zh"] += any(re.search("[\u4e00-\u9fff]", m["content"]) for m in conv if m["role"] == "user")
    assert all(count > 50 for count in kinds.values()), kinds


def offered_and_calls(conv: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    offered = {t["function"]["name"]: t for t in conv[0].get("tools", [])} if conv[0]["role"] == "system" else {}
    return offered, [c for m in conv for c in m.get("tool_calls", [])]


def test_tool_calls_validate_against_offered_schema(corpus: Path) -> None:
    checked = 0
    for split in ("train", "val"):
        for conv in all_conversations(corpus, split, rejected=False):
            offered, calls = offered_and_calls(conv)
            if calls:
                assert 1 <= len(offered) <= 6
            for call in calls:
                assert call["function"]["name"] in offered
                arguments = json.loads(call["function"]["arguments"])
                errors = schema_errors(offered[call["function"]["name"]]["function"]["parameters"], arguments)
                assert not errors, (call, errors)
                checked += 1
    for record in load(corpus, "eval_tools"):
        assert 1 <= len(record["tools"]) <= 4 and record["messages"][-1]["role"] == "user"
        if record["expected"] is not None:
            tool = next(t for t in record["tools"] if t["function"]["name"] == record["expected"]["name"])
            assert not schema_errors(tool["function"]["parameters"], record["expected"]["arguments"])
    assert any(r["expected"] is None for r in load(corpus, "eval_tools"))
    assert checked > 500


def test_schema_checker_rejects_bad_arguments() -> None:
    schema = builtin_schema("date_add")["function"]["parameters"]
    assert not schema_errors(schema, {"date": "2024-01-01", "days": 3})
    assert schema_errors(schema, {"date": "2024-01-01"})
    assert schema_errors(schema, {"date": "2024-01-01", "days": "3"})
    assert schema_errors(schema, {"date": "2024-01-01", "days": True})
    assert schema_errors(schema, {"date": "2024-01-01", "days": 3, "extra": 1})
    assert schema_errors({"type": "string", "enum": ["a", "b"]}, "c")
    assert schema_errors({"type": "array", "items": {"type": "integer"}}, [1, "x"])


def test_held_out_prompts_and_tools_never_appear_in_train(corpus: Path) -> None:
    train_users = user_texts(all_conversations(corpus, "train"))
    held_out = user_texts(all_conversations(corpus, "val"))
    for name in ("eval_think", "eval_tools", "eval_identity"):
        held_out |= {r["messages"][-1]["content"] for r in load(corpus, name)}
    assert held_out and not (held_out & train_users), sorted(held_out & train_users)[:5]

    def synthetic_names(split: str) -> set[str]:
        names = set()
        for conv in all_conversations(corpus, split):
            names |= {n for n in offered_and_calls(conv)[0] if n not in default_registry()}
        return names

    train_names, val_names = synthetic_names("train"), synthetic_names("val")
    assert val_names and train_names and not (train_names & val_names)
    for family, splits in TEMPLATE_REGISTRY.items():
        assert not set(splits["train"]) & set(splits["val"]), family


def numbers(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def test_every_written_equation_is_correct(corpus: Path) -> None:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b, "÷": lambda a, b: a / b}
    seen = 0
    convs = [r["conversations"] for r in load(corpus, "sft_train") + load(corpus, "sft_val")]
    convs += [p["chosen"] for p in load(corpus, "dpo_train")]
    for conv in convs:
        for msg in conv:
            if msg["role"] != "assistant":
                continue
            for text in (msg["content"], msg.get("reasoning_content", "")):
                for a, op, b, c in EQUATION.findall(text):
                    assert ops[op](int(a), int(b)) == int(c), text
                    seen += 1
    assert seen > 500


def test_problems_answer_follows_reasoning() -> None:
    rng = make_rng(1, "test")
    for kind, make in math_dialogues.PROBLEM_KINDS.items():
        for split in ("train", "val"):
            for _ in range(60):
                problem = make(rng, split)
                assert numbers(problem.final)[-1] == str(problem.answer), (kind, problem)
                assert numbers(problem.reasoning)[-1] == str(problem.answer), (kind, problem)
    for _ in range(100):  # recompute bare sums and products from the question itself
        add = arithmetic.add_problem(rng, "train")
        assert sum(int(n) for n in numbers(add.question)) == add.answer
        mul = arithmetic.mul_problem(rng, "val")
        a, b = (int(n) for n in numbers(mul.question))
        assert a * b == mul.answer


def test_eval_think_answers_are_small_numbers(corpus: Path) -> None:
    records = load(corpus, "eval_think")
    assert len({json.dumps(r["messages"]) for r in records}) == len(records)
    for record in records:
        assert record["answer"].isdigit() and int(record["answer"]) < 10000


def test_identity_eval_and_dpo_pairs_differ(corpus: Path) -> None:
    for record in load(corpus, "eval_identity"):
        assert record["must_contain"] and record["messages"][-1]["role"] == "user"
    kinds: set[str] = set()
    for split in ("train", "val"):
        for pair in load(corpus, f"dpo_{split}"):
            chosen, rejected = pair["chosen"], pair["rejected"]
            kinds.add(pair["kind"])
            assert chosen[:-1] == rejected[:-1] and chosen[-1] != rejected[-1]
            if pair["kind"] == "identity":
                assert "MiniGPT" in chosen[-1]["content"] or "alex-ckl.com" in chosen[-1]["content"]
                assert "MiniGPT" not in rejected[-1]["content"]
            if pair["kind"] == "concise":
                assert len(rejected[-1]["content"]) > 2 * len(chosen[-1]["content"])
            if pair["kind"] == "arithmetic":
                assert numbers(chosen[-1]["content"])[-1] != numbers(rejected[-1]["content"])[-1]
            if pair["kind"] == "tool":
                assert chosen[-1]["tool_calls"][0]["function"] != rejected[-1]["tool_calls"][0]["function"]
    assert kinds == {"arithmetic", "tool", "identity", "concise"}


def test_iter_texts_covers_all_files(corpus: Path) -> None:
    texts = list(iter_texts(corpus))
    assert all(isinstance(t, str) and t for t in texts)
    joined = "\n".join(texts)
    for needle in ("MiniGPT", "alex-ckl.com", "calculator", "expression", "你是谁", "Once upon a time"):
        assert needle in joined
    assert len(texts) > sum(len(load(corpus, n)) for n in FILES)


def test_stand_ins_answer_in_the_real_tools_formats() -> None:
    """current_time and search_docs answer through fixed stand-ins (the real ones read the clock or a folder)."""
    import datetime as dt

    registry = default_registry()
    utc = dt.datetime(2025, 3, 1, 23, 30, tzinfo=dt.UTC)
    stand_in = json.loads(current_time_result("Asia/Kolkata", utc))
    assert stand_in.keys() == json.loads(registry.call("current_time", {"timezone": "Asia/Kolkata"})).keys()
    assert stand_in["datetime"] == "2025-03-02T05:00:00+05:30" and stand_in["weekday"] == "Sunday"
    passages = json.loads(search_result("resume a run", top_k=2))
    real = json.loads(registry.call("search_docs", {"query": "resume a run", "top_k": 2}))
    assert len(passages) == 2 and [p.keys() for p in passages] == [p.keys() for p in real]
    assert "--resume" in passages[0]["text"]


def test_cli_writes_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--out", str(tmp_path / "c"), "--seed", "1", "--scale", "0.02"]) == 0
    assert "sft_train.jsonl" in capsys.readouterr().out
    assert (tmp_path / "c" / "eval_tools.jsonl").stat().st_size > 0
    assert cli.main(["--out", str(tmp_path / "d"), "--scale", "0"]) == 2


def test_procedural_values_are_split_disjoint_and_varied() -> None:
    import random

    from training.datagen import values

    makers = (
        values.string_value,
        values.sentence,
        values.query,
        values.made_up_word,
        values.integer,
        values.letter_word,
        values.rare_words,
        values.rare_sentence,
    )
    for make in makers:
        train = {make(random.Random(i), "train") for i in range(1500)}
        held_out = {make(random.Random(i), "val") for i in range(1500)}
        assert not train & held_out, make.__name__
        assert len(train) > 300, f"{make.__name__}: a pool small enough to memorise ({len(train)} values)"


def test_tokenizer_texts_include_offered_tools_and_calls(tmp_path: Path) -> None:
    from training.pipeline import tokenizer_texts

    tool = {"type": "function", "function": {"name": "export_podcast", "parameters": {"type": "object"}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "export_podcast", "arguments": '{"a": 1}'}}
    conv = [
        {"role": "system", "content": "hi", "tools": [tool]},
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"conversations": conv}) + "\n")
    texts = list(tokenizer_texts([path]))
    assert json.dumps(tool) in texts
    assert '{"name": "export_podcast", "arguments": {"a": 1}}' in texts


def test_held_out_tool_names_never_appear_in_training_text(corpus: Path) -> None:
    """Pretraining prose uses common words (held-out verbs and nouns among them), never a held-out verb_noun name."""
    from training.datagen.synthetic_tools import NOUNS, VERBS

    held_out = {f"{v}_{n}" for v, _ in VERBS["val"] for n in NOUNS["val"]}
    held_out |= {f"{v}{n.capitalize()}" for v, _ in VERBS["val"] for n in NOUNS["val"]}
    pattern = re.compile("|".join(sorted(held_out)))
    for name in ("pretrain_train", "sft_train", "dpo_train"):
        text = (corpus / f"{name}.jsonl").read_text(encoding="utf-8")
        found = pattern.search(text)
        assert found is None, f"{name} writes the held-out tool name {found.group(0) if found else ''}"
    assert not {v for v, _ in VERBS["train"]} & {v for v, _ in VERBS["val"]}
    assert not set(NOUNS["train"]) & set(NOUNS["val"])


def test_composed_phrasings_skip_held_out_templates() -> None:
    from training.datagen.base import compose_templates
    from training.datagen.synthetic_tools import HELD_OUT_REQUESTS, REQUESTS_COMPOSED
    from training.datagen.tools_data import HELD_OUT_SEARCH, SEARCH_COMPOSED

    assert compose_templates(("go ", "stop "), ("now", "later"), avoid=("Go now",)) == (
        "Go later",
        "Stop now",
        "Stop later",
    )
    assert len(REQUESTS_COMPOSED) > 1000 and not set(REQUESTS_COMPOSED) & set(HELD_OUT_REQUESTS)
    assert len(SEARCH_COMPOSED) > 100 and not set(SEARCH_COMPOSED) & set(HELD_OUT_SEARCH)
    for template in REQUESTS_COMPOSED:
        template.format(verb="get", Verb="Get", a="a", noun="ticket", params="id 4")  # every field is known


def test_word_and_copy_documents() -> None:
    import random

    from training.datagen import pretrain, vocabulary

    rng = random.Random(0)
    words = " ".join(pretrain.word_document(rng) for _ in range(300))
    assert len({n for n in vocabulary.NOUNS if f" {n}" in words}) > 300  # many different words, not a few
    doc = pretrain.copy_document(random.Random(1), "train")
    lines = doc.splitlines()
    assert lines and all(len(line) > 4 for line in lines)
    assert pretrain._held_out_name("export", "podcast") and not pretrain._held_out_name("export", "ticket")


def test_inflections_geography_and_topics() -> None:
    import random

    from training.datagen import pretrain, synthetic_params, tools_data, values, vocabulary

    forms = {v: (vocabulary.gerund(v), vocabulary.third_person(v)) for v in ("sample", "stop", "see", "carry", "fix")}
    assert forms == {
        "sample": ("sampling", "samples"),
        "stop": ("stopping", "stops"),
        "see": ("seeing", "sees"),
        "carry": ("carrying", "carries"),
        "fix": ("fixing", "fixes"),
    }
    rng = random.Random(0)
    geography = " ".join(pretrain.geography_document(rng) for _ in range(200))
    assert len({city for city, _ in vocabulary.CITIES if city in geography}) > 60
    # world cities are pretraining text, but never a training argument value that the held-out split owns
    held_out = set(synthetic_params.split_pool(synthetic_params.CITIES, "val"))
    assert held_out and not held_out & set(synthetic_params._TRAIN_WORLD_CITIES)
    topics = {values.query(rng, "train") for _ in range(3000)}
    assert any(" the " in f" {t} " for t in topics)  # vocabulary topics are drawn
    assert not topics & {values.query(random.Random(i), "val") for i in range(300)}
    queries = {tools_data.search_scenario(rng, "train").arguments["query"] for _ in range(3000)}
    assert tools_data._HELD_OUT_QUERIES and not queries & tools_data._HELD_OUT_QUERIES


def test_word_lists_are_data_files_in_the_corpus_cache_key(tmp_path: Path) -> None:
    """vocabulary.py reads its lists from wordlists/*.txt|tsv, and editing one changes the corpus cache key."""
    import shutil

    from training.datagen import corpus, vocabulary

    for words in (vocabulary.NOUNS, vocabulary.ADJECTIVES, vocabulary.LINKS, vocabulary.FUNCTION_WORDS):
        assert words and len(set(words)) == len(words)
        assert all(w == w.strip() and w and not w.startswith("#") for w in words)
    for pairs in (vocabulary.VERBS, vocabulary.CITIES):
        assert pairs and all(len(p) == 2 and all(x == x.strip() and x for x in p) for p in pairs)
    copy = tmp_path / "datagen"
    shutil.copytree(Path(corpus.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert corpus.source_digest(copy) == corpus.source_digest()
    with (copy / vocabulary.WORDLISTS / "nouns.txt").open("a", encoding="utf-8") as f:
        f.write("zeppelin\n")
    assert corpus.source_digest(copy) != corpus.source_digest()


def test_tools_package_is_in_the_corpus_cache_key(tmp_path: Path) -> None:
    """The tool dialogues hold the tools' schemas and results, so editing a tool changes the corpus cache key."""
    import shutil

    from training.datagen import corpus

    copy = tmp_path / "tools"
    shutil.copytree(corpus.TOOLS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert corpus.source_digest(tools_dir=copy) == corpus.source_digest()
    with (copy / "builtin" / "calculator.py").open("a", encoding="utf-8") as f:
        f.write("\n# a changed tool\n")
    assert corpus.source_digest(tools_dir=copy) != corpus.source_digest()
