"""Declarative composition of judges, and numeric measures of a reply.

A persona's judge stays data (no code in YAML); these judges take other judge specs
(``{name: ..., args: {...}}``) or a *measure* spec as arguments::

    one_minus   {judge: J}                      1 - J                      (upstream: 1 - f(x))
    all_of      {judges: [J1, J2, ...]}         J1 and J2 and ...          (min; stops at the first 0)
    any_of      {judges: [J1, J2, ...]}         J1 or J2 or ...            (max; stops at the first 1)
    affine      {measure: M, scale, offset}     offset + scale * M         ((1 - compound) / 2)
    compare     {measure: M, op, value}         1.0 if M op value          (len(x.split()) < 20)
    reciprocal  {measure: M, power}             1 / (1 + M ** power)       (1 / (1 + x.count('e')))

Measures are numbers, not scores, so they are a separate small table (:data:`MEASURES`):
``word_count`` (``len(x.split())``), ``sentence_count`` (upstream's sentence splitter),
``characters`` (``len(x)``), ``occurrences {substring}`` (``x.count(s)``) and
``vader {component}`` (VADER's raw pos/neg/neu/compound score).

A composite judge scores an empty reply itself exactly when all the judges inside it do, so
``one_minus`` of an upstream-semantics judge keeps upstream's value on empty text.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping

from personadrift.protocol.judges.paper import upstream_sentences
from personadrift.protocol.judges.registry import (
    Arg,
    JudgeSpecError,
    check_judge_args,
    judge_info,
    register,
    run_judge,
)
from personadrift.protocol.judges.sentiment import vader_scores

# ---- measures ------------------------------------------------------------------------------------
#: name -> (function of (text, **args), {argument: type}, one-line meaning)
MEASURES: dict[str, tuple[Callable[..., float], dict, str]] = {
    "word_count": (lambda text: len(text.split()), {}, "whitespace-separated words: len(x.split())"),
    "sentence_count": (lambda text: len(upstream_sentences(text)), {}, "sentences by upstream's split_into_sentences"),
    "characters": (lambda text: len(text), {}, "characters: len(x)"),
    "occurrences": (lambda text, substring: text.count(substring), {"substring": str},
                    "non-overlapping occurrences of `substring`: x.count(s)"),
    "vader": (lambda text, component: vader_scores(text)[component], {"component": str},
              "VADER's raw pos, neg, neu (0..1) or compound (-1..1) score"),
}
_VADER_COMPONENTS = ("pos", "neg", "neu", "compound")


def check_measure(spec: object) -> None:
    """Raise :class:`JudgeSpecError` (field relative to the spec) for a bad measure spec."""
    if not isinstance(spec, Mapping):
        raise JudgeSpecError("", f"expected a measure {{name: ..., args: {{...}}}}, got {spec!r}")
    for key in spec:
        if key not in ("name", "args"):
            raise JudgeSpecError(str(key), "unknown key (allowed: name, args)")
    name = spec.get("name")
    if name not in MEASURES:
        raise JudgeSpecError("name", f"unknown measure {name!r} (known: {', '.join(MEASURES)})")
    _, types, _ = MEASURES[name]
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise JudgeSpecError("args", f"expected a mapping, got {args!r}")
    for key in args:
        if key not in types:
            takes = ", ".join(types) or "none"
            raise JudgeSpecError(f"args.{key}", f"unknown argument of measure {name} (it takes: {takes})")
    for key, t in types.items():
        if key not in args:
            raise JudgeSpecError(f"args.{key}", "missing required argument")
        if not isinstance(args[key], t) or not args[key]:
            raise JudgeSpecError(f"args.{key}", f"expected a non-empty {t.__name__}, got {args[key]!r}")
    if name == "vader" and args["component"] not in _VADER_COMPONENTS:
        raise JudgeSpecError("args.component",
                             f"must be one of {', '.join(_VADER_COMPONENTS)}, got {args['component']!r}")


def measure_value(spec: Mapping, text: str) -> float:
    """The value of a measure spec on ``text``."""
    func, _, _ = MEASURES[spec["name"]]
    return float(func(text, **dict(spec.get("args") or {})))


def _measure_arg(v: object) -> None:
    check_measure(v)


# ---- nested judge specs --------------------------------------------------------------------------
def _check_judge_spec(spec: object) -> None:
    if not isinstance(spec, Mapping):
        raise JudgeSpecError("", f"expected a judge {{name: ..., args: {{...}}}}, got {spec!r}")
    for key in spec:
        if key not in ("name", "args"):
            raise JudgeSpecError(str(key), "unknown key (allowed: name, args)")
    check_judge_args(spec.get("name"), spec.get("args") or {})


def _judge_arg(v: object) -> None:
    _check_judge_spec(v)


def _judges_arg(v: list) -> str | None:
    if len(v) < 2:
        return "needs at least two judges"
    for i, spec in enumerate(v):
        try:
            _check_judge_spec(spec)
        except JudgeSpecError as e:
            raise JudgeSpecError(f"{i}.{e.field}".rstrip("."), e.problem) from None
    return None


def _inner_sees_empty(spec: Mapping) -> bool:
    return judge_info(spec["name"]).sees_empty({**judge_info(spec["name"]).defaults, **dict(spec.get("args") or {})})


def _score(spec: Mapping, text: str) -> float:
    return run_judge(spec["name"], spec.get("args") or {}, text)


# ---- composite judges ----------------------------------------------------------------------------
@register("one_minus", scores_empty=lambda a: _inner_sees_empty(a["judge"]), judge=Arg(dict, _judge_arg))
def one_minus(text: str, judge: dict) -> float:
    """1 - the score of `judge` (a nested judge spec): 'never X' from 'X'; 1.0 = `judge` scores 0."""
    return 1.0 - _score(judge, text)


@register("all_of", scores_empty=lambda a: all(_inner_sees_empty(j) for j in a["judges"]),
          judges=Arg(list[dict], _judges_arg))
def all_of(text: str, judges: list) -> float:
    """Python's `a and b and ...` over `judges`: the smallest score (1.0 only if all are 1.0); later judges are not run
    once one scores 0.
    """
    lowest = 1.0
    for spec in judges:
        lowest = min(lowest, _score(spec, text))
        if lowest == 0.0:
            break
    return lowest


@register("any_of", scores_empty=lambda a: all(_inner_sees_empty(j) for j in a["judges"]),
          judges=Arg(list[dict], _judges_arg))
def any_of(text: str, judges: list) -> float:
    """Python's `a or b or ...` over `judges`: the largest score (1.0 if any is 1.0); later judges are not run once one
    scores 1.
    """
    highest = 0.0
    for spec in judges:
        highest = max(highest, _score(spec, text))
        if highest == 1.0:
            break
    return highest


@register("affine", scores_empty=True, measure=Arg(dict, _measure_arg), scale=float, offset=float)
def affine(text: str, measure: dict, scale: float = 1.0, offset: float = 0.0) -> float:  # noqa: A002
    """offset + scale * `measure`, clipped to [0, 1] (e.g. (1 - compound) / 2: scale -0.5, offset 0.5; 1.0 = compound
    -1).
    """
    return offset + scale * measure_value(measure, text)


_OPS = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge}


@register("compare", scores_empty=True, measure=Arg(dict, _measure_arg),
          op=Arg(str, lambda v: None if v in _OPS else f"must be one of {', '.join(_OPS)}"), value=float)
def compare(text: str, measure: dict, op: str, value: float) -> float:  # noqa: A002
    """1.0 if `measure` `op` `value` holds (e.g. fewer than 20 words: word_count < 20)."""
    return float(_OPS[op](measure_value(measure, text), value))


@register("reciprocal", scores_empty=True, measure=Arg(dict, _measure_arg),
          power=Arg(float, lambda v: None if v > 0 else "must be > 0"))
def reciprocal(text: str, measure: dict, power: float = 1.0) -> float:  # noqa: A002
    """1 / (1 + `measure` ** `power`): 1.0 at 0, falling towards 0 (e.g. 1 / (1 + number of 'e's))."""
    m = measure_value(measure, text)
    if m < 0 or not math.isfinite(m):
        raise ValueError(f"reciprocal needs a non-negative measure, got {m}")
    return 1.0 / (1.0 + m ** power)


__all__ = ["MEASURES", "affine", "all_of", "any_of", "check_measure", "compare", "measure_value", "one_minus",
           "reciprocal"]
