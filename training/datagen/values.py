"""Procedural argument values: words, made-up names, phrases, sentences, e-mails and numbers from large spaces.

What it is: value generators for tool scenarios whose spaces are far too large to memorise (thousands of made-up
words built from syllables, phrases of real words, numbers up to four digits), each split by `value_split`, so a
model can only fill a call's arguments by copying them from the request, and held-out values never occur in
training. Small fixed pools taught the demo model to recall a favourite value instead of reading the request.
What it is not: phrasing templates (each scenario module owns its own) or tool schemas.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from training.datagen import vocabulary
from training.datagen.base import Split, value_split

T = TypeVar("T")

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "ch", "sh", "kl")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "x")

WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "window",
    "market",
    "silver",
    "forest",
    "candle",
    "bridge",
    "harbor",
    "lemon",
    "pepper",
    "rocket",
    "mirror",
    "pillow",
    "ladder",
    "jacket",
    "basket",
    "violin",
    "tiger",
    "falcon",
    "maple",
    "copper",
    "velvet",
    "meadow",
    "island",
    "canyon",
    "desert",
    "valley",
    "summit",
    "anchor",
    "lantern",
    "compass",
    "teapot",
    "blanket",
    "button",
    "carpet",
    "pencil",
    "marble",
    "feather",
    "castle",
    "village",
    "station",
    "museum",
    "theater",
    "library",
    "kitchen",
    "orchard",
    "harvest",
    "thunder",
    "rainbow",
    "sunset",
    "morning",
    "evening",
    "winter",
    "summer",
    "autumn",
    "spring",
    "ocean",
    "planet",
    "comet",
    "galaxy",
    "engine",
    "wagon",
    "bicycle",
    "tractor",
    "sailboat",
    "lighthouse",
    "cottage",
    "tower",
    "fountain",
    "statue",
    "painting",
    "poem",
    "story",
    "letter",
    "diary",
    "journal",
    "recipe",
    "puzzle",
    "riddle",
    "secret",
    "promise",
    "journey",
    "voyage",
    "festival",
    "concert",
    "picnic",
    "parade",
    "holiday",
    "weekend",
    "birthday",
    "wedding",
    "coffee",
    "cookie",
    "noodle",
    "pizza",
    "salad",
    "butter",
    "cheese",
    "honey",
    "ginger",
    "cherry",
    "mango",
    "banana",
    "orange",
    "potato",
    "tomato",
    "carrot",
    "onion",
    "garlic",
    "pumpkin",
    "walnut",
    "almond",
    "olive",
    "dolphin",
    "penguin",
    "rabbit",
    "turtle",
    "parrot",
    "koala",
    "panda",
    "zebra",
    "giraffe",
    "camel",
    "otter",
    "badger",
    "beaver",
    "eagle",
    "owl",
    "sparrow",
    "salmon",
    "lobster",
    "spider",
    "beetle",
    "monkey",
    "kitten",
    "puppy",
    "pony",
    "robot",
    "laptop",
    "camera",
    "guitar",
    "piano",
    "trumpet",
    "drum",
    "banner",
    "ticket",
    "crystal",
    "diamond",
    "emerald",
    "ruby",
    "pearl",
    "amber",
    "ivory",
    "indigo",
    "crimson",
    "golden",
    "scarlet",
    "quiet",
    "brave",
    "gentle",
    "happy",
    "lucky",
    "sunny",
    "rapid",
    "clever",
    "humble",
    "bright",
    "frozen",
    "hidden",
    "ancient",
    "modern",
    "little",
    "giant",
    "northern",
    "southern",
    "eastern",
    "western",
    "wild",
)
VERBS = (
    "sings",
    "waits",
    "walks",
    "sleeps",
    "shines",
    "grows",
    "falls",
    "runs",
    "jumps",
    "dances",
    "smiles",
    "travels",
    "arrives",
    "returns",
    "glows",
    "floats",
    "rests",
    "turns",
    "hides",
    "wakes",
)
PLACES = ("near the", "behind the", "under the", "beside the", "past the", "inside the", "over the")
TIMES = ("every day", "at night", "in the morning", "today", "on Sunday", "after lunch", "at nine", "twice a week")
DOMAINS = ("example.com", "mail.com", "test.org", "post.net", "inbox.io")


def split_draw(
    rng: random.Random, split: Split, kind: str, draw: Callable[[random.Random], T], also: tuple[str, ...] = ()
) -> T:
    """Draw values until one falls into `split` (one in five is held out: a few draws at most), under `kind` and
    under each kind in `also` (for a value space two kinds share)."""
    for _ in range(1000):
        value = draw(rng)
        if all(value_split(k, value) == split for k in (kind, *also)):
            return value
    raise RuntimeError(f"no {split} value of kind {kind!r} in 1000 draws")


def _made_up(rng: random.Random) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(2, 3)))


def made_up_word(rng: random.Random, split: Split) -> str:
    """A pronounceable made-up word of 2-3 syllables, e.g. "trouvel", "kaisomex"."""
    return split_draw(rng, split, "made_up", _made_up)


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _letters(rng: random.Random) -> str:
    """3-9 letters drawn uniformly: no syllable structure, so the tokenizer splits it into rare pieces."""
    text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 9)))
    roll = rng.random()
    if roll < 0.25:
        return text.capitalize()
    if roll < 0.32:
        return text[:4].upper()
    if roll < 0.42:
        return text + str(rng.randint(0, 99))
    return text


def letter_word(rng: random.Random, split: Split) -> str:
    """A random string of letters, e.g. "qzvkt", "Wopxa", "RBXE", "hjemq7".

    Words a model has never seen (a client's product names, place names, jargon) reach it as runs of small
    tokens; copying those exactly is a skill of its own that syllable-built words do not teach.
    """
    return split_draw(rng, split, "letters", _letters)


def rare_words(rng: random.Random, split: Split) -> str:
    """One to four words mixing random-letter, made-up and real words, joined by spaces or / - _ .

    Shaped like the strings clients pass around: "Kemro/Vazq", "ujb-delta 12", "Tiger qopfz river".
    """

    def draw(r: random.Random) -> str:
        makers = (_letters, _letters, _made_up, lambda q: q.choice(WORDS))
        words = [r.choice(makers)(r) for _ in range(r.randint(1, 4))]
        if all(w in WORDS for w in words):  # one unseen word at least: real-word values are word()'s and phrase()'s
            words[r.randrange(len(words))] = _letters(r)
        if r.random() < 0.3:
            words[0] = words[0].capitalize()
        sep = r.choice((" ", " ", " ", "/", "-", "_", "."))
        return sep.join(words)

    return split_draw(rng, split, "rare_words", draw)


def word(rng: random.Random, split: Split) -> str:
    return split_draw(rng, split, "word", lambda r: r.choice(WORDS))


def proper_name(rng: random.Random, split: Split) -> str:
    """A capitalised name (a person, a place, a project): made-up, or one or two real words."""
    if split == "train" and rng.random() < 0.25:
        return letter_word(rng, split).capitalize()
    roll = rng.random()
    if roll < 0.6:
        return made_up_word(rng, split).capitalize()
    if roll < 0.8:
        return word(rng, split).capitalize()
    # two real words are phrase()'s space too: a training name must not be a held-out phrase
    also = ("phrase",) if split == "train" else ()
    return split_draw(rng, split, "name2", lambda r: f"{r.choice(WORDS).capitalize()} {r.choice(WORDS)}", also)


def email(rng: random.Random, split: Split) -> str:
    return split_draw(rng, split, "email", lambda r: f"{_made_up(r)}@{r.choice(DOMAINS)}")


def username(rng: random.Random, split: Split) -> str:
    return split_draw(rng, split, "user", lambda r: _made_up(r) + (str(r.randint(1, 99)) if r.random() < 0.4 else ""))


def phrase(rng: random.Random, split: Split) -> str:
    """Two or three words, the first capitalised, e.g. "Silver meadow picnic"."""

    def draw(r: random.Random) -> str:
        words = [r.choice(WORDS) for _ in range(r.randint(2, 3))]
        return " ".join([words[0].capitalize(), *words[1:]])

    return split_draw(rng, split, "phrase", draw, ("name2",) if split == "train" else ())


def sentence(rng: random.Random, split: Split) -> str:
    """A short plain sentence, e.g. "The quiet otter sleeps near the lighthouse at night."."""

    def draw(r: random.Random) -> str:
        subject = f"The {r.choice(WORDS)} {r.choice(WORDS)}" if r.random() < 0.5 else f"My {r.choice(WORDS)}"
        rest = [r.choice(VERBS)]
        if r.random() < 0.7:
            rest.append(f"{r.choice(PLACES)} {r.choice(WORDS)}")
        if r.random() < 0.5:
            rest.append(r.choice(TIMES))
        return f"{subject} {' '.join(rest)}."

    if split == "train" and rng.random() < 0.35:
        return rare_sentence(rng, split)
    return split_draw(rng, split, "sentence", draw)


def rare_sentence(rng: random.Random, split: Split) -> str:
    """A sentence whose words are often unseen ones, with commas and varied endings (train-side copy practice)."""

    def draw(r: random.Random) -> str:
        makers = (_letters, _made_up, lambda q: q.choice(WORDS), lambda q: q.choice(WORDS), lambda q: q.choice(VERBS))
        words = [r.choice(makers)(r) for _ in range(r.randint(3, 9))]
        if r.random() < 0.3:
            words[r.randrange(len(words) - 1)] += ","
        return " ".join([words[0].capitalize(), *words[1:]]) + r.choice((".", ".", "!", "?", ""))

    return split_draw(rng, split, "rare_sentence", draw)


def _topic(r: random.Random) -> str:
    """A noun phrase from the common vocabulary, the way people name a topic: "sorting invoices", "the harbor"."""
    (verb, _), noun, noun2 = r.choice(vocabulary.VERBS), r.choice(vocabulary.NOUNS), r.choice(vocabulary.NOUNS)
    return r.choice(
        (
            f"{vocabulary.gerund(verb)} {noun}s",
            f"{vocabulary.gerund(verb)} the {noun}",
            f"{noun} {vocabulary.gerund(verb)}",
            f"{r.choice(vocabulary.ADJECTIVES)} {noun}",
            f"{noun} {noun2}",
            f"the {noun}",
        )
    )


def query(rng: random.Random, split: Split) -> str:
    """A search query of two or three lower-case words (in training, also unseen words and vocabulary topics)."""
    if split == "train":
        roll = rng.random()
        if roll < 0.35:
            return rare_words(rng, split)
        if roll < 0.6:
            return split_draw(rng, split, "query", _topic)
    return split_draw(rng, split, "query", lambda r: " ".join(r.choice(WORDS) for _ in range(r.randint(2, 3))))


def string_value(rng: random.Random, split: Split) -> str:
    """Any short string argument: a name, a word, a phrase, an e-mail address or a user name."""
    makers: tuple[Callable[[random.Random, Split], str], ...] = (
        proper_name,
        proper_name,
        word,
        phrase,
        email,
        username,
    )
    if split == "train":  # never-seen words, too: clients' values are not from our word list
        makers = (*makers, rare_words, letter_word)
    return rng.choice(makers)(rng, split)


def integer(rng: random.Random, split: Split, high: int = 9999) -> int:
    """1..high, small numbers more often (digit count drawn first)."""

    def draw(r: random.Random) -> int:
        digits = r.randint(1, len(str(high)))
        return r.randint(10 ** (digits - 1), min(high, 10**digits - 1))

    return split_draw(rng, split, f"int{high}", draw)
