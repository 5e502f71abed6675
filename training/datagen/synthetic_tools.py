"""Synthetic tool schemas: generated verb_noun tools with parameters of every JSON type, and matching requests.

What it is: a generator of OpenAI tool dicts (string, integer, number, boolean, enum, array, nested object and
optional parameters) and of `ToolScenario`s whose user request names every value the call must copy into its
arguments, so a model learns to read whatever schema it is offered. Verbs, nouns, parameter value pools and
request phrasings are split: held-out tools have names, values and wordings never seen in training.
What it is not: the parameter kinds and their values (synthetic_params.py), the built-in tools (tools_data.py) or
conversation assembly (tool_dialogues.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from training.datagen import values, vocabulary
from training.datagen.base import Split, compose_templates, register_templates
from training.datagen.synthetic_params import PARAM_KINDS, ParamKind
from training.datagen.tools_data import ToolScenario

# (verb, past participle)
VERBS: dict[Split, tuple[tuple[str, str], ...]] = {
    "train": (
        ("create", "created"),
        ("get", "retrieved"),
        ("update", "updated"),
        ("delete", "deleted"),
        ("list", "listed"),
        ("send", "sent"),
        ("book", "booked"),
        ("find", "found"),
        ("cancel", "cancelled"),
        ("check", "checked"),
        ("add", "added"),
        ("start", "started"),
        ("stop", "stopped"),
        ("upload", "uploaded"),
        ("rate", "rated"),
        ("order", "ordered"),
        ("track", "tracked"),
        ("share", "shared"),
        ("save", "saved"),
        ("move", "moved"),
        ("open", "opened"),
        ("close", "closed"),
        ("print", "printed"),
        ("renew", "renewed"),
        ("approve", "approved"),
        ("reject", "rejected"),
        ("copy", "copied"),
        ("rename", "renamed"),
        ("lock", "locked"),
        ("unlock", "unlocked"),
        ("pause", "paused"),
        ("resume", "resumed"),
        ("sync", "synced"),
        ("tag", "tagged"),
        ("pin", "pinned"),
        ("mute", "muted"),
        ("block", "blocked"),
        ("invite", "invited"),
        ("join", "joined"),
        ("leave", "left"),
        ("follow", "followed"),
        ("like", "liked"),
        ("buy", "bought"),
        ("sell", "sold"),
        ("rent", "rented"),
        ("return", "returned"),
        ("refund", "refunded"),
        ("pay", "paid"),
        ("charge", "charged"),
        ("verify", "verified"),
        ("confirm", "confirmed"),
        ("submit", "submitted"),
        ("merge", "merged"),
        ("split", "split"),
        ("scan", "scanned"),
        ("import", "imported"),
        ("download", "downloaded"),
        ("restore", "restored"),
        ("edit", "edited"),
        ("review", "reviewed"),
        ("plan", "planned"),
        ("count", "counted"),
        ("clean", "cleaned"),
        ("fix", "fixed"),
        ("build", "built"),
        ("draw", "drew"),
        ("load", "loaded"),
        ("reset", "reset"),
        ("ship", "shipped"),
    ),
    "val": (
        ("schedule", "scheduled"),
        ("archive", "archived"),
        ("register", "registered"),
        ("fetch", "fetched"),
        ("assign", "assigned"),
        ("reserve", "reserved"),
        ("publish", "published"),
        ("export", "exported"),
    ),
}
NOUNS: dict[Split, tuple[str, ...]] = {
    "train": (
        "ticket",
        "order",
        "invoice",
        "playlist",
        "reminder",
        "recipe",
        "note",
        "meeting",
        "flight",
        "hotel",
        "user",
        "task",
        "message",
        "photo",
        "song",
        "review",
        "payment",
        "event",
        "contact",
        "file",
        "album",
        "table",
        "room",
        "project",
        "account",
        "booking",
        "report",
        "document",
        "folder",
        "calendar",
        "budget",
        "customer",
        "device",
        "printer",
        "ride",
        "trip",
        "car",
        "bike",
        "book",
        "movie",
        "game",
        "course",
        "class",
        "team",
        "group",
        "channel",
        "post",
        "comment",
        "image",
        "video",
        "robot",
        "sensor",
        "alarm",
        "light",
        "door",
        "plant",
        "pet",
        "dog",
        "doctor",
        "patient",
        "store",
        "product",
        "cart",
        "wallet",
        "loan",
        "card",
        "badge",
        "survey",
        "poll",
        "quiz",
        "exam",
        "grade",
        "issue",
        "bug",
        "release",
        "server",
        "database",
        "backup",
        "key",
        "password",
        "domain",
        "site",
        "page",
        "map",
        "route",
        "station",
        "train",
        "bus",
        "seat",
        "menu",
        "dish",
        "drink",
        "party",
        "gift",
        "letter",
        "package",
        "contract",
        "license",
        "visa",
        "passport",
        "shift",
        "job",
        "candidate",
        "interview",
    ),
    "val": (
        "parcel",
        "subscription",
        "vehicle",
        "workout",
        "appointment",
        "coupon",
        "shipment",
        "lesson",
        "podcast",
        "garden",
    ),
}


def _with_common_words() -> None:
    """Train tool names also draw on the common vocabulary, minus every held-out verb and noun."""
    held_verbs = {v for v, _ in VERBS["val"]}
    train_verbs = {v for v, _ in VERBS["train"]}
    VERBS["train"] += tuple(p for p in vocabulary.VERBS if p[0] not in held_verbs | train_verbs)
    NOUNS["train"] += tuple(n for n in vocabulary.NOUNS if n not in set(NOUNS["val"]) | set(NOUNS["train"]))


_with_common_words()
DESCRIPTIONS = register_templates(
    "synthetic.description",
    {
        "train": (
            "{Verb} {a} {noun}.",
            "Use this to {verb} {a} {noun}.",
            "{Verb}s {a} {noun} for the user.",
            "Tool that can {verb} {a} {noun}.",
            "{Verb} {noun} records.",
            "Call this to {verb} {a} {noun} in the system.",
        ),
        "val": ("Lets you {verb} {a} {noun}.", "{Verb} one {noun} on request."),
    },
)
OPENERS = (
    "Please ",
    "Kindly ",
    "Now ",
    "Alright, ",
    "OK, ",
    "Next, ",
    "Then ",
    "First, ",
    "I'd like you to ",
    "I want you to ",
    "Can you ",
    "Would you ",
    "Can we ",
    "Do me a favor and ",
    "Feel free to ",
    "Remember to ",
    "Try to ",
    "Help me ",
    "Let's ",
    "I need to ",
    "We should ",
    "It's time to ",
    "Hey, ",
    "Hi! Please ",
)
OBJECTS = ("{a} {noun}", "the {noun}", "my {noun}", "a new {noun}", "this {noun}", "our {noun}")
LINKS = (
    " with {params}",
    " using {params}",
    " - {params}",
    " ({params})",
    " with the following: {params}",
    " given {params}",
    " where {params}",
    " and set {params}",
    " based on {params}",
    ": {params}",
    " taking {params}",
    " that has {params}",
    ", {params}",
)
ENDS = (".", "?", "!", "")
HELD_OUT_REQUESTS = (
    "Could you {verb} one {noun} using {params}?",
    "Go ahead and {verb} {a} {noun} with these: {params}.",
)
REQUESTS = register_templates(
    "synthetic.request",
    {
        "train": (
            "Please {verb} {a} {noun} with {params}.",
            "{Verb} the {noun}: {params}.",
            "I want to {verb} {a} {noun}. Use {params}.",
            "Can you {verb} {a} {noun}? Set {params}.",
            "{Verb} {a} {noun} for me, {params}.",
            "I need you to {verb} {a} {noun} ({params}).",
            "Time to {verb} {a} {noun}. The details: {params}.",
            "Hey, {verb} {a} {noun} with {params}, thanks.",
            "{params}: {verb} {a} {noun} with that.",
            "Would you {verb} {a} {noun}? I'd like {params}.",
            "请{verb}一个 {noun}，参数：{params}。",
            "帮我 {verb} {noun}：{params}。",
            "Let's {verb} {a} {noun}: {params}.",
            "{Verb} {noun}, {params}.",
            "Need to {verb} {a} {noun} - {params}.",
            "With {params}, {verb} {a} {noun}.",
            "Make sure to {verb} the {noun} using {params}.",
            "{Verb} this {noun} please: {params}.",
            "Ok, {verb} {a} {noun}. Details are {params}.",
            "Please {verb} my {noun} ({params}).",
            "I'd like you to {verb} {a} {noun}, {params}.",
            "Go {verb} {a} {noun} where {params}.",
            "{params} - please {verb} {a} {noun}.",
            "Quick request: {verb} {a} {noun} with {params}.",
        ),
        "val": HELD_OUT_REQUESTS,
    },
)
# a small grammar of English requests beside the hand-written ones (half of the training requests)
REQUESTS_COMPOSED = compose_templates(OPENERS, ("{verb} ",), OBJECTS, LINKS, ENDS, avoid=HELD_OUT_REQUESTS) + (
    compose_templates(("{Verb} ",), OBJECTS, LINKS, ENDS, avoid=HELD_OUT_REQUESTS)
)


def article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


@dataclass
class SyntheticTool:
    tool: dict[str, Any]
    verb: str
    participle: str
    noun: str
    kinds: dict[str, ParamKind]


def _unseen_word(rng: random.Random, split: Split) -> str:
    """A lower-case word no list holds: pronounceable (syllables) or random letters, which tokenize into rare
    pieces the way a client's unfamiliar words do."""
    if rng.random() < 0.5:
        return values.made_up_word(rng, split)
    return "".join(c for c in values.letter_word(rng, split).lower() if c.isalpha())


def make_tool(
    rng: random.Random, split: Split, verb: tuple[str, str] | None = None, noun: str | None = None
) -> SyntheticTool:
    """A random verb_noun tool with 1-4 parameters of distinct names; about a third are optional."""
    if verb is None and split == "train" and rng.random() < 0.55:  # unseen verbs, too: read the name, not recall
        made_up = _unseen_word(rng, split)
        verb = (made_up, made_up + "ed")
    verb_word, participle = verb or rng.choice(VERBS[split])
    if noun is None:  # unseen nouns (train only) teach matching the request's words to the name, not recall
        noun = _unseen_word(rng, split) if split == "train" and rng.random() < 0.6 else rng.choice(NOUNS[split])
    kinds = rng.sample(PARAM_KINDS, rng.randint(1, 4))
    chosen = {rng.choice(kind.names): kind for kind in kinds}
    properties = {name: kind.schema(name) for name, kind in chosen.items()}
    names = list(chosen)
    required = [n for i, n in enumerate(names) if i == 0 or rng.random() < 0.65]
    description = rng.choice(DESCRIPTIONS[split]).format(
        verb=verb_word, Verb=verb_word.capitalize(), noun=noun, a=article(noun)
    )
    tool = {
        "type": "function",
        "function": {
            "name": f"{verb_word}_{noun}",
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }
    return SyntheticTool(tool, verb_word, participle, noun, chosen)


def distractor_tools(rng: random.Random, split: Split, target: SyntheticTool, count: int) -> list[dict[str, Any]]:
    """Other synthetic tools; some share the target's noun or verb, so the whole name must be read."""
    out: list[dict[str, Any]] = []
    names = {target.tool["function"]["name"]}
    while len(out) < count:
        roll = rng.random()
        if roll < 0.4:
            other = make_tool(rng, split, noun=target.noun)
        elif split == "train" and roll < 0.6:  # the same verb on another noun: both words must match
            other = make_tool(rng, split, verb=(target.verb, target.participle))
        else:
            other = make_tool(rng, split)
        if other.tool["function"]["name"] not in names:
            names.add(other.tool["function"]["name"])
            out.append(other.tool)
    return out


def synthetic_scenario(rng: random.Random, split: Split) -> tuple[ToolScenario, SyntheticTool]:
    """A request that mentions each chosen argument value; the call copies them; a JSON result; the answer."""
    spec = make_tool(rng, split)
    required = set(spec.tool["function"]["parameters"]["required"])
    arguments: dict[str, Any] = {}
    phrases: list[str] = []
    for name, kind in spec.kinds.items():
        if name not in required and rng.random() < 0.4:
            continue  # optional and not mentioned: the call must leave it out
        arguments[name] = kind.value(rng, split, name)
        phrases.append(kind.phrase(rng, name, arguments[name]))
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    templates = REQUESTS_COMPOSED if split == "train" and rng.random() < 0.5 else REQUESTS[split]
    request = rng.choice(templates).format(
        verb=spec.verb, Verb=spec.verb.capitalize(), noun=spec.noun, a=article(spec.noun), params=joined
    )
    record_id = f"{spec.noun[:3].upper()}-{rng.randint(100, 9999)}"
    result = json.dumps({"status": "ok", "id": record_id})
    answer = rng.choice(
        (
            f"Done: the {spec.noun} was {spec.participle} (id {record_id}).",
            f"The {spec.noun} has been {spec.participle}. Its id is {record_id}.",
        )
    )
    # starts with the offered name (copied from the tool list), never with a stock phrase that a request without
    # tools could also trigger ("The user wants to ..." leaked into think-mode word problems)
    reasoning = f"{spec.tool['function']['name']} fits: it can {spec.verb} {article(spec.noun)} {spec.noun}."
    return ToolScenario(spec.tool, request, arguments, result, answer, reasoning), spec
