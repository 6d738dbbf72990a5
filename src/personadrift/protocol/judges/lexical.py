"""Lexical judges: word counts, word patterns, repetition, word lists, syllables, rare words, slang, tense."""

from __future__ import annotations

import functools
import re
from collections import Counter

from personadrift.protocol.judges.registry import (
    Arg,
    non_empty,
    positive,
    register,
    unit_interval,
)
from personadrift.protocol.judges.text import (
    closeness,
    fraction,
    lower_words,
    scaled,
    sentences,
    words,
)
from personadrift.protocol.judges.wordlists import (
    ED_EXCEPTIONS,
    IRREGULAR_PAST,
    PRESENT_BASE,
    PRESENT_FINITE,
    SUBJECT_PRONOUNS,
    TEEN_SLANG,
)

_POSSESSIVE = r"(?:'s|’s)?"
_INFLECTIONS = r"(?:s|es|'s|’s|ed|ing|er|ers|ly)?"
_INFLECTIONS_E = r"(?:s|es|'s|’s|ed|d|ing|er|ers|ly)?"


def _inflections(last: str) -> str:
    """The suffixes a keyword may carry. Words under three letters take none but a possessive
    ("AI" must not match "aid", "no" not "nod", "I" not "is"); a bare "d" only follows a final
    "e" of a word of four letters or more ("liked", but not "seed" for "see")."""
    if len(last) < 3:
        return _POSSESSIVE
    return _INFLECTIONS_E if len(last) >= 4 and last.lower().endswith("e") else _INFLECTIONS


@functools.lru_cache(maxsize=4096)
def word_regex(word: str, case_sensitive: bool = False) -> re.Pattern:
    """A regex for `word` (or a phrase) as whole word(s), allowing a simple inflection suffix."""
    raw = word.strip().split()
    body = r"\s+".join(re.escape(p) for p in raw)
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(r"(?<![^\W_])" + body + _inflections(raw[-1]) + r"(?![^\W_])", flags)


def has_word(text: str, word: str, case_sensitive: bool = False) -> bool:
    """Whether `word` occurs as a whole word (plus inflection) in text."""
    return bool(word.strip()) and word_regex(word, case_sensitive).search(text) is not None


@register("word_count_close", n=Arg(int, positive))
def word_count_close(text: str, n: int) -> float:
    """1.0 for exactly `n` words, falling linearly to 0 at `n` words off."""
    k = len(words(text))
    return closeness(k, n) if k else 0.0


@register("one_word")
def one_word(text: str) -> float:
    """1.0 if the reply is exactly one word (punctuation ignored)."""
    return float(len(words(text)) == 1)


@register("first_word_equals_last", case_sensitive=bool)
def first_word_equals_last(text: str, case_sensitive: bool = False) -> float:
    """1.0 if the first and last words are the same word (needs 2+ words)."""
    ws = words(text)
    if len(ws) < 2:
        return 0.0
    a, b = ws[0], ws[-1]
    return float(a == b if case_sensitive else a.casefold() == b.casefold())


def _alternation(flags: list[bool]) -> float:
    """Fraction of neighbouring pairs whose flags differ (1.0 = strict alternation; needs 2+ items)."""
    if len(flags) < 2:
        return 0.0
    return fraction(sum(a != b for a, b in zip(flags, flags[1:])), len(flags) - 1)


@register("alternating_word_lengths", short_max=Arg(int, positive))
def alternating_word_lengths(text: str, short_max: int = 4) -> float:
    """Fraction of neighbouring word pairs with one short and one long word (short = at most `short_max` characters);
    1.0 = strict alternation.
    """
    return _alternation([len(w) <= short_max for w in words(text)])


@register("filler_every_other_word",
          word=Arg(str, lambda v: None if v.strip() and len(words(v)) == 1 else "must be one word"))
def filler_every_other_word(text: str, word: str) -> float:
    """Fraction of neighbouring word pairs where exactly one word is `word` (1.0 = the filler is every other word)."""
    target = lower_words(word)[0]
    return _alternation([w == target for w in lower_words(text)])


@register("doubled_words")
def doubled_words(text: str) -> float:
    """Fraction of word pairs (1st+2nd, 3rd+4th, ...) that are the same word twice (1.0 = 'the the cat cat'); needs 2+
    words.
    """
    ws = lower_words(text)
    if len(ws) < 2:
        return 0.0
    pairs = [(ws[i], ws[i + 1] if i + 1 < len(ws) else None) for i in range(0, len(ws), 2)]
    return fraction(sum(a == b for a, b in pairs), len(pairs))


@register("sentences_start_with", word=Arg(str, non_empty), case_sensitive=bool)
def sentences_start_with(text: str, word: str, case_sensitive: bool = False) -> float:
    """Fraction of sentences whose first word is `word`; 1.0 = every sentence."""
    ss = sentences(text)
    target = words(word)
    if not target:
        return 0.0
    fold = (lambda s: s) if case_sensitive else str.casefold
    t = [fold(w) for w in target]
    return fraction(sum([fold(w) for w in words(s)[: len(t)]] == t for s in ss), len(ss))


@register("unique_word_fraction")
def unique_word_fraction(text: str) -> float:
    """Distinct words / words (1.0 = no word is repeated)."""
    ws = lower_words(text)
    return fraction(len(set(ws)), len(ws))


@register("repeated_word_fraction")
def repeated_word_fraction(text: str) -> float:
    """Fraction of words that occur more than once in the reply (1.0 = every word is repeated somewhere)."""
    ws = lower_words(text)
    counts = Counter(ws)
    return fraction(sum(1 for w in ws if counts[w] > 1), len(ws))


@register("forbidden_words", words=Arg(list[str], non_empty))
def forbidden_words(text: str, words: list) -> float:  # noqa: A002 - the argument name is the public spec
    """1.0 if none of `words` occurs (whole words, case-insensitive, simple inflections included)."""
    return float(not any(has_word(text, w) for w in words))


@register("target_word_fraction", words=Arg(list[str], non_empty), target=Arg(float, unit_interval))
def target_word_fraction(text: str, words: list, target: float = 1.0) -> float:  # noqa: A002
    """Fraction of the reply's words that are in `words` (case-insensitive) divided by `target`, capped: 1.0 = only (or
    at least `target` of) listed words.
    """
    allowed = {w.casefold() for w in words}
    ws = lower_words(text)
    return scaled(fraction(sum(w in allowed for w in ws), len(ws)), target)


@register("target_words_present", words=Arg(list[str], non_empty))
def target_words_present(text: str, words: list) -> float:  # noqa: A002
    """Fraction of `words` that occur in the reply (whole words, case-insensitive, inflections included); 1.0 = all of
    them.
    """
    return fraction(sum(has_word(text, w) for w in words), len(words))


@functools.lru_cache(maxsize=65536)
def _zipf_en(word: str) -> float:
    from wordfreq import zipf_frequency

    try:
        return zipf_frequency(word, "en")
    except Exception:  # wordfreq can reject odd unicode; treat as unknown
        return 0.0


def _is_known(stem: str) -> bool:
    return len(stem) >= 3 and _zipf_en(stem) >= 3.0


@functools.lru_cache(maxsize=65536)
def is_regular_past(word: str) -> bool:
    """-ed word whose stem (-ed, -d, -ied->y, doubled consonant) is a common English word."""
    if len(word) < 4 or not word.endswith("ed") or word in ED_EXCEPTIONS or not word.isalpha():
        return False
    cands = [word[:-2], word[:-1]]
    if word.endswith("ied"):
        cands.append(word[:-3] + "y")
    if len(word) > 4 and word[-3] == word[-4]:
        cands.append(word[:-3])
    return any(_is_known(c) for c in cands)


@register("past_tense_fraction")
def past_tense_fraction(text: str) -> float:
    """Past-tense verbs / (past + present verbs), 1.0 = all past. Heuristic without a POS tagger: past = the package's
    irregular-past list or an -ed word whose stem is a common word (wordfreq); present = be/have/do forms, present
    modals and present forms of ~60 common verbs (base forms only right after I/you/we/they).
    """
    ws = lower_words(text)
    past = present = 0
    for i, w in enumerate(ws):
        if w in IRREGULAR_PAST or is_regular_past(w):
            past += 1
        elif w in PRESENT_FINITE or (w in PRESENT_BASE and i > 0 and ws[i - 1] in SUBJECT_PRONOUNS):
            present += 1
    return fraction(past, past + present)


@register("slang_fraction", target=Arg(float, unit_interval))
def slang_fraction(text: str, target: float = 0.15) -> float:
    """Fraction of words that are teen slang (package list) divided by `target` (default 0.15), capped: 1.0 = at least
    `target` of the words.
    """
    ws = lower_words(text)
    return scaled(fraction(sum(w in TEEN_SLANG for w in ws), len(ws)), target)


@register("rare_word_fraction", max_zipf=Arg(float, positive), target=Arg(float, unit_interval))
def rare_word_fraction(text: str, max_zipf: float = 3.0, target: float = 1.0) -> float:
    """Fraction of alphabetic words with English Zipf frequency below `max_zipf` (wordfreq) divided by `target`, capped:
    1.0 = at least `target` of the words are rare.
    """
    ws = [w for w in lower_words(text) if w.replace("'", "").replace("-", "").isalpha()]
    return scaled(fraction(sum(_zipf_en(w) < max_zipf for w in ws), len(ws)), target)


@functools.cache
def _pyphen():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


@functools.cache
def _cmu() -> dict:
    import pronouncing

    pronouncing.init_cmu()
    return pronouncing.lookup


@functools.lru_cache(maxsize=65536)
def syllable_count(word: str) -> int:
    """Syllables of a word: CMU dictionary (pronouncing) first, pyphen hyphenation as fallback."""
    w = word.lower()
    phones = _cmu().get(w)
    if phones:
        return max(1, sum(ch.isdigit() for ch in phones[0]))
    return max(1, len(_pyphen().inserted(w).split("-")))


@register("one_syllable_fraction", target=Arg(float, unit_interval), baseline=Arg(float, unit_interval))
def one_syllable_fraction(text: str, target: float = 1.0, baseline: float = 0.0) -> float:
    """1.0 = at least `target` of the alphabetic words have one syllable (CMU dict, pyphen fallback); linear down to 0.0
    at `baseline` (ordinary English is about 0.7).
    """
    ws = [w for w in lower_words(text) if w.isalpha()]
    frac = fraction(sum(syllable_count(w) == 1 for w in ws), len(ws))
    if baseline >= target:
        return 1.0 if frac >= target else 0.0
    return min(1.0, max(0.0, (frac - baseline) / (target - baseline)))


__all__ = [n for n in dir() if not n.startswith("_")]
