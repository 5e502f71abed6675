"""Plain small talk: greetings, thanks, farewells and simple everyday questions (English and Chinese).

What it is: topics, each with split-disjoint question phrasings and a few consistent short answers; builders for
single- and two-turn SFT dialogues and `sample_chat` for other modules (no-tool-fits prompts, preference pairs).
What it is not: identity answers (identity.py) or anything needing tools or arithmetic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.datagen.base import Conversation, Split, assistant, is_zh, maybe_system, register_templates, user


@dataclass(frozen=True)
class Topic:
    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    answers: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "hello",
        ("Hello!", "Hi", "Hey there!", "Good morning!", "Hi, nice to meet you."),
        ("Greetings!", "Hello, anyone there?"),
        ("Hello! How can I help you today?", "Hi! What can I do for you?"),
    ),
    Topic(
        "hello_zh",
        ("你好", "您好！", "早上好！", "嗨"),
        ("哈喽！", "晚上好。"),
        ("你好！有什么可以帮你的吗？", "您好！请问需要什么帮助？"),
    ),
    Topic(
        "thanks",
        ("Thank you!", "Thanks a lot.", "Thanks for your help.", "Great, thanks!"),
        ("Much appreciated.", "Cheers, that helped."),
        ("You're welcome!", "Happy to help!", "Glad I could help."),
    ),
    Topic("thanks_zh", ("谢谢！", "非常感谢。", "谢谢你的帮助。"), ("多谢啦！",), ("不客气！", "很高兴能帮到你。")),
    Topic(
        "bye",
        ("Bye!", "Goodbye.", "See you later!", "I have to go now."),
        ("Talk to you soon.", "Catch you later!"),
        ("Goodbye! Have a nice day.", "See you! Take care."),
    ),
    Topic("bye_zh", ("再见！", "拜拜。", "我先走了。"), ("回头见！",), ("再见，祝你愉快！", "拜拜，下次见！")),
    Topic(
        "how",
        ("How are you?", "How are you doing?", "How's it going?"),
        ("How do you feel today?", "All good with you?"),
        ("I'm doing well, thank you! How can I help?", "I'm fine, thanks for asking."),
    ),
    Topic("how_zh", ("你好吗？", "最近怎么样？"), ("你今天过得好吗？",), ("我很好，谢谢！有什么可以帮你？",)),
    Topic(
        "sky",
        ("What color is the sky?", "Why is the sky blue?"),
        ("What colour is a clear sky?",),
        ("On a clear day the sky is blue, because air scatters blue light the most.",),
    ),
    Topic(
        "week",
        ("How many days are in a week?", "How many days does a week have?"),
        ("A week has how many days?",),
        ("A week has 7 days.",),
    ),
    Topic(
        "year",
        ("How many months are in a year?", "How many months does a year have?"),
        ("A year has how many months?",),
        ("A year has 12 months.",),
    ),
    Topic(
        "capital_fr",
        ("What is the capital of France?", "Which city is the capital of France?"),
        ("France's capital is which city?",),
        ("The capital of France is Paris.",),
    ),
    Topic(
        "capital_cn",
        ("中国的首都是哪里？", "What is the capital of China?"),
        ("China's capital city is?",),
        ("The capital of China is Beijing.", "中国的首都是北京。"),
    ),
    Topic(
        "water",
        ("What is water made of?", "What is the formula of water?"),
        ("Which elements make up water?",),
        ("Water is made of hydrogen and oxygen: H2O.",),
    ),
    Topic(
        "sun",
        ("Does the sun rise in the east?", "Where does the sun rise?"),
        ("In which direction does the sun rise?",),
        ("The sun rises in the east and sets in the west.",),
    ),
    Topic(
        "help",
        ("Can you help me?", "I need some help.", "Are you there?"),
        ("Could you assist me with something?",),
        ("Of course! What do you need?", "Sure, I'm here. What can I do for you?"),
    ),
    Topic(
        "joke",
        ("Tell me a joke.", "Say something funny."),
        ("Do you know any jokes?",),
        ("Why did the math book look sad? Because it had too many problems.",),
    ),
    Topic("cat_zh", ("猫喜欢吃什么？",), ("小猫爱吃什么？",), ("猫喜欢吃鱼和猫粮。",)),
    Topic("weather_zh", ("今天天气真好。",), ("外面阳光明媚。",), ("是啊，好天气让人心情愉快！",)),
    Topic(
        "color",
        ("What is your favorite color?",),
        ("Which colour do you like best?",),
        ("I don't have favorites, but many people love blue.",),
    ),
    Topic(
        "sleep",
        ("How many hours should I sleep?",),
        ("How much sleep do adults need?",),
        ("Most adults need about 7 to 9 hours of sleep.",),
    ),
)
register_templates(
    "smalltalk.questions",
    {
        "train": tuple(q for t in TOPICS for q in t.train),
        "val": tuple(q for t in TOPICS for q in t.val),
    },
)


def sample_chat(rng: random.Random, split: Split) -> tuple[str, str]:
    """One (question, answer) small-talk exchange from `split`'s phrasings."""
    topic = rng.choice(TOPICS)
    questions = topic.train if split == "train" else topic.val
    question = rng.choice(questions)
    if split == "train" and rng.random() < 0.1 and question.isascii():
        question = question.lower()
    zh = is_zh(question)
    matching = [a for a in topic.answers if is_zh(a) == zh]
    return question, rng.choice(matching or list(topic.answers))


def smalltalk_conversation(rng: random.Random, split: Split) -> Conversation:
    """One or two small-talk exchanges, optionally after a system turn."""
    messages = maybe_system(rng, split)
    for _ in range(1 if rng.random() < 0.7 else 2):
        question, answer = sample_chat(rng, split)
        messages += [user(question), assistant(answer)]
    return messages
