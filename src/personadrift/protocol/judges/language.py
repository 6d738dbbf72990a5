"""Language judges: French probability, French/English gloss alternation, English fluency (upstream's gate is in
:mod:`.fluency`).
"""

from __future__ import annotations

import functools
import json
import os
import re

from personadrift.protocol.judges.lexical import _zipf_en
from personadrift.protocol.judges.registry import register
from personadrift.protocol.judges.text import clip, fraction, lower_words

LANGDETECT_MAX_CHARS = 5_000  # langdetect sees at most this much text (it is O(n) and noisy anyway)
_OTHER_LANGS = ("fr", "es", "de", "it", "pt")


@functools.cache
def _langdetect_factory():
    """A private langdetect factory: profiles loaded in sorted file order, seed 0.

    The global ``langdetect.detect`` loads profiles in ``os.listdir`` order and only uses a
    fixed seed if ``DetectorFactory.seed`` is set; this factory is deterministic across
    processes and machines without touching global state (each Detector has its own
    ``random.Random``, so the caller's ``random`` stream is never reseeded).
    """
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    from langdetect.utils.lang_profile import LangProfile

    names = sorted(n for n in os.listdir(PROFILES_DIRECTORY) if not n.startswith("."))
    factory = DetectorFactory()
    factory.seed = 0  # the equivalent of DetectorFactory.seed = 0, on this instance only
    for i, name in enumerate(names):
        with open(os.path.join(PROFILES_DIRECTORY, name), encoding="utf-8") as f:
            factory.add_profile(LangProfile(**json.load(f)), i, len(names))
    return factory


def language_probabilities(text: str) -> dict[str, float]:
    """langdetect's language -> probability for the first 5,000 characters ({} if undetectable)."""
    from langdetect.lang_detect_exception import LangDetectException

    t = clip(text[:LANGDETECT_MAX_CHARS])
    if not any(c.isalpha() for c in t):
        return {}
    det = _langdetect_factory().create()
    det.append(t)
    try:
        return {p.lang: float(p.prob) for p in det.get_probabilities()}
    except LangDetectException:
        return {}


@register("french_probability")
def french_probability(text: str) -> float:
    """langdetect's probability that the reply is French (seeded, deterministic); 1.0 = surely French."""
    return language_probabilities(text).get("fr", 0.0)


@functools.lru_cache(maxsize=65536)
def _zipf(word: str, lang: str) -> float:
    from wordfreq import zipf_frequency

    try:
        return zipf_frequency(word, lang)
    except Exception:
        return 0.0


@functools.lru_cache(maxsize=65536)
def is_english_word(word: str) -> bool:
    """A common English word (Zipf >= 2.5) that is not far more common in fr/es/de/it/pt (by 1.0+)."""
    w = word.lower()
    if not w.replace("'", "").replace("-", "").isalpha():
        return False
    en = _zipf_en(w)
    return en >= 2.5 and en + 1.0 >= max(_zipf(w, lang) for lang in _OTHER_LANGS)


def _lang_vote(chunk: str) -> str:
    """'fr', 'en' or '' by a per-word vote of wordfreq frequencies (robust on short chunks)."""
    fr = en = 0
    for w in lower_words(chunk):
        a, b = _zipf(w, "fr"), _zipf_en(w)
        if a > b + 0.5:
            fr += 1
        elif b > a + 0.5:
            en += 1
    return "fr" if fr > en else "en" if en > fr else ""


_PAREN = re.compile(r"\(([^()]*)\)")


@register("french_gloss_alternation")
def french_gloss_alternation(text: str) -> float:
    """Fraction of French stretches that are each followed by a parenthesised English gloss ('Je suis là. (I am here.)
    ...'); 1.0 = perfect alternation.
    """
    t = clip(text[:50_000])
    pieces: list[tuple[str, str]] = []  # ("out"|"gloss", text)
    pos = 0
    for m in _PAREN.finditer(t):
        pieces.append(("out", t[pos : m.start()]))
        pieces.append(("gloss", m.group(1)))
        pos = m.end()
    pieces.append(("out", t[pos:]))
    outs = [(i, s) for i, (k, s) in enumerate(pieces) if k == "out" and lower_words(s)]
    good = 0
    for i, s in outs:
        nxt = pieces[i + 1] if i + 1 < len(pieces) else None
        if _lang_vote(s) == "fr" and nxt is not None and nxt[0] == "gloss" and _lang_vote(nxt[1]) == "en":
            good += 1
    return fraction(good, len(outs))


@register("english_fluency")
def english_fluency(text: str) -> float:
    """Fraction of word tokens that are English words (wordfreq heuristic, see is_english_word); 1.0 = all English."""
    ws = lower_words(text)
    return fraction(sum(is_english_word(w) for w in ws), len(ws))


__all__ = [n for n in dir() if not n.startswith("_")]
