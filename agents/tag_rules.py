"""The one set of tag rules, shared by the arbiter (which drops a tag) and the judge (which grades it),
so a tag the arbiter keeps is never failed by the judge's rules for the same reason.

:func:`tag_problems` returns every problem of a tag as :class:`Problem` (code, detail), in the
arbiter's order; each caller maps the codes to its own reasons. The word-count limit is the expert
grammar's (``agents.expert.TAG_PATTERN``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache
from typing import NamedTuple

from agents.expert import TAG_PATTERN


def _word_limits(pattern: str) -> tuple[int, int]:
    """(fewest, most) words of a "first word, then {m,n} more" pattern such as ``TAG_PATTERN``."""
    m = re.search(r"\{(\d+),(\d+)\}\$?$", pattern)
    if m is None:
        raise ValueError(f"cannot read the word limits of the tag pattern {pattern!r}")
    return 1 + int(m.group(1)), 1 + int(m.group(2))


MIN_TAG_WORDS, MAX_TAG_WORDS = _word_limits(TAG_PATTERN)
#: a brand name shorter than this is too likely an ordinary word ("as", "ge") to be matched
MIN_BRAND_CHARS = 3

VAGUE_WORDS = frozenset({
    "anything", "assorted", "best", "etc", "everything", "general", "generic", "good", "goods", "great", "item",
    "items", "misc", "miscellaneous", "nice", "other", "product", "products", "random", "some", "something",
    "stuff", "thing", "things", "various", "whatever",
})
#: normalised phrases that name a concrete product although a word of them is vague
SPECIFIC_PHRASES = ("great northern", "baked good")

URL = re.compile(r"https?://|\bwww\.|\b[\w-]+\.(?:com|net|org|io|ly|shop|store)\b|\S+@\S+\.[a-z]{2,}", re.I)
MARKUP = re.compile(
    r"<\s*/?\s*[a-z][a-z0-9]*\b[^>]*>"  # HTML / XML tags
    r"|\[[^\]]*\]\([^)]*\)"  # markdown links
    r"|```|\*\*|__|`"  # code, bold
    r"|^\s*#{1,6}\s"  # markdown headings
    r"|\{\{|\}\}|\{%|%\}",  # template braces
    re.I | re.M,
)
SECTION_MARKERS = re.compile(r"<<<|>>>|‹‹|››|[«»]")
#: characters no tag ever needs (a tag is plain words)
_MARKUP_CHARS = re.compile(r"[<>{}\[\]`|\\]")
_NON_WORD = re.compile(r"[^a-z0-9\s-]")
_TOKEN = re.compile(r"[a-z0-9]+")


class Problem(NamedTuple):
    #: blank, lines, url, markup, no_letters, vague, too_short, too_long, brand, duplicate, recent
    code: str
    #: the vague word, the word count, the brand or recent purchase as given, the duplicate's key
    detail: str = ""


#: the ``persona`` of a final tag that the arbiter took from the candidate tools' ranking: no expert
#: (no model) wrote it
TOOL_REFILL_PERSONA = "candidate tools"


@lru_cache(maxsize=1 << 16)
def fold(word: str) -> str:
    """Lower-case and fold simple plurals, so "Bananas" and "banana" compare equal. Cached: the rules
    fold the same words (a prompt's, a history's) thousands of times per user."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("oes"):
        return w[:-2]
    if len(w) > 4 and w.endswith("es") and w[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def normalize(text: str) -> str:
    """A tag's key: lower case, "&" read as "and", possessive "'s" and punctuation (but hyphens) dropped,
    plurals folded. Two tags with the same key are the same tag."""
    t = re.sub(r"'s\b", "", text.lower().replace("’", "'")).replace("&", " and ")
    return " ".join(fold(w) for w in _NON_WORD.sub(" ", t).split())


def keyed(texts: Iterable[str], min_chars: int = 1) -> dict[str, str]:
    """``{normalize(text): text}`` for the texts of at least ``min_chars`` characters with a key."""
    out: dict[str, str] = {}
    for t in texts:
        key = normalize(t) if len(t.strip()) >= min_chars else ""
        if key:
            out.setdefault(key, t)
    return out


def brand_keys(brands: Iterable[str]) -> dict[str, str]:
    """The brands worth matching, keyed as :func:`brands_in` wants them."""
    return keyed(brands, MIN_BRAND_CHARS)


def brands_in(text: str, brands: Collection[str]) -> list[str]:
    """The brands (keys of :func:`brand_keys`; with a mapping, its values are returned) that ``text``
    names as whole words, in the order of ``brands``."""
    toks = " " + " ".join(_TOKEN.findall(normalize(text))) + " "
    found = [b for b in brands if " " + " ".join(_TOKEN.findall(b)) + " " in toks]
    return [brands[b] for b in found] if isinstance(brands, Mapping) else found


def vague_words(text: str) -> list[str]:
    """The vague words of ``text`` (hyphenated parts count), outside :data:`SPECIFIC_PHRASES`."""
    toks = " " + " ".join(_TOKEN.findall(normalize(text))) + " "
    for phrase in SPECIFIC_PHRASES:
        toks = toks.replace(f" {phrase} ", " ")
    return [w for w in toks.split() if w in VAGUE_WORDS]


def tag_problems(tag: str, *, brands: Collection[str] = (), recent: Collection[str] = (),
                 seen: Collection[str] = ()) -> list[Problem]:
    """Every rule ``tag`` breaks, in the arbiter's order (markup, empty, vague, shape, brand, duplicate,
    recent). ``brands``, ``recent`` and ``seen`` hold normalised keys (see :func:`keyed`); where one is a
    mapping, the problem's detail is its value (the text as given)."""
    out: list[Problem] = []
    text = tag.strip()
    if "\n" in text or "\r" in text:
        out.append(Problem("lines"))
    if URL.search(tag):
        out.append(Problem("url"))
    if MARKUP.search(tag) or SECTION_MARKERS.search(tag) or _MARKUP_CHARS.search(tag):
        out.append(Problem("markup"))
    if not text:
        return [*out, Problem("blank")]
    if not any(c.isalpha() for c in text):
        out.append(Problem("no_letters"))
    out += [Problem("vague", w) for w in vague_words(tag)]
    norm = normalize(tag)
    n = len(norm.split())
    if n < MIN_TAG_WORDS:
        out.append(Problem("too_short", str(n)))
    elif n > MAX_TAG_WORDS:
        out.append(Problem("too_long", str(n)))
    out += [Problem("brand", b) for b in brands_in(tag, brands)]
    if norm in seen:
        out.append(Problem("duplicate", norm))
    if norm in recent:
        out.append(Problem("recent", recent[norm] if isinstance(recent, Mapping) else norm))
    return out
