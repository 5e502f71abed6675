"""Word lists the composed tools are built from: domains of objects, quantities and parameters (issue 18).

What it is: for each domain (geometry, physics, money, statistics, health, chemistry, sport, places, media, history,
computing, maths, everyday life) the objects a tool works on, the quantities it computes or looks up, and the
parameters such a tool takes — numbers with their unit and range, free texts with the kind of value they hold,
enumerations with their options — plus the verbs and description phrasings that tie them together. Nothing here is
taken from any benchmark: the lists are everyday and school vocabulary, combined at random by composed_tools.py
into far more tools than a small model can memorise.
What it is not: the tools, requests or dialogues (composed_tools.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Number:
    label: str  # words of the parameter ("initial speed"); its name is derived from them
    unit: str  # "" when unitless
    low: float
    high: float
    integer: bool = True


@dataclass(frozen=True)
class Text:
    label: str
    maker: str  # which value maker fills it: name | place | word | phrase | code | date | formula


@dataclass(frozen=True)
class Choice:
    label: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    objects: tuple[str, ...]
    quantities: tuple[str, ...]
    numbers: tuple[Number, ...]
    texts: tuple[Text, ...] = ()
    choices: tuple[Choice, ...] = ()


N, T, C = Number, Text, Choice
UNITS = C("unit", ("metric", "imperial"))
DOMAINS: dict[str, Domain] = {
    "geometry": Domain(
        ("hexagon", "cone", "sphere", "prism", "pyramid", "ellipse", "trapezoid", "rhombus", "cube", "torus",
         "sector", "annulus", "kite", "octagon", "parallelogram", "cylinder tank", "garden bed", "window pane"),
        ("surface area", "lateral area", "diagonal length", "inradius", "enclosed volume", "outline length",
         "bounding box", "centroid position", "arc length", "side count", "interior angle"),
        (N("radius", "cm", 1, 90), N("side length", "cm", 1, 120), N("height", "cm", 1, 200),
         N("slant height", "cm", 2, 150), N("base width", "cm", 1, 150), N("angle", "degrees", 5, 175),
         N("depth", "m", 1, 40), N("apothem", "cm", 1, 60), N("major axis", "cm", 4, 300),
         N("minor axis", "cm", 2, 200), N("thickness", "mm", 1, 50, False)),
        (),
        (UNITS, C("rounding", ("none", "one decimal", "two decimals"))),
    ),
    "physics": Domain(
        ("projectile", "pendulum", "spring", "sled", "satellite", "capacitor", "resistor network", "lens",
         "gas sample", "water jet", "steel beam", "sound wave", "model rocket", "falling ball", "flywheel",
         "cyclist", "elevator", "kite string"),
        ("kinetic energy", "momentum", "oscillation period", "natural frequency", "stopping distance",
         "terminal speed", "power output", "peak pressure", "stored charge", "focal distance", "wavelength",
         "net force", "impulse", "work done", "peak height", "flight time"),
        (N("mass", "kg", 1, 900), N("initial speed", "m/s", 1, 90), N("final speed", "m/s", 1, 120),
         N("elapsed time", "s", 1, 600), N("travel distance", "m", 1, 5000), N("applied force", "N", 1, 9000),
         N("spring constant", "N/m", 5, 900), N("temperature", "K", 150, 900), N("gas volume", "L", 1, 80),
         N("length", "m", 1, 300, False), N("launch angle", "degrees", 5, 85), N("voltage", "V", 1, 480),
         N("current", "A", 1, 60, False), N("frequency", "Hz", 20, 20000), N("gravity", "m/s2", 1, 25, False)),
        (),
        (C("medium", ("air", "water", "vacuum", "oil")),),
    ),
    "money": Domain(
        ("loan", "mortgage", "bond", "savings account", "investment", "portfolio", "car lease", "credit card debt",
         "stock position", "pension fund", "annuity", "small business", "rental property", "student loan"),
        ("monthly payment", "total interest", "projected value", "present value", "yield to maturity",
         "annual return", "payoff time", "break-even point", "net profit", "tax owed", "cash flow",
         "depreciation", "dividend income", "effective rate"),
        (N("principal", "dollars", 500, 900000), N("annual rate", "percent", 1, 25, False),
         N("term in years", "", 1, 40), N("monthly deposit", "dollars", 10, 5000),
         N("initial amount", "dollars", 100, 500000), N("fee", "dollars", 1, 900),
         N("tax rate", "percent", 1, 55, False), N("inflation rate", "percent", 1, 15, False),
         N("number of payments", "", 2, 480), N("share price", "dollars", 1, 3000, False),
         N("share count", "", 1, 10000), N("purchase price", "dollars", 50, 900000)),
        (T("account holder", "name"), T("ticker", "code")),
        (C("compounding", ("daily", "monthly", "quarterly", "yearly")), C("currency", ("USD", "EUR", "GBP", "JPY"))),
    ),
    "statistics": Domain(
        ("data set", "sample", "survey", "experiment", "population", "time series", "test score list",
         "sensor log", "poll", "clinical trial", "sales record"),
        ("mean value", "median value", "variance", "spread", "z value", "confidence range", "percentile",
         "correlation strength", "required sample size", "error margin", "trend line", "outlier count"),
        (N("sample size", "", 5, 5000), N("observed value", "", 1, 900, False), N("expected mean", "", 1, 500, False),
         N("deviation", "", 1, 90, False), N("confidence level", "percent", 80, 99), N("population size", "", 100,
         90000), N("percentile rank", "", 1, 99), N("window size", "", 2, 60)),
        (T("column name", "word"),),
        (C("method", ("pearson", "spearman", "kendall")), C("tail", ("one-sided", "two-sided"))),
    ),
    "health": Domain(
        ("patient", "athlete", "cell culture", "bacteria colony", "diet plan", "runner", "newborn", "swimmer",
         "training plan", "house plant", "dog", "hiker"),
        ("body mass index", "daily calorie need", "target heart rate", "growth rate", "doubling time", "dose",
         "water intake", "protein need", "recovery time", "sleep need", "burned calories"),
        (N("body weight", "kg", 3, 180), N("body height", "cm", 45, 210), N("age", "years", 1, 99),
         N("hours of activity", "", 1, 14), N("initial count", "cells", 10, 90000),
         N("dose per kilogram", "mg", 1, 40), N("resting pulse", "bpm", 40, 100), N("days", "", 1, 90)),
        (T("patient name", "name"),),
        (C("activity level", ("low", "moderate", "high")), C("sex", ("female", "male"))),
    ),
    "chemistry": Domain(
        ("solution", "compound", "reaction", "gas mixture", "acid", "buffer", "alloy", "isotope", "salt water",
         "fuel blend", "soil sample", "coffee brew"),
        ("molarity", "molar mass", "acidity", "percent yield", "half life", "mixture density", "boiling point",
         "heat released", "mass fraction", "dilution factor", "reaction time"),
        (N("moles", "mol", 1, 50, False), N("solution volume", "L", 1, 40, False), N("sample mass", "g", 1, 900),
         N("temperature", "degrees Celsius", 1, 400), N("pressure", "atm", 1, 30, False),
         N("initial quantity", "g", 1, 800), N("elapsed years", "", 1, 9000)),
        (T("formula", "formula"), T("element", "word")),
        (C("state", ("solid", "liquid", "gas")),),
    ),
    "sport": Domain(
        ("team", "player", "match", "league", "race", "tournament", "golf round", "chess game", "relay", "season",
         "boxing bout", "marathon"),
        ("win ratio", "points per game", "ranking", "fixture list", "standings", "fastest lap", "final score",
         "player rating", "head-to-head record", "top scorer", "medal count"),
        (N("season year", "", 1990, 2030), N("games played", "", 1, 160), N("wins", "", 0, 120),
         N("losses", "", 0, 120), N("top results", "", 1, 50), N("round", "", 1, 38)),
        (T("team name", "name"), T("player name", "name"), T("league name", "phrase")),
        (C("sport", ("football", "basketball", "tennis", "cricket", "hockey")), C("venue", ("home", "away", "any"))),
    ),
    "places": Domain(
        ("city", "country", "museum", "restaurant", "park", "hotel", "airport", "national park", "river", "mountain",
         "beach", "island", "old town", "zoo"),
        ("resident count", "opening hours", "average rainfall", "elevation", "visitor reviews", "road distance",
         "clock offset", "best season", "ticket price", "nearby stations", "crowd level"),
        (N("year", "", 1900, 2030), N("search radius", "km", 1, 200), N("max results", "", 1, 50),
         N("minimum rating", "stars", 1, 5, False), N("group size", "", 1, 40)),
        (T("city name", "place"), T("country name", "place"), T("visit date", "date"), T("landmark", "phrase")),
        (C("month", ("January", "April", "July", "October", "December")), C("travel mode", ("car", "train", "walk"))),
    ),
    "media": Domain(
        ("song", "album", "artist", "painting", "concert", "film", "novel", "podcast episode", "poem", "musical",
         "photo exhibition", "comic series"),
        ("release date", "lyrics", "tempo", "chord list", "box office total", "critic score", "author",
         "running time", "tour dates", "streaming count", "cast list", "summary"),
        (N("release year", "", 1920, 2030), N("max items", "", 1, 30), N("minimum score", "", 1, 100)),
        (T("title", "phrase"), T("artist name", "name"), T("author name", "name")),
        (C("genre", ("jazz", "rock", "drama", "comedy", "folk", "classical")), C("language", ("English", "Spanish",
         "French", "German", "Japanese"))),
    ),
    "history": Domain(
        ("war", "empire", "invention", "discovery", "treaty", "scientist", "monument", "dynasty", "revolution",
         "expedition", "ancient city", "famous ship"),
        ("start date", "key figures", "short summary", "location", "outcome", "main causes", "timeline",
         "legacy", "founding year", "fall date"),
        (N("century", "", 1, 21), N("start year", "", 1000, 2000), N("end year", "", 1100, 2024),
         N("max facts", "", 1, 20)),
        (T("name", "name"), T("region", "place"), T("topic", "phrase")),
        (C("detail", ("brief", "full")),),
    ),
    "computing": Domain(
        ("file", "text string", "number list", "matrix", "network graph", "password", "web address", "photo",
         "log file", "spreadsheet", "code snippet", "database table"),
        ("checksum", "character count", "sorted order", "shortest path", "word frequency", "hash digest",
         "inverse", "transpose", "compressed size", "strength score", "duplicate rows"),
        (N("row count", "", 1, 500), N("column count", "", 1, 500), N("max length", "characters", 4, 4000),
         N("start node", "", 0, 99), N("end node", "", 0, 99), N("timeout", "seconds", 1, 600),
         N("quality", "percent", 10, 100)),
        (T("text", "phrase"), T("file path", "code"), T("table name", "word")),
        (C("algorithm", ("md5", "sha1", "sha256")), C("order", ("ascending", "descending"))),
    ),
    "maths": Domain(
        ("number", "integer pair", "polynomial", "sequence", "fraction", "equation", "curve", "series",
         "number set", "right triangle", "vector", "coin toss experiment"),
        ("prime factorization", "square root", "digit sum", "nth term", "binomial coefficient", "log value",
         "common multiple", "common divisor", "real roots", "slope", "vector length", "probability"),
        (N("first value", "", 1, 9999), N("second value", "", 1, 9999), N("coefficient a", "", 1, 60),
         N("coefficient b", "", 1, 90), N("coefficient c", "", 1, 90), N("exponent", "", 2, 12),
         N("base", "", 2, 16), N("term index", "", 1, 500), N("trials", "", 1, 200), N("successes", "", 0, 200),
         N("lower bound", "", 0, 50), N("upper bound", "", 51, 999)),
        (T("expression", "formula"),),
        (C("precision", ("integer", "decimal")),),
    ),
    "everyday": Domain(
        ("recipe", "road trip", "vegetable garden", "aquarium", "living room", "fence", "swimming pool", "party",
         "bookshelf", "wedding", "kitchen floor", "bike commute", "moving day"),
        ("shopping list", "paint needed", "fuel cost", "guest budget", "tile count", "water volume", "soil needed",
         "travel time", "cook duration", "carbon footprint", "power use", "serving size"),
        (N("guests", "", 1, 300), N("room width", "m", 1, 30, False), N("room length", "m", 1, 40, False),
         N("distance", "km", 1, 3000), N("fuel price", "dollars", 1, 9, False), N("servings", "", 1, 40),
         N("budget", "dollars", 20, 90000), N("hours", "", 1, 72), N("fuel economy", "km per liter", 5, 30)),
        (T("host name", "name"), T("location", "place"), T("main ingredient", "word")),
        (C("diet", ("vegan", "vegetarian", "any")), C("season", ("spring", "summer", "autumn", "winter"))),
    ),
}  # fmt: skip

# (base verb, third person, what the description calls the action); the request uses the base verb
VERBS: tuple[tuple[str, str], ...] = (
    ("compute", "Computes"),
    ("estimate", "Estimates"),
    ("determine", "Determines"),
    ("work out", "Works out"),
    ("find", "Finds"),
    ("get", "Gets"),
    ("look up", "Looks up"),
    ("predict", "Predicts"),
    ("evaluate", "Evaluates"),
    ("measure", "Measures"),
    ("check", "Checks"),
    ("analyze", "Analyzes"),
    ("report", "Reports"),
    ("fetch", "Fetches"),
    ("derive", "Derives"),
    ("model", "Models"),
    ("summarize", "Summarizes"),
    ("plan", "Plans"),
    ("forecast", "Forecasts"),
    ("assess", "Assesses"),
)
# words that may stand before the quantity in a tool's name ("est_total_power_output")
NAME_QUALIFIERS = ("total", "mean", "approx", "net", "exact", "expected", "peak", "current", "typical", "max")
NAME_VERBS = ("compute", "estimate", "get", "find", "eval", "calc", "lookup", "fetch", "derive", "predict",
              "measure", "analyze", "report", "check", "query", "solve", "model", "assess")  # fmt: skip
DESCRIPTION_EXTRAS = (
    " The result is returned as a number.",
    " Returns a JSON object with the result.",
    " Values are validated before use.",
    " Useful for planning and quick checks.",
    " Works offline.",
    " Inputs outside the valid range raise an error.",
    " Rounds to the requested precision.",
    " Based on standard textbook formulas.",
    "",
    "",
    "",
)
