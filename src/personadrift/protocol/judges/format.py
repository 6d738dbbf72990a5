"""Format judges: letters, case, punctuation and structure."""

from __future__ import annotations

import re
from collections import Counter

from personadrift.protocol.judges.registry import (
    Arg,
    non_empty,
    one_letter,
    positive,
    register,
)
from personadrift.protocol.judges.text import (
    clip,
    closeness,
    fraction,
    letters,
    sentences,
    visible_chars,
    words,
)


def _fold(s: str, case_sensitive: bool) -> str:
    return s if case_sensitive else s.casefold()


def _first_alnum(text: str) -> str:
    for c in clip(text[:10_000]):
        if c.isalnum():
            return c
    return ""


@register("starts_with_letter", letter=Arg(str, one_letter), case_sensitive=bool)
def starts_with_letter(text: str, letter: str, case_sensitive: bool = False) -> float:
    """1.0 if the first letter or digit of the reply (leading quotes, markup and spaces skipped) is `letter`."""
    first = _first_alnum(text)
    return float(bool(first) and _fold(first, case_sensitive) == _fold(letter, case_sensitive))


@register("starts_with_word", word=Arg(str, non_empty), case_sensitive=bool)
def starts_with_word(text: str, word: str, case_sensitive: bool = False) -> float:
    """1.0 if the reply's first word is `word` (leading punctuation ignored)."""
    ws = words(text[:10_000])
    target = words(word)
    n = len(target)
    return float(n > 0 and [_fold(w, case_sensitive) for w in ws[:n]] == [_fold(w, case_sensitive) for w in target])


@register("starts_with", prefix=Arg(str, non_empty), case_sensitive=bool)
def starts_with(text: str, prefix: str, case_sensitive: bool = False) -> float:
    """1.0 if the reply, leading whitespace stripped, begins with the string `prefix`."""
    head = clip(text[: len(prefix) + 10_000]).lstrip()
    return float(_fold(head, case_sensitive).startswith(_fold(prefix, case_sensitive)))


@register("ends_with", suffix=Arg(str, non_empty), case_sensitive=bool)
def ends_with(text: str, suffix: str, case_sensitive: bool = False) -> float:
    """1.0 if the reply, trailing whitespace stripped, ends with the string `suffix`."""
    tail = clip(text[-(len(suffix) + 10_000):]).rstrip()
    return float(_fold(tail, case_sensitive).endswith(_fold(suffix, case_sensitive)))


@register("letter_absent", letter=Arg(str, one_letter), case_sensitive=bool)
def letter_absent(text: str, letter: str, case_sensitive: bool = False) -> float:
    """1.0 if the letter never occurs (0.0 for an empty reply, which has nothing to check)."""
    t = clip(text)
    if not letters(t):
        return 0.0
    return float(_fold(letter, case_sensitive) not in _fold(t, case_sensitive))


@register("letter_count_at_least", letter=Arg(str, one_letter), n=Arg(int, positive), case_sensitive=bool)
def letter_count_at_least(text: str, letter: str, n: int, case_sensitive: bool = False) -> float:
    """1.0 if the letter occurs at least `n` times; count/n below that."""
    t = _fold(clip(text), case_sensitive)
    return fraction(min(t.count(_fold(letter, case_sensitive)), n), n)


def _initials(text: str) -> list[str]:
    return [w[0].casefold() for w in words(text) if w[0].isalpha()]


@register("alliteration", letter=str)
def alliteration(text: str, letter: str = "") -> float:
    """1.0 if every word starts with the same letter (`letter` if given, else the most common initial)."""
    ini = _initials(text)
    if not ini:
        return 0.0
    if letter:
        return fraction(sum(c == letter.casefold()[:1] for c in ini), len(ini))
    return fraction(Counter(ini).most_common(1)[0][1], len(ini))


@register("sentence_count", n=Arg(int, positive))
def sentence_count(text: str, n: int) -> float:
    """1.0 for exactly `n` sentences, falling linearly to 0 at `n` sentences off."""
    k = len(sentences(text))
    return closeness(k, n) if k else 0.0


@register("uppercase_fraction")
def uppercase_fraction(text: str) -> float:
    """Fraction of cased letters that are upper case (1.0 = ALL CAPS)."""
    cased = [c for c in letters(text) if c.isupper() or c.islower()]
    return fraction(sum(c.isupper() for c in cased), len(cased))


@register("lowercase_fraction")
def lowercase_fraction(text: str) -> float:
    """Fraction of cased letters that are lower case (1.0 = all lower case)."""
    cased = [c for c in letters(text) if c.isupper() or c.islower()]
    return fraction(sum(c.islower() for c in cased), len(cased))


@register("no_uppercase", tolerance=int)
def no_uppercase(text: str, tolerance: int = 3) -> float:
    """1.0 = no upper-case letter at all; falls linearly to 0.0 at `tolerance` upper-case letters (ordinary text scores
    0).
    """
    upper = sum(c.isupper() for c in letters(text))
    return max(0.0, 1.0 - upper / max(tolerance, 1))


@register("question_fraction")
def question_fraction(text: str) -> float:
    """Fraction of sentences that are questions (end with '?'); 1.0 = only questions."""
    ss = sentences(text)
    return fraction(sum(s.rstrip("\"'”’)] ").endswith("?") for s in ss), len(ss))


@register("non_letter_fraction")
def non_letter_fraction(text: str) -> float:
    """Fraction of non-space characters that are not letters (1.0 = no letters at all, e.g. only emoji/digits)."""
    vis = visible_chars(text)
    return fraction(sum(not c.isalpha() for c in vis), len(vis))


@register("digit_fraction")
def digit_fraction(text: str) -> float:
    """Fraction of non-space characters that are digits (1.0 = digits only)."""
    vis = visible_chars(text)
    return fraction(sum(c.isdigit() for c in vis), len(vis))


@register("sentence_word_pattern", pattern=Arg(
    list[int], lambda v: None if v and all(x > 0 for x in v) else "must be a non-empty list of positive integers"))
def sentence_word_pattern(text: str, pattern: list) -> float:
    """Fraction of sentences whose word count follows `pattern` cyclically (sentence i has pattern[i % len] words);
    fewer sentences than the pattern count as misses; 1.0 = perfect.
    """
    ss = sentences(text)
    pattern = list(pattern)
    hits = sum(len(words(s)) == pattern[i % len(pattern)] for i, s in enumerate(ss))
    return fraction(hits, max(len(ss), len(pattern)))


@register("increasing_sentence_lengths")
def increasing_sentence_lengths(text: str) -> float:
    """Fraction of consecutive sentence pairs where the second has more words (1.0 = strictly increasing; needs 2+
    sentences).
    """
    lens = [len(words(s)) for s in sentences(text)]
    if len(lens) < 2:
        return 0.0
    return fraction(sum(b > a for a, b in zip(lens, lens[1:])), len(lens) - 1)


@register("alternating_case_words")
def alternating_case_words(text: str) -> float:
    """Fraction of neighbouring word pairs where one word is ALL UPPER and the other all lower case (1.0 = strict
    alternation).
    """
    kinds = []
    for w in words(text):
        ls = [c for c in w if c.isupper() or c.islower()]
        if not ls:
            continue
        kinds.append("U" if all(c.isupper() for c in ls) else "L" if all(c.islower() for c in ls) else "M")
    if len(kinds) < 2:
        return 0.0
    return fraction(sum({a, b} == {"U", "L"} for a, b in zip(kinds, kinds[1:])), len(kinds) - 1)


_DASHED = re.compile(r"^(?:[^\s\-]-)+[^\s\-]$")
_EDGE_PUNCT = "\"'“”‘’.,;:!?()[]{}*_"


@register("dash_separated_characters")
def dash_separated_characters(text: str) -> float:
    """Fraction of multi-character tokens written as single characters joined by dashes (H-e-l-l-o); 1.0 = all."""
    toks = [t.strip(_EDGE_PUNCT) for t in clip(text).split()]
    toks = [t for t in toks if len(t) >= 2]
    return fraction(sum(bool(_DASHED.match(t)) for t in toks), len(toks))


_ITEM = r"""\s*["'“‘]?[^\W_]+(?:['’\-][^\W_]+)*["'”’]?\s*"""
_LIST_RE = re.compile(r"\[" + _ITEM + r"(?:," + _ITEM + r")+\]")


@register("bracketed_word_list")
def bracketed_word_list(text: str) -> float:
    """1.0 if the whole reply is a bracketed, comma-separated list of single words ([a, b, c]); 0.5 if such a list is
    embedded in other text.
    """
    t = clip(text).strip().rstrip(".")
    if _LIST_RE.fullmatch(t):
        return 1.0
    return 0.5 if _LIST_RE.search(t[:20_000]) else 0.0


__all__ = [n for n in dir() if not n.startswith("_")]
