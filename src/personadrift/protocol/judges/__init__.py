"""Judges: pure functions ``text -> float in [0, 1]`` looked up by name.

Public API::

    register(name, **arg_types)      # decorator
    judge_names() -> list[str]
    check_judge_args(name, args)     # raises JudgeSpecError(field, problem)
    run_judge(name, args, text) -> float in [0, 1]
    english_fluency(text) -> float                          # a judge (wordfreq heuristic)
    is_fluent_english(text) -> 0.0 | 1.0;  gate(score, text) -> float;  FLUENCY_GATE   # upstream's gate

Families: :mod:`.format` (letters, case, punctuation, structure), :mod:`.lexical` (words,
repetition, word lists, syllables, rare words, slang, tense), :mod:`.content` (substrings,
keywords, multiple choice, sentiment, first person, numbers, JSON), :mod:`.language` (French,
gloss alternation, English fluency), :mod:`.fluency` (upstream's English-fluency gate),
:mod:`.paper` (``upstream_*``: the paper's helpers with upstream's semantics, and the plain Python
tests its lambdas use), :mod:`.compose` (one_minus, all_of, any_of, affine, compare, reciprocal
over nested judge or measure specs). All assets come from installed packages; nothing is
downloaded at run time.
"""

from __future__ import annotations

from types import SimpleNamespace

from personadrift.protocol.judges import (  # noqa: E402,F401  (registers the judges)
    compose,
    content,
    format,
    language,
    lexical,
    paper,
)
from personadrift.protocol.judges.fluency import (
    FLUENCY_THRESHOLD,
    english_word_share,
    gate,
    is_fluent_english,
)
from personadrift.protocol.judges.language import english_fluency
from personadrift.protocol.judges.registry import (
    Arg,
    JudgeInfo,
    JudgeSpecError,
    check_judge_args,
    judge_info,
    judge_names,
    register,
    run_judge,
)

#: Upstream's English-fluency gate (its notebook multiplies every score by it; here when the
#: config switch ``scoring.english_fluency_gate`` is on): ``FLUENCY_GATE.is_fluent_english(text)``,
#: ``FLUENCY_GATE.english_word_share(text)`` and ``FLUENCY_GATE.gate(score, text)``.
FLUENCY_GATE = SimpleNamespace(is_fluent_english=is_fluent_english, english_word_share=english_word_share, gate=gate,
                               threshold=FLUENCY_THRESHOLD)


def describe_judges() -> list[dict]:
    """Name, one-line meaning of 1.0, argument types and defaults of every judge (for docs and the CLI)."""
    from personadrift.protocol.judges.registry import _type_name

    out = []
    for name in judge_names():
        info = judge_info(name)
        out.append({
            "name": name,
            "doc": info.doc,
            "args": {a: _type_name(spec.type) for a, spec in info.arg_types.items()},
            "defaults": dict(info.defaults),
        })
    return out


__all__ = [
    "Arg", "FLUENCY_GATE", "FLUENCY_THRESHOLD", "JudgeInfo", "JudgeSpecError", "check_judge_args",
    "describe_judges", "english_fluency", "english_word_share", "gate", "is_fluent_english", "judge_info",
    "judge_names", "register", "run_judge",
]
