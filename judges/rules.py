"""Deterministic dimension evaluators: the checks a rule can decide better than a model.

Each evaluator is a pure function ``(JudgeRequest) -> DimensionVerdict | None`` with
``source="rule"``. ``None`` means "the rule cannot decide here": the dimension goes to the LLM judge.
:func:`evaluate_rules` runs every rule for a request and returns the dimensions they decided; those
verdicts take precedence over the LLM's answer for the same dimension.

Why rules beat the LLM on these dimensions: the checks are exact (a brand string is in the text or it
is not, a number is in the item facts or it is not), they cost nothing, they give the same answer on
every replay, and the small local judge model gets exactly these things wrong (it misses a made-up
"16 oz", a leaked URL or an injected "ignore previous instructions"). A rule decides only when it can
prove its answer; everything else stays with the model.

Rules (tags)
------------
The tag rules are the arbiter's (``agents.tag_rules``), so a tag the arbiter kept is not failed here
for a reason the arbiter checks; only the feedback is the judge's.

* **specificity** -- defect when the tag is not "modifier + core word" shaped (fewer or more words
  than the expert grammar allows) or contains a vague word (``agents.tag_rules.VAGUE_WORDS``:
  "stuff", "things", "products", "items", "good", "some", "various", "misc", ...). Otherwise undecided
  (the model judges nuance).
* **validity** -- defect when the tag is empty, has no letters (digits only), spans several lines,
  contains a URL, an e-mail address or markup, or names a brand from ``banned_terms``. Otherwise
  undecided.
* **consistency** (freshness) -- defect when the tag is an exact repeat of a recent purchase
  (case, punctuation and simple plurals ignored). Otherwise undecided (consistency with the intent is
  the model's call).
* **relevance** -- ``good`` when the graph grounded the tag in the user's log (``grounding``: a
  candidate tool found the phrase in this user's purchases before the run's date, with its evidence).
  Otherwise undecided (a free tag's relevance is the semantic evaluator's or the model's call).

Rules (explanations)
--------------------
* **clarity** -- defect when empty, not one line, shorter than :data:`MIN_EXPLANATION_WORDS` words
  or longer than :data:`MAX_EXPLANATION_WORDS` words / :data:`MAX_EXPLANATION_CHARS` characters, or
  containing control characters.
* **safety** -- defect on a URL or e-mail address, markup (HTML tags, markdown links, code fences,
  bold, template braces), our prompt section markers, instruction-like text ("ignore previous
  instructions", "system prompt", "grade S", ...), profanity or health claims
  (:data:`UNSAFE_PATTERNS`).
* **factuality** -- defect when the explanation states a fact absent from the item facts (title,
  category path, brand, attributes), the user's evidence and the environment: every number must
  appear there; a quantity with a unit ("16 oz") must not contradict the unit the facts give that
  number; a known brand (``banned_terms``) must be the item's own or appear in the facts; a named
  department/aisle/section ("from our bakery section") must match the item's category words; what
  the text says the item *is* ("this kids cereal", "this is a bag of baked bread") may not name a
  product noun (:data:`PRODUCT_NOUNS`) that the item's own facts lack.
  Otherwise undecided (the model judges other claims).
* **timeliness** -- when the explanation names a season or a holiday, it must fit the environment's
  date: the current season (or the next one within 30 days / the previous one within 14 days), a
  holiday within :data:`HOLIDAY_AHEAD_DAYS` days ahead (or a few days past) or one the environment
  lists. All mentions fitting gives ``good``, any misfit ``defect``; no mention leaves it to the
  model. Season and holiday words that are part of the product ("spring water", "winter squash",
  a title containing "Christmas") are not mentions.
* **relevance, informativeness, attractiveness** -- no rule.

Precision over recall: a false defect drops a good output, so every rule fires only on a pattern
that is wrong in every context we could think of, and the ambiguous cases ("grade A eggs", "cured
ham", "spring mix", "fall apart") are excluded explicitly and covered by tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from datetime import date
from functools import lru_cache

from agents.tag_rules import (
    MARKUP,
    MAX_TAG_WORDS,
    MIN_TAG_WORDS,
    SECTION_MARKERS,
    URL,
    brand_keys,
    brands_in,
    fold,
    keyed,
    tag_problems,
)
from core.calendar import HOLIDAYS
from judges.schemas import DimensionVerdict, JudgeRequest

# ----------------------------------------------------------------------------------------------
# limits and word lists (module constants so they are documented and testable)

MIN_EXPLANATION_WORDS = 3
MAX_EXPLANATION_WORDS = 40
MAX_EXPLANATION_CHARS = 250
#: a word sequence this long said twice is a loop (grammar-constrained small models repeat themselves)
REPEAT_NGRAM = 3
#: a word sequence this long shared with the prompt's own text (and not in the facts) is a copy
COPY_NGRAM = 4
#: abbreviations whose full stop does not end a sentence
_ABBREVIATIONS = frozenset({"oz", "fl", "lb", "lbs", "ct", "pk", "pkg", "no", "st", "mr", "mrs", "ms", "dr", "vs",
                            "approx", "e.g", "i.e", "etc", "inc", "co"})
#: a holiday named this many days (or fewer) before it comes is timely
HOLIDAY_AHEAD_DAYS = 60
#: ... and for a few days after it (leftovers, returns)
HOLIDAY_AFTER_DAYS = 3
NEXT_SEASON_DAYS = 30
PREVIOUS_SEASON_DAYS = 14

#: instruction-like text: an output that talks to the model (or the judge) is an injection that leaked
INJECTION_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in (
    r"\bignore\b.{0,40}\b(?:instructions?|prompts?|rules|messages?|above|previous|prior)\b",
    r"\bdisregard\b.{0,40}\b(?:instructions?|prompts?|rules|messages?|above|previous|prior)\b",
    r"\bforget\b.{0,30}\b(?:instructions?|prompts?|rules)\b",
    r"\b(?:system|developer)\s+(?:prompt|message|instructions?)\b",
    r"\bnew\s+instructions?\b",
    r"\bgrade\s+(?:it\s+|this\s+)?s\b",
    r"\bas\s+an?\s+(?:ai|language\s+model)\b|\byou\s+are(?:\s+now)?\s+an?\s+(?:ai|language\s+model|assistant|chatbot)\b",
    r"\bjailbreak\b|\bprompt\s+injection\b",
))

#: words and claims a shop must not print (profanity, health claims)
UNSAFE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in (
    r"\b(?:fuck\w*|shit\w*|bitch\w*|bastards?|assholes?|crap|damn|wtf|piss(?:ed)?)\b",
    r"\b(?:cures?|treats?|prevents?|heals?|reverses?)\s+(?:cancer|diabetes|covid(?:-19)?|diseases?|illness(?:es)?"
    r"|depression|anxiety|infections?|the\s+flu|flu|heart\s+disease|arthritis|obesity)\b",
    r"\bmiracle\s+(?:cure|diet|pill|weight)\b",
    r"\bguaranteed\s+(?:weight\s+loss|results|cure|to\s+(?:lose|cure|heal))\b",
    r"\blose\s+\d+\s*(?:pounds|lbs?|kg|kilos?)\b",
))

_UNITS = {
    # fluid and weight ounces, and count / pack, are not told apart: shop facts mix them freely
    "oz": "oz", "ounce": "oz", "ounces": "oz", "fl oz": "oz", "fl. oz": "oz", "floz": "oz",
    "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb", "g": "g", "gram": "g", "grams": "g",
    "kg": "kg", "ml": "ml", "l": "l", "liter": "l", "liters": "l", "litre": "l", "litres": "l",
    "ct": "ct", "count": "ct", "pk": "ct", "pack": "ct", "packs": "ct", "dozen": "dozen",
    "doz": "dozen", "gal": "gal", "gallon": "gal", "gallons": "gal", "qt": "qt", "quart": "qt",
    "quarts": "qt", "pt": "pt", "pint": "pt", "pints": "pt", "cm": "cm", "inch": "inch", "inches": "inch",
}
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_NUMBER = re.compile(rf"(?<![^\W\d_])(?:{_NUM})")
_QUANTITY = re.compile(
    rf"(?<![^\W\d_])({_NUM})\s*-?\s*({'|'.join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))})\b",
    re.I,
)
_DEPARTMENT = re.compile(
    r"\b(?:in|from|at)\s+(?:the|our|your)\s+((?:[^\W\d_][\w'&-]*\s+){0,2}?[^\W\d_][\w'&-]*)\s+"
    r"(?:department|dept\.?|aisle|section)\b",
    re.I,
)
#: department words and the item words that belong to them: "from our dairy aisle" is checked only when
#: the named section is one of these, and is a defect only if the item's facts share no word with it
#: (so a yogurt "from the dairy aisle" passes and milk "from the frozen section" does not)
DEPARTMENTS: dict[str, frozenset[str]] = {
    name: frozenset(keys.split())  # singular forms: they are compared with folded words
    for name, keys in {
        "dairy": "dairy milk cheese yogurt yoghurt butter egg cream creamer kefir",
        "bakery": "bakery baked bread bun roll pastry cake muffin bagel croissant donut cookie pie tortilla",
        "produce": "produce fruit vegetable veggie salad lettuce apple banana berry potato tomato onion herb",
        "meat": "meat beef pork chicken poultry turkey lamb sausage bacon ham steak",
        "seafood": "seafood fish shrimp salmon tuna crab lobster shellfish",
        "frozen": "frozen freezer ice",
        "deli": "deli",
        "beverage": "beverage drink soda juice water tea coffee",
        "pet": "pet dog cat",
        "baby": "baby infant diaper",
        "pharmacy": "pharmacy drug medicine vitamin health",
        "alcohol": "alcohol liquor beer wine spirit",
    }.items()
}

#: product nouns an explanation may call the item ("this kids cereal"): the department keywords plus
#: common grocery and household nouns; singular, compared with folded words
PRODUCT_NOUNS: frozenset[str] = frozenset().union(*DEPARTMENTS.values()) | {
    "cereal", "chip", "snack", "cracker", "candy", "chocolate", "pasta", "rice", "soup", "sauce", "noodle",
    "towel", "tissue", "detergent", "soap", "shampoo", "toothpaste", "cheese", "granola", "oatmeal", "popcorn",
    "pretzel", "nut", "jam", "jelly", "peanut", "cola",
}

#: "this <up to 4 words>" / "this is a <...>": the noun phrase an explanation says the item *is*
_THIS_CLAIM = re.compile(r"\bthis\s+(?:is\s+(?:a|an|the)\s+)?((?:[^\W\d_][\w'-]*\s+){0,3}[^\W\d_][\w'-]*)",
                         re.I)

SEASONS = ("winter", "spring", "summer", "autumn")
_SEASON_OF_MONTH = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
                    6: "summer", 7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}
_SEASON_START_MONTH = {"spring": 3, "summer": 6, "autumn": 9, "winter": 12}
_SEASON_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?:winter|wintertime|wintry|wintery)\b", re.I), "winter"),
    (re.compile(r"\b(?:spring|springtime)\b", re.I), "spring"),
    (re.compile(r"\b(?:summer|summertime|summery)\b", re.I), "summer"),
    (re.compile(r"\b(?:autumn|autumnal)\b", re.I), "autumn"),
    # "fall" is a season only after a season-like word, and never in a verb phrase ("fall apart")
    (re.compile(r"\b(?:this|for|in|of|the|early|late|cozy|cosy|crisp|every)\s+fall\b"
                r"(?!\s+(?:apart|asleep|off|over|down|behind|into|for|in\s+love|short|through|flat|ill))", re.I),
     "autumn"),
    (re.compile(r"\bfall\s+(?:season|favou?rites?|flavou?rs?|baking|recipes?|weather|days?|evenings?)\b", re.I),
     "autumn"),
)
#: season words that name a product, not a time
_SEASON_PRODUCTS = re.compile(
    r"\b(?:spring\s+(?:water|onions?|mix|rolls?|greens?|lamb|chicken)|summer\s+(?:sausage|squash|savou?ry|rolls?)"
    r"|winter\s+(?:squash|melon|wheat|greens?|savou?ry))\b",
    re.I,
)


# ----------------------------------------------------------------------------------------------
# text helpers

def words(text: str) -> list[str]:
    """Word tokens (letters/digits), lower-cased, possessive "'s" removed."""
    t = text.lower().replace("’", "'")
    t = re.sub(r"'s\b", "", t)
    return re.findall(r"[^\W_]+", t)


@lru_cache(maxsize=1024)
def folded(text: str) -> tuple[str, ...]:
    """The folded words of ``text``, cached: every judge request and persona check folds the same
    prompt texts and shared context again."""
    return tuple(fold(w) for w in words(text))


def _number(s: str) -> str:
    """Canonical form of a number: no thousands commas, no leading zeros, no trailing decimal zeros."""
    whole, _, frac = s.replace(",", "").partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def numbers(text: str) -> set[str]:
    return {_number(m.group(0)) for m in _NUMBER.finditer(text)}


def quantities(text: str) -> set[tuple[str, str]]:
    return {(_number(m.group(1)), _UNITS[m.group(2).lower()]) for m in _QUANTITY.finditer(text)}


def repeated_ngram(text: str, n: int = REPEAT_NGRAM) -> str | None:
    """The first word n-gram that occurs twice in ``text`` (folded words), or None."""
    ws = folded(text)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(ws) - n + 1):
        g = tuple(ws[i:i + n])
        if g in seen:
            return " ".join(g)
        seen.add(g)
    return None


def sentence_count(text: str) -> int:
    """Sentences in ``text``: a terminator (. ! ?) followed by more words ends one, unless it closes an
    abbreviation ("14.5 oz. bag") or sits inside a number ("14.5")."""
    n = 1
    for m in re.finditer(r"([\w.]+)([.!?]+)\s+(?=\S)", text):
        if m.group(2) == "." and m.group(1).lower().rstrip(".") in _ABBREVIATIONS:
            continue
        n += 1
    return n


def copied_phrase(text: str, sources: Iterable[str], allowed: str = "", n: int = COPY_NGRAM) -> str | None:
    """The first word n-gram of ``text`` that also stands in one of ``sources`` (a prompt's own
    instructions and examples) but not in ``allowed`` (the facts it may repeat), or None."""
    ws = folded(text)
    grams = {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}
    if not grams:
        return None
    ok_words = folded(allowed)
    ok = {tuple(ok_words[i:i + n]) for i in range(len(ok_words) - n + 1)}
    for src in sources:
        sw = folded(src)
        for i in range(len(sw) - n + 1):
            g = tuple(sw[i:i + n])
            if g in grams and g not in ok:
                return " ".join(g)
    return None


def item_text(req: JudgeRequest) -> str:
    """The item's own facts as one text (title, category path, brand, attributes)."""
    it = req.item
    if it is None:
        return ""
    parts = [it.title, it.category, *it.category_path, it.brand or ""]
    parts += [f"{k} {v}" for k, v in it.attributes.items()]
    return " ; ".join(p for p in parts if p)


def support_text(req: JudgeRequest) -> str:
    """Everything an explanation may state facts from: item facts, evidence, environment."""
    return " ; ".join(p for p in (item_text(req), req.evidence, req.environment) if p)


def _rule(dimension: str, outcome: str, reason: str) -> DimensionVerdict:
    return DimensionVerdict(dimension=dimension, outcome=outcome, reason=reason, source="rule")


def _defect(dimension: str, reason: str) -> DimensionVerdict:
    return _rule(dimension, "defect", reason)


# ----------------------------------------------------------------------------------------------
# tag rules

#: the rule order and feedback of each dimension, by problem code of :func:`agents.tag_rules.tag_problems`
_SPECIFICITY = {
    "too_short": lambda d: "a single word is too broad; write 'modifier + core word' "
                           f"({MIN_TAG_WORDS}-{MAX_TAG_WORDS} words)",
    "too_long": lambda d: f"{d} words is too long for a tag; use {MIN_TAG_WORDS}-{MAX_TAG_WORDS} words",
    "vague": lambda d: f"vague word {d!r}; name the concrete product type",
}
_VALIDITY = {
    "blank": lambda d: "empty tag",
    "lines": lambda d: "a tag must be one line",
    "no_letters": lambda d: "no letters (digits or symbols only)",
    "url": lambda d: "contains a URL or e-mail address",
    "markup": lambda d: "contains markup",
    "brand": lambda d: f"names the brand {d!r}; tags must not name brands",
}


def _tag_defect(dimension: str, feedback: dict[str, Callable[[str], str]], req: JudgeRequest,
                **known: Collection[str]) -> DimensionVerdict | None:
    found = {}
    for p in tag_problems(req.text, **known):
        found.setdefault(p.code, p.detail)
    code = next((c for c in feedback if c in found), None)
    return None if code is None else _defect(dimension, feedback[code](found[code]))


def tag_specificity(req: JudgeRequest) -> DimensionVerdict | None:
    if not req.text.strip():
        return None  # validity reports the empty tag
    return _tag_defect("specificity", _SPECIFICITY, req)


def tag_validity(req: JudgeRequest) -> DimensionVerdict | None:
    return _tag_defect("validity", _VALIDITY, req, brands=brand_keys(req.banned_terms))


def tag_relevance(req: JudgeRequest) -> DimensionVerdict | None:
    if not req.grounding:
        return None
    return _rule("relevance", "good", f"grounded in the purchase log by {req.grounding}")


def tag_consistency(req: JudgeRequest) -> DimensionVerdict | None:
    return _tag_defect("consistency", {"recent": lambda p: f"repeats the recent purchase {p!r}; suggest something new"},
                       req, recent=keyed(req.recent_purchases))


# ----------------------------------------------------------------------------------------------
# explanation rules

def explanation_clarity(req: JudgeRequest) -> DimensionVerdict | None:
    text = req.text.strip()
    if not text:
        return _defect("clarity", "empty explanation")
    if "\n" in text or "\r" in text:
        return _defect("clarity", "must be one line")
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
        return _defect("clarity", "contains control characters")
    n = len(text.split())
    if n < MIN_EXPLANATION_WORDS:
        return _defect("clarity", f"too short ({n} words); say why in one sentence")
    if n > MAX_EXPLANATION_WORDS or len(text) > MAX_EXPLANATION_CHARS:
        return _defect("clarity", f"too long ({n} words, {len(text)} characters); keep it to one short line "
                                  f"(at most {MAX_EXPLANATION_WORDS} words)")
    loop = repeated_ngram(text)
    if loop:
        return _defect("clarity", f"repeats itself ({loop!r} twice); say it once")
    if sentence_count(text) > 1:
        return _defect("clarity", "more than one sentence; write one")
    return None


def explanation_informativeness(req: JudgeRequest) -> DimensionVerdict | None:
    """An explanation that only restates the item's name (fewer than 3 words beyond the title) tells
    the shopper nothing: small models often answer with the title itself."""
    if req.item is None:
        return None
    title = set(folded(req.item.title))
    extra = [w for w in folded(req.text) if w not in title]
    if len(extra) < 3:
        return _defect("informativeness", "only restates the item's name; say why it suits the shopper")
    copy = copied_phrase(req.text, req.prompt_texts, " ; ".join((support_text(req), req.intent)))
    if copy:
        return _defect("informativeness", f"copies the prompt's own text ({copy!r}) instead of this item's facts")
    return None


def explanation_safety(req: JudgeRequest) -> DimensionVerdict | None:
    text = req.text
    if URL.search(text):
        return _defect("safety", "contains a URL or e-mail address")
    if MARKUP.search(text):
        return _defect("safety", "contains markup")
    if SECTION_MARKERS.search(text):
        return _defect("safety", "contains prompt section markers")
    for p in INJECTION_PATTERNS:
        if p.search(text):
            return _defect("safety", "contains instruction-like text (possible prompt injection)")
    for p in UNSAFE_PATTERNS:
        m = p.search(text)
        if m:
            return _defect("safety", f"unsafe wording {m.group(0)!r} (profanity or a health claim)")
    return None


def explanation_factuality(req: JudgeRequest) -> DimensionVerdict | None:
    if req.item is None:
        return None
    text = req.text
    support = support_text(req)
    facts = item_text(req)
    # numbers
    sup_nums = numbers(support)
    missing = sorted(numbers(text) - sup_nums)
    if missing:
        return _defect("factuality", f"states the number {missing[0]} that is not in the item facts or evidence")
    # quantities: the same number with a different unit in the facts is a contradiction
    sup_q = quantities(support)
    for num, unit in sorted(quantities(text)):
        if (num, unit) in sup_q:
            continue
        other = sorted(u for n, u in sup_q if n == num)
        if other:
            return _defect("factuality", f"says {num} {unit} but the item facts say {num} {other[0]}")
    # brands: a known brand must be the item's own, or appear in the facts/evidence
    for b in brands_in(text, brand_keys(req.banned_terms)):
        own = req.item.brand and folded(b) == folded(req.item.brand)
        if not own and not brands_in(support, brand_keys([b])):
            return _defect("factuality", f"names the brand {b!r}, which is not this item's")
    # a named department / aisle / section of a known kind must match the item's facts
    fact_words = set(folded(facts))
    for m in _DEPARTMENT.finditer(text):
        named = set(folded(m.group(1)))
        for dept, keys in DEPARTMENTS.items():
            if named & keys and not fact_words & keys:
                return _defect("factuality", f"places the item in the {m.group(1)!r} section ({dept}), but the "
                                             f"item is {req.item.category or req.item.title!r}")
    # what the explanation says the item is ("this kids cereal", "this is a bag of baked bread") must be
    # in the item's own facts: the user's evidence may name other products, the item may not become one
    for m in _THIS_CLAIM.finditer(text):
        wrong = [w for w in folded(m.group(1)) if w in PRODUCT_NOUNS and w not in fact_words]
        if wrong:
            return _defect("factuality", f"calls the item {m.group(1)!r} ({wrong[0]}), but the item is "
                                         f"{req.item.title or req.item.category!r}")
    return None


def parse_environment(env: str) -> tuple[date | None, str | None]:
    """(date, season) from an ``Environment.describe()`` string; either may be None."""
    d = None
    m = re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", env)
    if m:
        try:
            d = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            d = None
    s = re.search(r"season:\s*([a-z]+)", env, re.I)
    season = s.group(1).lower() if s else None
    if season == "fall":
        season = "autumn"
    if season not in SEASONS:
        season = _SEASON_OF_MONTH[d.month] if d else None
    return d, season


def _season_fits(named: str, now: date | None, current: str) -> bool:
    if named == current:
        return True
    if now is None:
        return False
    order = list(SEASONS)
    nxt = order[(order.index(current) + 1) % 4]
    prev = order[(order.index(current) - 1) % 4]
    if named == nxt:
        m = _SEASON_START_MONTH[nxt]
        start = date(now.year + (m < now.month), m, 1)
        return (start - now).days <= NEXT_SEASON_DAYS
    if named == prev:
        m = _SEASON_START_MONTH[current]
        start = date(now.year - (m > now.month), m, 1)
        return (now - start).days <= PREVIOUS_SEASON_DAYS
    return False


def _holiday_fits(name: str, when: Callable[[int], date], pattern: re.Pattern[str], now: date | None,
                  env: str) -> tuple[bool, str]:
    if pattern.search(env):
        return True, ""
    if now is None:
        return False, "it is not among the upcoming holidays"
    deltas = [(when(y) - now).days for y in (now.year - 1, now.year, now.year + 1)]
    if any(-HOLIDAY_AFTER_DAYS <= d <= HOLIDAY_AHEAD_DAYS for d in deltas):
        return True, ""
    ahead = min(d for d in deltas if d > 0)
    return False, f"it is {ahead} days away"


def explanation_timeliness(req: JudgeRequest) -> DimensionVerdict | None:
    env = req.environment or ""
    now, season = parse_environment(env)
    if now is None and season is None:
        return None
    text = req.text
    facts = item_text(req)
    # product names that contain season words ("spring water") are not mentions; neither is a season
    # or holiday word that the item's own facts contain (a "Christmas Cookies" title)
    masked = _SEASON_PRODUCTS.sub(" ", text)
    mentions: list[str] = []
    problems: list[str] = []
    for name, pattern, when in HOLIDAYS:
        if pattern.search(masked):
            masked = pattern.sub(" ", masked)
            if pattern.search(facts):
                continue
            mentions.append(name)
            ok, why = _holiday_fits(name, when, pattern, now, env)
            if not ok:
                problems.append(f"mentions {name}, but {why}")
    for pattern, named in _SEASON_WORDS:
        if pattern.search(masked):
            if pattern.search(facts):
                continue
            mentions.append(named)
            if season is not None and not _season_fits(named, now, season):
                problems.append(f"mentions {named}, but it is {season}")
    if problems:
        return _defect("timeliness", "; ".join(problems))
    if mentions:
        return _rule("timeliness", "good", f"names {', '.join(mentions)}, which fit the date")
    return None


# ----------------------------------------------------------------------------------------------

TAG_RULES: dict[str, Callable[[JudgeRequest], DimensionVerdict | None]] = {
    "relevance": tag_relevance,
    "specificity": tag_specificity,
    "validity": tag_validity,
    "consistency": tag_consistency,
}
EXPLANATION_RULES: dict[str, Callable[[JudgeRequest], DimensionVerdict | None]] = {
    "clarity": explanation_clarity,
    "safety": explanation_safety,
    "factuality": explanation_factuality,
    "timeliness": explanation_timeliness,
    "informativeness": explanation_informativeness,
}


def rules_for(kind: str) -> dict[str, Callable[[JudgeRequest], DimensionVerdict | None]]:
    return TAG_RULES if kind == "tag" else EXPLANATION_RULES


def evaluate_rules(req: JudgeRequest) -> dict[str, DimensionVerdict]:
    """Run every rule for the request's kind; return the dimensions the rules decided."""
    out: dict[str, DimensionVerdict] = {}
    for dim, rule in rules_for(req.kind).items():
        v = rule(req)
        if v is not None:
            out[dim] = v
    return out
