"""The judge registry: names -> pure functions ``text -> float in [0, 1]`` with typed arguments."""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class JudgeSpecError(ValueError):
    """A judge name or its arguments are wrong.

    ``field`` is relative to the judge spec: ``name`` or ``args.<argument>``.
    """

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Arg:
    """An argument type with an optional value check.

    ``type`` is ``str``, ``int``, ``float``, ``bool``, ``list`` or ``list[str]``/``list[int]``;
    ``check(value)`` returns None when the value is fine, else a problem string.
    """

    type: object
    # the value reaching a check has passed the type check
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class JudgeInfo:
    name: str
    func: Callable[..., float]
    arg_types: dict
    defaults: dict = field(default_factory=dict)
    doc: str = ""
    # Whether the judge itself scores an empty or blank reply (bool, or a function of the
    # arguments for composite judges); if not, run_judge gives such a reply 0.0.
    scores_empty: bool | Callable[[dict], bool] = False

    def sees_empty(self, args: dict) -> bool:
        """Whether an empty reply reaches the judge function (else it scores 0.0)."""
        return self.scores_empty(args) if callable(self.scores_empty) else bool(self.scores_empty)

    @property
    def required(self) -> list[str]:
        return [a for a in self.arg_types if a not in self.defaults]


_REGISTRY: dict[str, JudgeInfo] = {}


def register(name: str, *, scores_empty: bool | Callable[[dict], bool] = False, **arg_types: type | Arg) -> Callable:
    """Decorator: register ``func(text, **args) -> float`` as judge ``name``.

    Keyword arguments give each argument's type (``letter=str, n=int, words=list[str]``) or an
    :class:`Arg` with a value check. Arguments with a default in the function signature are
    optional. ``scores_empty``: the judge defines its own value for an empty reply (the
    upstream-semantics judges do, as upstream's helpers did); by default an empty reply is 0.0.
    """

    def deco(func: Callable[..., float]) -> Callable[..., float]:
        if name in _REGISTRY:
            raise ValueError(f"judge {name!r} registered twice")
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].name != "text":
            raise TypeError(f"judge {name}: first parameter must be 'text'")
        named = {p.name: p for p in params[1:]}
        if set(named) != set(arg_types):
            raise TypeError(f"judge {name}: arg_types {sorted(arg_types)} != parameters {sorted(named)}")
        # the docstring's first paragraph, as one line (long ones are wrapped in the source)
        doc = [" ".join(line.strip() for line in (func.__doc__ or "").strip().split("\n\n")[0].splitlines())]
        if not doc[0]:
            raise TypeError(f"judge {name}: needs a docstring saying what 1.0 means")
        defaults = {n: p.default for n, p in named.items() if p.default is not inspect.Parameter.empty}
        types = {n: (t if isinstance(t, Arg) else Arg(t)) for n, t in arg_types.items()}
        _REGISTRY[name] = JudgeInfo(name, func, types, defaults, doc[0].strip(), scores_empty)
        return func

    return deco


def judge_names() -> list[str]:
    """All registered judge names, sorted."""
    return sorted(_REGISTRY)


def judge_info(name: str) -> JudgeInfo:
    """The registry entry of ``name`` (KeyError if unknown)."""
    return _REGISTRY[name]


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is list:
        (inner,) = typing.get_args(t) or (object,)
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(inner, 'items')}" if inner is not object else "a list"
    return {
        str: "a string", int: "an integer", float: "a number", bool: "a boolean (true/false)",
        list: "a list", dict: "a mapping",
    }.get(t, f"a {getattr(t, '__name__', t)}")


def _is_instance(value: object, t: object) -> bool:
    origin = typing.get_origin(t)
    if origin is list or t is list:
        if not isinstance(value, (list, tuple)):
            return False
        inner = typing.get_args(t)
        return not inner or all(_is_instance(v, inner[0]) for v in value)
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t is str:
        return isinstance(value, str)
    if t is dict:
        return isinstance(value, Mapping)
    return isinstance(value, t)  # type: ignore[arg-type]


def check_judge_args(name: object, args: dict) -> None:
    """Raise :class:`JudgeSpecError` for an unknown judge or a missing, extra or mistyped argument."""
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known judges: {', '.join(judge_names())}"
        raise JudgeSpecError("name", f"unknown judge {name!r}{hint}")
    info = _REGISTRY[name]
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise JudgeSpecError("args", f"expected a mapping of arguments, got {args!r}")
    for key in args:
        if key not in info.arg_types:
            takes = ", ".join(info.arg_types) or "no arguments"
            raise JudgeSpecError(f"args.{key}", f"unknown argument of judge {name} (it takes: {takes})")
    for key, spec in info.arg_types.items():
        if key not in args:
            if key in info.defaults:
                continue
            raise JudgeSpecError(f"args.{key}", f"missing required argument ({_type_name(spec.type)})")
        value = args[key]
        if not _is_instance(value, spec.type):
            raise JudgeSpecError(f"args.{key}", f"expected {_type_name(spec.type)}, got {value!r}")
        if spec.check is not None:
            try:
                problem = spec.check(value)
            except JudgeSpecError as e:  # a nested judge or measure spec: keep the full path
                raise JudgeSpecError(f"args.{key}.{e.field}", e.problem) from None
            if problem:
                raise JudgeSpecError(f"args.{key}", f"{problem}, got {value!r}")


def run_judge(name: str, args: dict, text: str) -> float:
    """Score ``text`` with judge ``name``: a float in [0, 1].

    An empty or blank reply scores 0.0 with this project's judges: it shows no adherence,
    and scoring it 1.0 for "never say X" would let a model that stops answering look
    perfectly adherent. The upstream-semantics judges (``upstream_*``, registered with
    ``scores_empty``) instead give the value upstream's expression gives (e.g. 1.0 for
    ``does_not_contain``), or raise where upstream's expression raises (scored NaN, with the
    error recorded, by :mod:`personadrift.protocol.scoring`).
    """
    check_judge_args(name, args)
    info = _REGISTRY[name]
    kwargs = {**info.defaults, **dict(args or {})}
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if not text.strip() and not info.sees_empty(kwargs):
        return 0.0
    score = float(info.func(text, **kwargs))
    if not math.isfinite(score):
        raise ValueError(f"judge {name} returned {score} (a bug)")
    return max(0.0, min(1.0, score))


# Value checks shared by judge modules.
def one_letter(v: object) -> str | None:
    return None if isinstance(v, str) and len(v) == 1 and v.isalpha() else "expected exactly one letter"


def non_empty(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v.strip() else "must not be empty"
    return None if len(v) and all(str(x).strip() for x in v) else "must be a non-empty list of non-empty items"


def positive(v: object) -> str | None:
    return None if v > 0 else "must be > 0"  # type: ignore[operator]


def unit_interval(v: object) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"  # type: ignore[operator]


def one_of(*choices: str) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check
