"""System personas and world questions: what keeps the identity data from answering where it should not (issue 18).

What it is: dialogues where a system prompt gives the assistant another name and role ("You are Bob, a pirate.")
and the identity questions are answered in that persona, never as MiniGPT; and factual questions that share words
with identity questions ("北京是哪个国家的首都？", "Who is the capital of ...") answered with the fact, so "who /
which / 哪个" does not trigger the identity answer. Names, roles, capitals and cities are split (held-out ones
feed the eval lines `persona` and `off_topic` of `minigpt-eval identity`).
What it is not: the MiniGPT identity itself (identity.py) or small talk (smalltalk.py).
"""

from __future__ import annotations

import random

from training.datagen import values, vocabulary
from training.datagen.base import Conversation, Split, assistant, register_templates, split_pool, user
from training.datagen.identity import NAME, QUESTIONS

PERSONA_NAMES = (
    "Bob",
    "Ada",
    "Mira",
    "Kofi",
    "Lena",
    "Tomas",
    "Yuki",
    "Omar",
    "Greta",
    "Ravi",
    "Nora",
    "Felix",
    "Ines",
    "Jonas",
    "Priya",
    "Sven",
    "Aiko",
    "Marco",
    "Zara",
    "Hugo",
    "Elif",
    "Diego",
    "Maya",
    "Otto",
)
# (role, the way that role opens an answer)
ROLES = (
    ("a pirate", "Arr! "),
    ("a friendly librarian", ""),
    ("a chef", ""),
    ("a space explorer", ""),
    ("a travel agent", ""),
    ("a math tutor", ""),
    ("a knight", "Greetings! "),
    ("a robot butler", "At your service. "),
    ("a detective", "Hmm. "),
    ("a gardener", ""),
    ("a cowboy", "Howdy! "),
    ("a wizard", ""),
    ("a ship's captain", "Ahoy! "),
    ("a museum guide", ""),
    ("a fitness coach", ""),
    ("a weather reporter", ""),
    ("a customer support agent for a bank", ""),
    ("a tea shop owner", ""),
)
ROLES_ZH = ("一名海盗", "一位厨师", "一名导游", "一位数学老师", "一名侦探", "一位图书管理员", "一名宇航员", "一位园丁")
SYSTEMS = register_templates(
    "persona.system",
    {
        "train": (
            "You are {name}, {role}.",
            "Your name is {name}. You are {role}.",
            "Act as {name}, {role}.",
            "You are {name}, {role}. Stay in character.",
            "Role: {role}. Name: {name}.",
        ),
        "val": ("Pretend to be {name}, {role}.", "From now on you are {name}, {role}."),
    },
)
SYSTEMS_ZH = register_templates(
    "persona.system_zh",
    {"train": ("你是{name}，{role}。", "你的名字叫{name}，你是{role}。"), "val": ("请扮演{name}，{role}。",)},
)
ANSWERS = ("{open}I'm {name}, {role}.", "{open}My name is {name}. I am {role}.", "{open}{name} here, {role}.")
ANSWERS_ZH = ("我是{name}，{role}。", "我叫{name}，是{role}。")
OTHER_ANSWERS = ("{open}No, I'm {name}, {role}.",)


def _persona(rng: random.Random, split: Split) -> tuple[str, tuple[str, str]]:
    name = rng.choice(split_pool(PERSONA_NAMES, split))
    if split == "train" and rng.random() < 0.4:
        name = values.proper_name(rng, split).split()[0]  # names no list holds: read it from the system prompt
    return name, rng.choice(split_pool(ROLES, split))


def persona_exchange(rng: random.Random, split: Split) -> tuple[str, str, str, str]:
    """(system prompt, question, answer, persona name): an identity question answered in the system's persona."""
    category = rng.choice(("who", "who", "other", "ability"))
    question = rng.choice(QUESTIONS[category][split])
    name, (role, opener) = _persona(rng, split)
    if any("\u4e00" <= ch <= "\u9fff" for ch in question):
        role_zh = rng.choice(ROLES_ZH)
        system = rng.choice(SYSTEMS_ZH[split]).format(name=name, role=role_zh)
        return system, question, rng.choice(ANSWERS_ZH).format(name=name, role=role_zh), name
    system = rng.choice(SYSTEMS[split]).format(name=name, role=role)
    templates = OTHER_ANSWERS if category == "other" else ANSWERS
    answer = rng.choice(templates).format(open=opener, name=name, role=role)
    if category == "ability":
        answer += f" I can help you as {role} would."
    return system, question, answer, name


def persona_conversation(rng: random.Random, split: Split) -> Conversation:
    """A system persona and an identity question (half the time after a warm-up turn), or a world question."""
    if rng.random() < 0.45:
        question, answer, _ = world_question(rng, split)
        return [user(question), assistant(answer)]
    system, question, answer, name = persona_exchange(rng, split)
    messages: Conversation = [{"role": "system", "content": system}]
    if split == "train" and rng.random() < 0.3:  # the warm-up phrase is train-only
        messages += [user("Hello!"), assistant(f"Hello! {name} here. What can I do for you?")]
    return [*messages, user(question), assistant(answer)]


# (capital, country, 首都, 国家): plain school geography
CAPITALS = (
    ("Beijing", "China", "北京", "中国"),
    ("Tokyo", "Japan", "东京", "日本"),
    ("Paris", "France", "巴黎", "法国"),
    ("London", "the United Kingdom", "伦敦", "英国"),
    ("Berlin", "Germany", "柏林", "德国"),
    ("Rome", "Italy", "罗马", "意大利"),
    ("Madrid", "Spain", "马德里", "西班牙"),
    ("Moscow", "Russia", "莫斯科", "俄罗斯"),
    ("Ottawa", "Canada", "渥太华", "加拿大"),
    ("Canberra", "Australia", "堪培拉", "澳大利亚"),
    ("Seoul", "South Korea", "首尔", "韩国"),
    ("Cairo", "Egypt", "开罗", "埃及"),
    ("New Delhi", "India", "新德里", "印度"),
    ("Washington", "the United States", "华盛顿", "美国"),
    ("Bangkok", "Thailand", "曼谷", "泰国"),
    ("Hanoi", "Vietnam", "河内", "越南"),
    ("Athens", "Greece", "雅典", "希腊"),
    ("Vienna", "Austria", "维也纳", "奥地利"),
    ("Lisbon", "Portugal", "里斯本", "葡萄牙"),
    ("Oslo", "Norway", "奥斯陆", "挪威"),
    ("Stockholm", "Sweden", "斯德哥尔摩", "瑞典"),
    ("Nairobi", "Kenya", "内罗毕", "肯尼亚"),
    ("Lima", "Peru", "利马", "秘鲁"),
    ("Brasília", "Brazil", "巴西利亚", "巴西"),
    ("Dublin", "Ireland", "都柏林", "爱尔兰"),
    ("Warsaw", "Poland", "华沙", "波兰"),
    ("Helsinki", "Finland", "赫尔辛基", "芬兰"),
    ("Buenos Aires", "Argentina", "布宜诺斯艾利斯", "阿根廷"),
    ("Mexico City", "Mexico", "墨西哥城", "墨西哥"),
    ("Jakarta", "Indonesia", "雅加达", "印度尼西亚"),
)
WORLD = register_templates(
    "persona.world",
    {
        "train": (
            "What is the capital of {country}?",
            "Which city is the capital of {country}?",
            "{capital} is the capital of which country?",
            "Who has {capital} as its capital?",
            "{capital_zh}是哪个国家的首都？",
            "{country_zh}的首都是哪里？",
            "{country_zh}的首都是哪个城市？",
            "Which country is {city} in?",
            "Where is {city}?",
        ),
        "val": ("Tell me the capital of {country}.", "{capital_zh}是哪国的首都？", "In which country is {city}?"),
    },
)


def world_question(rng: random.Random, split: Split) -> tuple[str, str, str]:
    """(question, answer, the word the answer must hold): a fact question shaped like an identity question."""
    template = rng.choice(WORLD[split])
    if "{city}" in template:
        city, country = rng.choice(split_pool(vocabulary.CITIES, split))
        return template.format(city=city), rng.choice((f"{city} is in {country}.", f"It is in {country}.")), country
    capital, country, capital_zh, country_zh = rng.choice(split_pool(CAPITALS, split))
    question = template.format(capital=capital, country=country, capital_zh=capital_zh, country_zh=country_zh)
    if "{capital_zh}" in template:
        return question, f"{capital_zh}是{country_zh}的首都。", country_zh
    if "{country_zh}" in template:
        return question, f"{country_zh}的首都是{capital_zh}。", capital_zh
    if "{country}" in template:
        return question, f"The capital of {country} is {capital}.", capital
    return question, f"{capital} is the capital of {country}.", country.removeprefix("the ")


def persona_eval(rng: random.Random) -> dict[str, object]:
    """A held-out persona prompt: the answer must hold the persona's name and must not say MiniGPT."""
    system, question, _, name = persona_exchange(rng, "val")
    return {
        "kind": "persona",
        "messages": [{"role": "system", "content": system}, user(question)],
        "must_contain": [name],
        "must_not_contain": [NAME],
    }


def off_topic_eval(rng: random.Random) -> dict[str, object]:
    """A held-out world question: the answer must hold the fact and must not be the identity answer."""
    question, _, word = world_question(rng, "val")
    return {"kind": "off_topic", "messages": [user(question)], "must_contain": [word], "must_not_contain": [NAME]}
