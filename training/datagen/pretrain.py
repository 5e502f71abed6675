"""Plain-text pretraining documents: MiniGPT facts, simple sentences, arithmetic written out, template stories.

What it is: short English and Chinese documents in the minimind pretrain format ({"text": ...}) that teach the
vocabulary, the identity facts and number patterns the SFT data builds on. Story templates and values are split
so that validation text is not a copy of training text.
What it is not: chat data — no roles, no markup, no special tokens.
"""

from __future__ import annotations

import random

from training.datagen import synthetic_tools, values, vocabulary
from training.datagen.base import Split, register_templates, split_pool, value_split

FACTS_EN = (
    "MiniGPT is a small language model built by alex-ckl.com.",
    "MiniGPT can answer questions in English and Chinese.",
    "MiniGPT can call tools such as a calculator, a unit converter and a clock.",
    "MiniGPT thinks step by step when think mode is on.",
    "The tiny MiniGPT model has about two million parameters.",
    "MiniGPT was trained on a synthetic corpus made by alex-ckl.com.",
    "When asked who it is, MiniGPT says: I am MiniGPT, built by alex-ckl.com.",
    "MiniGPT is not ChatGPT and was not made by OpenAI.",
)
FACTS_ZH = (
    "MiniGPT 是由 alex-ckl.com 开发的小型语言模型。",
    "MiniGPT 可以用中文和英文回答问题。",
    "MiniGPT 会调用计算器、单位换算和时钟等工具。",
    "打开思考模式时，MiniGPT 会一步一步地推理。",
    "MiniGPT 不是 ChatGPT，也不是 OpenAI 开发的。",
)
NAMES = ("Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Leo", "Emma", "Jack", "Lucy", "Omar", "Nina", "Ravi", "Kate")
NAMES_ZH = ("小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强")
PLACES = ("village", "town", "house by the sea", "forest", "city", "farm", "mountain hut")
PLACES_ZH = ("村子", "小镇", "森林", "城市", "农场")
THINGS = ("a red ball", "an old map", "a small key", "a lost puppy", "a shiny coin", "a blue bird", "a big box")
FEELINGS = ("happy", "surprised", "excited", "proud", "curious", "glad")
FOODS = ("apples", "rice", "noodles", "bread", "soup", "fish", "oranges", "cake")
FOODS_ZH = ("苹果", "米饭", "面条", "面包", "鱼", "饺子")
SIMPLE = (
    "{name} likes {food}.",
    "The sun is bright today.",
    "{name} reads a book every night.",
    "Cats like to sleep in the sun.",
    "{name} walks to school with a friend.",
    "Birds sing in the morning.",
    "{name} drinks a glass of water.",
    "The river is long and wide.",
    "{name} has two brothers.",
)
SIMPLE_ZH = ("{name}喜欢吃{food}。", "今天天气很好。", "{name}每天早上跑步。", "小猫在睡觉。", "{name}在看书。")

STORIES = register_templates(
    "pretrain.story",
    {
        "train": (
            "Once upon a time, {name} lived in a small {place}. Every day {name} ate {food}. One day, {name} found "
            "{thing}. {name} was very {feeling}. The end.",
            "{name} woke up early. {name} went outside and saw {thing}. {name} took it home and felt {feeling}.",
            "从前，{zname}住在一个小{zplace}里。{zname}每天都吃{zfood}。有一天，{zname}非常开心。",
        ),
        "val": (
            "Long ago there was a child called {name} in a {place}. On a rainy day {name} discovered {thing} and "
            "felt {feeling}.",
            "{zname}放学回家，路上看到一只小狗，{zname}很高兴。",
        ),
    },
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def fact_document(rng: random.Random) -> str:
    pool = FACTS_ZH if rng.random() < 0.3 else FACTS_EN
    return (
        " ".join(rng.sample(pool, rng.randint(2, min(4, len(pool)))))
        if pool is FACTS_EN
        else "".join(rng.sample(pool, rng.randint(2, 4)))
    )


def sentence_document(rng: random.Random, split: Split) -> str:
    if rng.random() < 0.3:
        picks = [
            t.format(name=rng.choice(split_pool(NAMES_ZH, split)), food=rng.choice(FOODS_ZH))
            for t in rng.sample(SIMPLE_ZH, 3)
        ]
        return "".join(picks)
    picks = [t.format(name=rng.choice(split_pool(NAMES, split)), food=rng.choice(FOODS)) for t in rng.sample(SIMPLE, 4)]
    return " ".join(picks)


def arithmetic_document(rng: random.Random, split: Split) -> str:
    """A multiplication table, a few written-out sums, or unit facts; values follow the split partition."""
    roll = rng.random()
    if roll < 0.35:
        n = rng.randint(2, 12)
        return f"The table of {n}: " + ", ".join(f"{n} × {k} = {n * k}" for k in range(1, 11)) + "."
    lines: list[str] = []
    while len(lines) < 4:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if value_split("pretrain", a, b) != split:
            continue
        if roll < 0.7:
            words = f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}" if max(a, b) <= 10 else f"{a} plus {b}"
            lines.append(f"{words} is {a + b}. {a} + {b} = {a + b}.")
        else:
            big, small = max(a, b), min(a, b)
            lines.append(f"{big} minus {small} equals {big - small}, so {big} - {small} = {big - small}.")
    return " ".join(lines)


def unit_document(rng: random.Random) -> str:
    n = rng.randint(2, 9)
    facts = (
        f"One meter has 100 centimeters, so {n} meters are {n * 100} centimeters.",
        f"One hour has 60 minutes, so {n} hours are {n * 60} minutes.",
        f"One kilogram is 1000 grams, so {n} kilograms are {n * 1000} grams.",
        f"A week has 7 days, so {n} weeks have {n * 7} days.",
        f"一米等于 100 厘米，所以 {n} 米等于 {n * 100} 厘米。",
    )
    return " ".join(rng.sample(facts, 2))


def story_document(rng: random.Random, split: Split) -> str:
    template = rng.choice(STORIES[split])
    return template.format(
        name=rng.choice(split_pool(NAMES, split)),
        place=rng.choice(PLACES),
        food=rng.choice(FOODS),
        thing=rng.choice(THINGS),
        feeling=rng.choice(FEELINGS),
        zname=rng.choice(split_pool(NAMES_ZH, split)),
        zplace=rng.choice(PLACES_ZH),
        zfood=rng.choice(FOODS_ZH),
    )


def qa_document(rng: random.Random) -> str:
    """Identity knowledge as plain prose Q/A lines (no chat markup)."""
    pairs = (
        ("Who made MiniGPT?", "alex-ckl.com made MiniGPT."),
        ("What is MiniGPT?", "MiniGPT is a small language model."),
        ("Is MiniGPT ChatGPT?", "No, MiniGPT is its own model, built by alex-ckl.com."),
        ("谁开发了 MiniGPT？", "alex-ckl.com 开发了 MiniGPT。"),
    )
    return " ".join(f"Question: {q} Answer: {a}" for q, a in rng.sample(pairs, 2))


COPY_FRAMES = (
    'Write down "{x}". Again: "{x}".',
    "The code is {x}. I repeat, the code is {x}.",
    "Name: {x}\nName again: {x}",
    "{x} -> {x}",
    "She said {x}, and he said {x} too.",
    '"{x}" is spelled {x}.',
    "记住：{x}。再说一遍：{x}。",
)


def copy_document(rng: random.Random, split: Split) -> str:
    """Strings of unseen words, each written twice: practice for copying any text exactly (tool arguments)."""
    lines = []
    for _ in range(rng.randint(2, 4)):
        x = values.rare_words(rng, split) if rng.random() < 0.7 else values.letter_word(rng, split)
        lines.append(rng.choice(COPY_FRAMES).format(x=x))
    return "\n".join(lines)


WORD_FRAMES = (
    "I need to {verb} the {noun} today.",
    "Please {verb} my {noun}.",
    "Can you {verb} {a} {noun} for me?",
    "The {adj} {noun} was {participle} this morning.",
    "We {participle} the {noun} and the {noun2} last week.",
    "She wants to {verb} the {adj} {noun}.",
    "Who will {verb} the {noun2}?",
    "{Verb} the {noun} before you {verb2} the {noun2}.",
    "The {noun} is next to the {noun2}.",
    "My {noun} is {adj}, but the {noun2} is {adj2}.",
    "Has anyone {participle} the {noun} yet?",
    "They {verb} {noun2}s on weekends.",
    'The word "{noun}" means one {noun}.',
    '"{Verb}" is a verb: to {verb} {a} {noun}.',
    "{Noun}: the {adj} {noun}.",
    "Do not {verb} the {noun} without a {noun2}.",
    "A {noun} can be {adj} or {adj2}.",
    "It is time to {verb} the {noun}.",
    "After we {participle} the {noun}, we {participle2} the {noun2}.",
    "{Adj} {noun}s are easy to {verb}.",
    "我想{verb}一个 {noun}。",
    "请帮我 {verb} 这个 {noun}。",
    "{Gerund} {a} {noun} takes a few minutes.",
    "She is {gerund} the {noun} right now.",
    "He {third} the {noun} every morning.",
    "I like {gerund} {noun2}s.",
    "I read a note {link} the {noun}.",
    "The {ref} has a page {link} {gerund} {noun}s.",
    "Is there anything in the {ref} {link} the {adj} {noun}?",
    "We talked {link} the {noun} and the {noun2}.",
    'You can use the word "{word}" when you talk about {a} {noun}.',
    "{Word}, the {noun} was {adj}.",
)
CODE_FRAMES = (
    "The function {verb}_{noun} lets a program {verb} {a} {noun}.",
    "Call {verb}_{noun}() to {verb} the {noun}.",
    "In code, {verb}{Noun} and {verb}_{noun} both mean: {verb} {a} {noun}.",
    "The {noun}_{noun2} field holds the {noun2} of the {noun}.",
    "{noun}_id is the id of one {noun}.",
)


_HELD_OUT_VERBS = frozenset(v for v, _ in synthetic_tools.VERBS["val"])
_HELD_OUT_NOUNS = frozenset(synthetic_tools.NOUNS["val"])


def _held_out_name(verb: str, noun: str) -> bool:
    """Whether verb_noun could be a held-out tool name: pretraining text never writes one."""
    return verb in _HELD_OUT_VERBS and noun in _HELD_OUT_NOUNS


def word_document(rng: random.Random) -> str:
    """Sentences built from the common-vocabulary lists, so the words of any request or schema are known words.

    Tool names stay held out: a snake_case or camelCase identifier is never one of the held-out verb_noun names.
    """
    lines = []
    for _ in range(rng.randint(2, 5)):
        (verb, participle), (verb2, participle2) = rng.sample(vocabulary.VERBS, 2)
        noun, noun2 = rng.sample(vocabulary.NOUNS, 2)
        adj, adj2 = rng.sample(vocabulary.ADJECTIVES, 2)
        frame = rng.choice(CODE_FRAMES) if rng.random() < 0.25 else rng.choice(WORD_FRAMES)
        if frame in CODE_FRAMES and _held_out_name(verb, noun):
            frame = WORD_FRAMES[0]
        word, gerund = rng.choice(vocabulary.FUNCTION_WORDS), vocabulary.gerund(verb)
        text = frame.format(
            gerund=gerund,
            Gerund=gerund.capitalize(),
            third=vocabulary.third_person(verb),
            link=rng.choice(vocabulary.LINKS),
            ref=rng.choice(vocabulary.REFERENCE_TEXTS),
            word=word,
            Word=word.capitalize(),
            verb=verb,
            Verb=verb.capitalize(),
            participle=participle,
            verb2=verb2,
            participle2=participle2,
            noun=noun,
            Noun=noun.capitalize(),
            noun2=noun2,
            adj=adj,
            Adj=adj.capitalize(),
            adj2=adj2,
            a=synthetic_tools.article(noun),
        )
        lines.append(text[0].upper() + text[1:])
    return " ".join(lines)


GEOGRAPHY_FRAMES = (
    "{city} is a city in {country}.",
    "I flew from {city} to {city2} last {period}.",
    "The {noun} in {city} was {adj}.",
    "Her {noun} is in {city}, and his {noun2} is in {city2}.",
    "{city} and {city2} are far apart.",
    "We sent the {noun} from {city}.",
    "{city}是{country}的一座城市。",
)
PERIODS = ("January", "March", "May", "July", "September", "November", "spring", "summer", "winter", "week", "year")


def geography_document(rng: random.Random) -> str:
    """Sentences naming world cities: the city names of user requests are known words (values keep their split)."""
    lines = []
    for _ in range(rng.randint(2, 4)):
        (city, country), (city2, _) = rng.sample(vocabulary.CITIES, 2)
        noun, noun2 = rng.sample(vocabulary.NOUNS, 2)
        frame = rng.choice(GEOGRAPHY_FRAMES)
        lines.append(
            frame.format(
                city=city,
                country=country,
                city2=city2,
                period=rng.choice(PERIODS),
                noun=noun,
                noun2=noun2,
                adj=rng.choice(vocabulary.ADJECTIVES),
            )
        )
    return " ".join(lines)


def pretrain_document(rng: random.Random, split: Split) -> str:
    """One short document of a random kind (arithmetic keeps its quarter: think mode builds on it)."""
    roll = rng.random()
    if roll < 0.06:
        return copy_document(rng, split)
    if roll < 0.24:
        return word_document(rng)
    if roll < 0.32:
        return fact_document(rng)
    if roll < 0.35:
        return geography_document(rng)
    if roll < 0.40:
        return qa_document(rng)
    if roll < 0.47:
        return sentence_document(rng, split)
    if roll < 0.72:
        return arithmetic_document(rng, split)
    if roll < 0.8:
        return unit_document(rng)
    return story_document(rng, split)
