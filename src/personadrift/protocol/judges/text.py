"""Small, dependency-free text helpers shared by the judges.

Every helper accepts any ``str`` (empty, huge, odd unicode) and never raises.
"""

from __future__ import annotations

import re
import unicodedata

# A word: letters/digits with inner apostrophes or hyphens ("don't", "well-known", "l'homme").
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*", re.UNICODE)
# A sentence ends at . ! ? (and their runs, plus closing quotes/brackets) followed by space or end.
_SENT_END_RE = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "jr", "sr", "mt", "no",
    "approx", "fig", "inc", "ltd", "co",
}

MAX_CHARS = 200_000  # judges look at no more than this many characters (huge inputs stay fast)


def clip(text: str) -> str:
    """The text, cut to ``MAX_CHARS`` characters and NFC-normalised."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return unicodedata.normalize("NFC", text[:MAX_CHARS])


def words(text: str) -> list[str]:
    """Word tokens in order (letters and digits, inner apostrophes and hyphens kept)."""
    return _WORD_RE.findall(clip(text))


def lower_words(text: str) -> list[str]:
    """``words`` lower-cased, with curly apostrophes made straight."""
    return [w.lower().replace("’", "'") for w in words(text)]


def sentences(text: str) -> list[str]:
    """Sentences split at . ! ? followed by whitespace; common abbreviations do not split.

    A trailing fragment without final punctuation counts as a sentence. Sentences without any
    word character are dropped.
    """
    text = clip(text).strip()
    if not text:
        return []
    parts = _SENT_END_RE.split(text)
    out: list[str] = []
    buf = ""
    for part in parts:
        buf = f"{buf} {part}" if buf else part
        last = buf.rstrip(".!?…\"'”’)] ").split()
        tail = last[-1].lower().rstrip(".") if last else ""
        if buf.rstrip().endswith(".") and tail in _ABBREV:
            continue
        out.append(buf.strip())
        buf = ""
    if buf:
        out.append(buf.strip())
    return [s for s in out if _WORD_RE.search(s)]


def letters(text: str) -> list[str]:
    """Alphabetic characters (any script)."""
    return [c for c in clip(text) if c.isalpha()]


def visible_chars(text: str) -> list[str]:
    """Characters that are not whitespace."""
    return [c for c in clip(text) if not c.isspace()]


def fraction(hits: int, total: int) -> float:
    """hits/total in [0, 1]; 0.0 when total is 0."""
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, hits / total))


def clamp(x: float) -> float:
    """x clamped to [0, 1]; NaN becomes 0.0."""
    if x != x:  # NaN
        return 0.0
    return float(max(0.0, min(1.0, x)))


def closeness(value: float, target: float) -> float:
    """1 at value == target, falling linearly to 0 at a distance of max(|target|, 1)."""
    return clamp(1.0 - abs(value - target) / max(abs(target), 1.0))


def scaled(frac: float, target: float) -> float:
    """frac/target clamped to [0, 1]: reaching ``target`` already counts as full compliance."""
    if target <= 0:
        return 1.0 if frac > 0 else 0.0
    return clamp(frac / target)
