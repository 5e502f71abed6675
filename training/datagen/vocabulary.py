"""Common English vocabulary for the generator, read from the word lists in `training/datagen/wordlists/`.

What it is: the lists as the rest of the package imports them — `NOUNS`, `VERBS` (base form, past participle),
`ADJECTIVES`, `LINKS`, `REFERENCE_TEXTS`, `FUNCTION_WORDS` and `CITIES` (city, country), tuples in file order —
read once at import through `importlib.resources` (so they are found in a wheel as in a checkout), plus the two
inflection helpers `gerund` and `third_person`. The files are plain text: `*.txt` holds one entry a line, `*.tsv`
tab-separated pairs; lines starting with `#` are comments (corpus.source_digest puts the files in the corpus cache
key). What it is not: tool names, phrasing templates or argument values (the scenario modules own those).
"""

from __future__ import annotations

from importlib import resources

WORDLISTS = "wordlists"  # the folder of the word-list files, beside this module


def _lines(name: str) -> list[str]:
    """The entries of one word-list file: its lines without comments and blank lines."""
    text = resources.files("training.datagen").joinpath(WORDLISTS, name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def read_words(name: str) -> tuple[str, ...]:
    """A one-entry-a-line list (`nouns.txt`)."""
    return tuple(_lines(name))


def read_pairs(name: str) -> tuple[tuple[str, str], ...]:
    """A tab-separated two-column list (`verbs.tsv`); a line without exactly two columns is an error."""
    pairs: list[tuple[str, str]] = []
    for line in _lines(name):
        first, tab, second = line.partition("\t")
        if not tab or not first or not second or "\t" in second:
            raise ValueError(f"{WORDLISTS}/{name}: expected two tab-separated columns, got {line!r}")
        pairs.append((first, second))
    return tuple(pairs)


NOUNS: tuple[str, ...] = read_words("nouns.txt")
VERBS: tuple[tuple[str, str], ...] = read_pairs("verbs.tsv")  # (base form, past participle)
ADJECTIVES: tuple[str, ...] = read_words("adjectives.txt")
# Small words that link a request to its topic, and the kinds of reference text people ask to search.
LINKS: tuple[str, ...] = read_words("links.txt")
REFERENCE_TEXTS: tuple[str, ...] = read_words("reference_texts.txt")
# Everyday words of any text that the noun / verb / adjective lists do not hold.
FUNCTION_WORDS: tuple[str, ...] = read_words("function_words.txt")
# World cities and their countries, for plain-text geography (pretraining only: argument values keep their split).
CITIES: tuple[tuple[str, str], ...] = read_pairs("cities.tsv")


def gerund(verb: str) -> str:
    """The -ing form of a regular base form: `sample` -> `sampling`, `stop` -> `stopping`, `see` -> `seeing`."""
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")) and len(verb) > 2:
        return verb[:-1] + "ing"
    vowels = "aeiou"
    if (
        len(verb) >= 3
        and verb[-1] not in vowels + "wxy"
        and verb[-2] in vowels
        and verb[-3] not in vowels
        and sum(c in vowels for c in verb) == 1
    ):
        return verb + verb[-1] + "ing"
    return verb + "ing"


def third_person(verb: str) -> str:
    """The -s form: `leave` -> `leaves`, `watch` -> `watches`, `carry` -> `carries`."""
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"
