"""Content judges: substrings, keywords, multiple choice, sentiment, first person, numbers, JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from personadrift.protocol.judges.lexical import has_word
from personadrift.protocol.judges.registry import (
    Arg,
    non_empty,
    one_of,
    positive,
    register,
)
from personadrift.protocol.judges.sentiment import vader_scores
from personadrift.protocol.judges.text import (
    clip,
    closeness,
    fraction,
    lower_words,
    sentences,
)


def _fold(s: str, case_sensitive: bool) -> str:
    return s if case_sensitive else s.casefold()


@register("contains", substring=Arg(str, non_empty), case_sensitive=bool)
def contains(text: str, substring: str, case_sensitive: bool = False) -> float:
    """1.0 if `substring` occurs anywhere in the reply."""
    return float(_fold(substring, case_sensitive) in _fold(clip(text), case_sensitive))


@register("not_contains", substring=Arg(str, non_empty), case_sensitive=bool)
def not_contains(text: str, substring: str, case_sensitive: bool = False) -> float:
    """1.0 if `substring` does not occur in a non-empty reply."""
    t = clip(text)
    if not t.strip():
        return 0.0
    return float(_fold(substring, case_sensitive) not in _fold(t, case_sensitive))


@register("contains_any", words=Arg(list[str], non_empty), case_sensitive=bool)
def contains_any(text: str, words: list, case_sensitive: bool = False) -> float:  # noqa: A002
    """1.0 if any keyword occurs as a whole word or phrase (simple inflections such as -s, -ed, -ing, -er allowed)."""
    t = clip(text)
    return float(any(has_word(t, w, case_sensitive) for w in words))


@register("contains_at_least", words=Arg(list[str], non_empty), n=Arg(int, positive), case_sensitive=bool)
def contains_at_least(text: str, words: list, n: int, case_sensitive: bool = False) -> float:  # noqa: A002
    """1.0 if at least `n` different keywords occur (as in contains_any); k/n below that."""
    t = clip(text)
    return fraction(min(sum(has_word(t, w, case_sensitive) for w in words), n), n)


# ---- multiple choice -------------------------------------------------------------------------
_EXPLICIT = re.compile(
    r"(?i:answer|choice|option|choose|chose|pick|picked|select|selected|go with|going with|would be|i'd say|i say)"
    r"\W{0,4}(?:(?i:is|would be|be|it's|it is)\W{0,4})?(?:(?i:option|letter|choice)\W{0,3})?"
    r"\(?([A-H])\)?(?![\w'])"
)
_LEADING = re.compile(r"^[\s*_\"'`#>\-]*\(?([A-H])(?:\)|\.|:|,|\s*[-–—]|\s*$)")
_PAREN = re.compile(r"\(([A-H])\)")
_ARTICLES = {"a", "an", "the", "some", "to", "my", "your"}


def chosen_letter(text: str) -> str | None:
    """The option letter a reply picks, or None if it picks none or several."""
    t = clip(text[:20_000])
    m = _EXPLICIT.search(t)
    if m:
        return m.group(1)
    m = _LEADING.match(t)
    if m:
        return m.group(1)
    found = set(_PAREN.findall(t))
    if len(found) == 1:
        return found.pop()
    return None


def _option_mentioned(text: str, option: str) -> bool:
    content = [w for w in lower_words(option) if w not in _ARTICLES]
    if not content:
        return False
    return has_word(text, " ".join(content)) or all(has_word(text, w) for w in content)


@register(
    "multiple_choice",
    letter=Arg(str, lambda v: None if len(v) == 1 and "A" <= v <= "H" else "expected one upper-case letter A-H"),
    options=list[str],
)
def multiple_choice(text: str, letter: str, options: Sequence = ()) -> float:
    """1.0 if the reply picks option `letter` ('(B)', 'B)', 'Answer: B', 'I choose B'); without a letter, 1/k if the
    option text of `letter` is among the k option texts it mentions (options listed A, B, ... in order).
    """
    picked = chosen_letter(text)
    if picked is not None:
        return float(picked == letter)
    options = list(options)
    idx = ord(letter) - ord("A")
    if idx >= len(options):
        return 0.0
    t = clip(text[:20_000])
    mentioned = [i for i, o in enumerate(options) if _option_mentioned(t, o)]
    return 1.0 / len(mentioned) if idx in mentioned else 0.0


# ---- sentiment ---------------------------------------------------------------------------------
@register("sentiment", kind=Arg(str, one_of("positive", "negative", "compound")))
def sentiment(text: str, kind: str = "positive") -> float:
    """VADER sentiment as upstream used it: positive -> the `pos` component (share of positively valenced wording, 1.0 =
    all of it); negative -> the `neg` component; compound -> (compound + 1) / 2.
    """
    # The compound score saturates: "I love London. It is big. I walk a lot." has compound
    # 0.64 but pos 0.32; upstream scored its sentiment personas with pos / neg.
    scores = vader_scores(clip(text))
    if kind == "positive":
        return float(scores["pos"])
    if kind == "negative":
        return float(scores["neg"])
    return (float(scores["compound"]) + 1.0) / 2.0


# ---- first person ----------------------------------------------------------------------------
_FIRST_PERSON = frozenset("i me my mine myself i'm i've i'd i'll".split())


@register("first_person")
def first_person(text: str) -> float:
    """Fraction of sentences that use a first-person singular pronoun (I, me, my, mine, myself); 1.0 = every sentence.
    """
    ss = sentences(text)
    return fraction(sum(any(w in _FIRST_PERSON for w in lower_words(s)) for s in ss), len(ss))


# ---- numbers -------------------------------------------------------------------------------------
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
         if w != "_"}
_NUM_RE = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|(?<![\w.])-?\d+(?:\.\d+)?|[A-Za-z]+")


def first_number(text: str) -> float | None:
    """The first number in the text: digits (1,234.5) or English number words up to ninety-nine."""
    t = clip(text[:20_000])
    toks = list(_NUM_RE.finditer(t))
    for i, m in enumerate(toks):
        tok = m.group(0)
        if tok[0].isdigit() or (tok[0] == "-" and tok[1:2].isdigit()):
            try:
                return float(tok.replace(",", ""))
            except ValueError:
                continue
        low = tok.lower()
        if low in _TENS:
            val = _TENS[low]
            if i + 1 < len(toks):
                nxt = toks[i + 1]
                gap = t[m.end() : nxt.start()]
                unit = _UNITS.get(nxt.group(0).lower())
                if gap in ("-", " ") and unit is not None and 0 < unit < 10:
                    val += unit
            return float(val)
        if low in _UNITS:
            return float(_UNITS[low])
    return None


@register("number_close", target=float, tolerance=Arg(float, positive))
def number_close(text: str, target: float, tolerance: float = 0.0) -> float:
    """1.0 if the first number in the reply equals `target`, falling linearly to 0 at `tolerance` away (default
    max(|target|, 1)); 0.0 without a number.
    """
    x = first_number(text)
    if x is None:
        return 0.0
    if tolerance <= 0:
        return closeness(x, target)
    return max(0.0, 1.0 - abs(x - target) / tolerance)


# ---- JSON ----------------------------------------------------------------------------------------
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


@register("json_keys", keys=Arg(list[str], non_empty))
def json_keys(text: str, keys: list) -> float:
    """1.0 if the whole reply (code fences allowed) is a JSON object with all `keys`; the fraction of keys present
    otherwise, halved if the object is embedded in other text.
    """
    t = clip(text).strip()
    m = _FENCE.match(t)
    if m:
        t = m.group(1)
    try:
        obj = json.loads(t)
        if isinstance(obj, dict):
            return fraction(sum(k in obj for k in keys), len(keys))
    except (ValueError, RecursionError):
        pass
    dec = json.JSONDecoder()
    start, tries = t.find("{"), 0
    while start != -1 and tries < 50:
        tries += 1
        try:
            obj, _ = dec.raw_decode(t, start)
            if isinstance(obj, dict):
                return 0.5 * fraction(sum(k in obj for k in keys), len(keys))
        except (ValueError, RecursionError):
            pass
        start = t.find("{", start + 1)
    return 0.0


__all__ = [n for n in dir() if not n.startswith("_")]
