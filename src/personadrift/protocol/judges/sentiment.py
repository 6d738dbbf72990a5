"""VADER sentiment: the one wrapper every judge uses (``sentiment`` in content.py, the paper's
helpers in paper.py, the ``vader`` measure of compose.py)."""

from __future__ import annotations

import functools

#: VADER's run time grows quadratically with the text, so it sees at most this many
#: characters; probe answers are far shorter.
VADER_MAX_CHARS = 10_000


@functools.cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_scores(text: str) -> dict:
    """VADER's polarity scores (neg, neu, pos, compound) of the first ``VADER_MAX_CHARS``
    characters (all 0.0 for a blank text)."""
    return _analyzer().polarity_scores(text[:VADER_MAX_CHARS])
