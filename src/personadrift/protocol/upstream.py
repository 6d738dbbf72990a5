"""Import the paper's own 100 personas into this project's YAML, without executing the file.

The released code (github likenneth/persona_drift, commit e5b57b0; no license, so the user
supplies the file and nothing of it is copied into this project) keeps its personas in
``hundred_system_prompts.py``: five named category lists of ``(system_prompt, probe, lambda
x: <expression>)`` items, and ``system_prompts`` as their sum::

    pattern_system_prompts = [...]          # 29
    multiple_choice_system_prompts = [...]  # 27
    persona_system_prompts = [...]          # 14
    memorization_system_prompts = [...]     # 27
    language_system_prompts = [...]         # 3
    system_prompts = pattern_... + persona_... + multiple_choice_... + memorization_... + language_...

This module parses that file with :mod:`ast` only. A persona's category is the list it is in.
Personas are written in the order upstream's ``run.py`` numbers them (the first item of each
list in the order pattern, multiple_choice, persona, memorization, language, then the rest of
each list in the same order). Each judge lambda is translated into a declarative judge spec
(:func:`translate_judge`): upstream helpers become ``upstream_<helper>`` judges, ``in`` tests
``substring_any``/``token_any``, ``and``/``or``/``not``/``1 - f`` the composition judges, and
arithmetic on counts or sentiment ``affine``/``compare``/``reciprocal`` over a measure.

Nothing is dropped: an item that cannot be translated, or one in a list that is not one of the
five, is listed in the report and in ``report.yaml``. Every deliberate difference from upstream
(:data:`personadrift.protocol.judges.paper.DIFFERENCES`) and every upstream quirk kept as is
is written into the persona's ``notes`` and the report.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from personadrift.command import Command
from personadrift.errors import InputError
from personadrift.protocol.judges import JudgeSpecError, check_judge_args
from personadrift.protocol.judges.paper import DIFFERENCES
from personadrift.protocol.personas import CATEGORIES, load_personas

#: sha256 of hundred_system_prompts.py at github likenneth/persona_drift commit e5b57b0.
UPSTREAM_SHA256 = "5006e851060613a03a2426bc83ff5118059440547fbec04207a527b40b5c15e1"
UPSTREAM_URL = "https://raw.githubusercontent.com/likenneth/persona_drift/e5b57b0/hundred_system_prompts.py"
#: Category -> the upstream list that holds it.
CATEGORY_LISTS = {c: f"{c}_system_prompts" for c in CATEGORIES}
#: The order of upstream run.py's persona numbering (its zip over the five lists).
RUN_ORDER = ("pattern", "multiple_choice", "persona", "memorization", "language")
SUM_VARIABLE = "system_prompts"
OUTPUT_FILE = "personas.yaml"
REPORT_FILE = "report.yaml"

# Upstream helpers -> (what their first argument is, [(upstream parameter, judge argument)]).
# The judge is always ``upstream_<helper>``.
HELPERS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "fraction_starts_with": ("text", [("char_start", "prefix")]),
    "fraction_of_case_letters": ("text", [("is_upper", "upper")]),
    "count_num_words_one": ("text", []),
    "fraction_non_letter": ("text", []),
    "fraction_digit": ("text", []),
    "are_first_and_last_words_same": ("text", []),
    "count_num_words": ("text", []),
    "get_sentiment": ("text", [("sentiment", "component")]),
    "count_plural_nouns": ("text", []),
    "is_valid_json_format": ("text", []),
    "is_valid_list_format": ("text", []),
    "is_valid_dash_format": ("text", []),
    "does_not_contain": ("text", [("words", "words")]),
    "fraction_of_text_that_is_a_target": ("text", [("target_words", "words")]),
    "fraction_of_target_words_hit": ("text", [("target_words", "words")]),
    "sentences_start_with": ("sentences", [("word", "word")]),
    "is_alliteration": ("text", []),
    "is_valid_sentence_word_count": ("sentences", [("pattern", "pattern")]),
    "is_increasing_sentence_word_count": ("sentences", []),
    "is_valid_alternating_french_english": ("text", []),
    "close_to_num": ("text", [("target_number", "target")]),
    "fraction_alter_upper_lower": ("text", []),
    "teenager_score": ("text", []),
    "fraction_past_tense_verbs": ("text", []),
    "fraction_unique_words": ("text", []),
    "fraction_repeated_words": ("text", []),
    "contains_color_and_number": ("text", []),
    "fraction_alter_short_long": ("text", []),
    "fraction_alter_banana": ("text", []),
    "fraction_sentences_that_are_questions": ("text", []),
    "is_valid_repeat": ("text", []),
    "get_french_percentage": ("text", []),
}
#: Upstream's module-level word lists (downloaded at import time upstream) -> offline stand-ins.
MODULE_WORDLISTS = {"frequent_words_list": "frequent_words", "one_syllable_words_list": "one_syllable_words"}
SENTENCE_SPLITTER = "split_into_sentences"
_KNOWN_CALLS = {SENTENCE_SPLITTER, "len", "any", "all", "int", "float", "bool", "abs", "min", "max"}
_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!=", ast.Gt: ">", ast.GtE: ">="}
_FLIP = {"<": ">", "<=": ">=", "==": "==", "!=": "!=", ">": "<", ">=": "<="}


class Untranslatable(Exception):
    """A judge expression (or part of one) has no declarative equivalent here."""


@dataclass
class ImportedPersona:
    run_index: int            # upstream run.py's persona number
    list_name: str
    list_index: int
    category: str
    id: str
    judge: dict
    differences: list[str]
    quirks: list[str]
    upstream_judge: str


@dataclass
class UnmappedItem:
    list_name: str
    list_index: int
    category: str
    reason: str
    upstream_judge: str = ""
    system_prompt: str | None = None
    probe: str | None = None

    def line(self) -> str:
        return f"{self.list_name}[{self.list_index}] ({self.category}): {self.reason}: {self.upstream_judge or '?'}"


@dataclass
class ImportReport:
    source: str
    sha256: str
    out_dir: str
    total: int = 0
    imported: list[ImportedPersona] = field(default_factory=list)
    unmapped: list[UnmappedItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # structural findings (extra lists, a sum that differs)
    notices: list[str] = field(default_factory=list)    # worth knowing, not a failure (a file accepted by override)
    written: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every upstream item was imported and the file's structure is as expected."""
        return not self.unmapped and not self.problems

    def counts(self) -> dict[str, int]:
        return {c: sum(p.category == c for p in self.imported) for c in CATEGORIES}

    def summary(self) -> str:
        diff = [p for p in self.imported if p.differences]
        lines = [f"{self.source} (sha256 {self.sha256}): {self.total} items, {len(self.imported)} imported, "
                 f"{len(self.unmapped)} NOT mapped; {len(diff)} personas differ deliberately from upstream "
                 f"(reasons in their notes and {REPORT_FILE})"]
        lines.append("  categories: " + ", ".join(f"{c} {n}" for c, n in self.counts().items()))
        for n in self.notices:
            lines.append(f"  NOTE: {n}")
        for p in self.problems:
            lines.append(f"  PROBLEM: {p}")
        for u in self.unmapped:
            lines.append(f"  UNMAPPED: {u.line()}")
        return "\n".join(lines)

    def to_yaml(self) -> dict:
        return {
            "source": self.source, "sha256": self.sha256, "total": self.total, "imported": len(self.imported),
            "categories": self.counts(), "problems": self.problems, "notices": self.notices,
            "unmapped": [{"list": u.list_name, "index": u.list_index, "category": u.category, "reason": u.reason,
                          "system_prompt": u.system_prompt, "probe": u.probe, "upstream_judge": u.upstream_judge}
                         for u in self.unmapped],
            "differences": [{"id": p.id, "upstream": f"{p.list_name}[{p.list_index}]", "judge": p.upstream_judge,
                             "differs": p.differences, "upstream_quirks": p.quirks}
                            for p in self.imported if p.differences or p.quirks],
        }


# ---- the source file -------------------------------------------------------------------------------
def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_source(path: str | Path, expected_sha256: str | None = UPSTREAM_SHA256, field_name: str | None = None) -> str:
    """The file's sha256, after checking it exists and (unless ``expected_sha256`` is None) has that sum.

    Errors say where to get the released file, and name both sums for a different one.
    """
    p = Path(path)
    where = field_name or None
    if not p.is_file():
        raise InputError(p, where, f"file not found. Download the paper's persona file from {UPSTREAM_URL} "
                                   f"(github likenneth/persona_drift, commit e5b57b0; the repository has no license, "
                                   f"so this project does not ship it) and give its path")
    digest = sha256_of(p)
    if expected_sha256 and digest != expected_sha256.lower():
        raise InputError(p, where, f"sha256 is {digest}, expected {expected_sha256} (the released file, "
                                   f"github likenneth/persona_drift commit e5b57b0). To import this different file "
                                   f"knowingly, set personas.upstream_sha256 (or --sha256) to {digest}")
    return digest


# ---- expression analysis ---------------------------------------------------------------------------
class _Rename(ast.NodeTransformer):
    """Rename the lambda's parameter to ``x``."""

    def __init__(self, old: str):
        self.old = old

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            return ast.copy_location(ast.Name(id="x", ctx=node.ctx), node)
        return node


def _src(node: ast.AST) -> str:
    return ast.unparse(node)


def const_str(node: ast.AST) -> str | None:
    """A string literal, or a '+' concatenation of literals."""
    match node:
        case ast.Constant(value=str() as s):
            return s
        case ast.BinOp(left=left, op=ast.Add(), right=right):
            a, b = const_str(left), const_str(right)
            return a + b if a is not None and b is not None else None
    return None


def _const_num(node: ast.AST) -> float | int | None:
    match node:
        case ast.Constant(value=bool()):
            return None
        case ast.Constant(value=int() | float() as v):
            return v
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as v)) if not isinstance(v, bool):
            return -v
        case ast.BinOp(left=left, op=ast.Div(), right=right):  # 1/3 as an exponent
            a, b = _const_num(left), _const_num(right)
            return a / b if a is not None and b else None
    return None


def _const_value(node: ast.AST) -> object:
    """A literal argument value: str, number, bool, list of str/int, or a known module word list."""
    s = const_str(node)
    if s is not None:
        return s
    n = _const_num(node)
    if n is not None:
        return n
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        vals = [_const_value(e) for e in node.elts]
        if all(isinstance(v, str) for v in vals) or all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            return vals
    if isinstance(node, ast.Name) and node.id in MODULE_WORDLISTS:
        return _WordList(MODULE_WORDLISTS[node.id])
    raise Untranslatable(f"argument {_src(node)} is not a literal this importer understands")


@dataclass(frozen=True)
class _WordList:
    name: str


def _subject(node: ast.AST) -> str | None:
    """'x' for the reply, 'lower' for x.lower(); else None."""
    match node:
        case ast.Name(id="x"):
            return "x"
        case ast.Call(func=ast.Attribute(value=ast.Name(id="x"), attr="lower"), args=[], keywords=[]):
            return "lower"
    return None


def _split_subject(node: ast.AST) -> str | None:
    """'x' for x.split(), 'lower' for x.lower().split(); else None."""
    match node:
        case ast.Call(func=ast.Attribute(value=inner, attr="split"), args=[], keywords=[]):
            return _subject(inner)
    return None


def _is_sentences_of_x(node: ast.AST) -> bool:
    match node:
        case ast.Call(func=ast.Name(id=name), args=[arg], keywords=[]) if name == SENTENCE_SPLITTER:
            return _subject(arg) == "x"
    return False


def _measure(node: ast.AST) -> dict | None:
    """The measure spec of a numeric expression over the reply, or None."""
    match node:
        case ast.Call(func=ast.Name(id="len"), args=[arg], keywords=[]):
            if _split_subject(arg) == "x":
                return {"name": "word_count"}
            if _is_sentences_of_x(arg):
                return {"name": "sentence_count"}
            if _subject(arg) == "x":
                return {"name": "characters"}
        case ast.Call(func=ast.Attribute(value=subj, attr="count"), args=[lit], keywords=[]) if _subject(subj) == "x":
            s = const_str(lit)
            if s:
                return {"name": "occurrences", "args": {"substring": s}}
        case ast.Call(func=ast.Name(id="get_sentiment"), args=[arg, comp], keywords=[]) if _subject(arg) == "x":
            c = const_str(comp)
            if c in ("pos", "neg", "neu", "compound"):
                return {"name": "vader", "args": {"component": c}}
    return None


def _linear(node: ast.AST) -> tuple[dict | None, float, float] | None:
    """(measure, scale, offset) with node == offset + scale * measure, or None."""
    n = _const_num(node)
    if n is not None:
        return None, 0.0, float(n)
    m = _measure(node)
    if m is not None:
        return m, 1.0, 0.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _linear(node.operand)
        return (inner[0], -inner[1], -inner[2]) if inner else None
    if isinstance(node, ast.BinOp):
        a, b = _linear(node.left), _linear(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, (ast.Add, ast.Sub)):
            sign = 1.0 if isinstance(node.op, ast.Add) else -1.0
            if a[0] is not None and b[0] is not None:
                return None
            return a[0] or b[0], a[1] + sign * b[1], a[2] + sign * b[2]
        if isinstance(node.op, ast.Mult) and (a[0] is None or b[0] is None):
            k, lin = (a[2], b) if a[0] is None else (b[2], a)
            return lin[0], k * lin[1], k * lin[2]
        if isinstance(node.op, ast.Div) and b[0] is None and b[2] != 0:
            return a[0], a[1] / b[2], a[2] / b[2]
    return None


def _spec(name: str, args: dict | None = None) -> dict:
    return {"name": name, "args": args} if args else {"name": name}


def _helper_call(node: ast.Call) -> dict:
    assert isinstance(node.func, ast.Name)  # the caller matched a helper's name
    name = node.func.id
    kind, params = HELPERS[name]
    if not node.args:
        raise Untranslatable(f"{name}() without the reply as its first argument")
    first = node.args[0]
    if kind == "text" and _subject(first) != "x":
        raise Untranslatable(f"{name}'s first argument is {_src(first)}, not the reply")
    if kind == "sentences" and not _is_sentences_of_x(first):
        raise Untranslatable(f"{name}'s first argument is {_src(first)}, not {SENTENCE_SPLITTER}(x)")
    given: dict[str, ast.AST] = {}
    if len(node.args) - 1 > len(params):
        raise Untranslatable(f"{name}() with more arguments than upstream's helper takes")
    for (upstream_param, _), arg_node in zip(params, node.args[1:]):
        given[upstream_param] = arg_node
    for kw in node.keywords:
        if kw.arg not in {p for p, _ in params} or kw.arg in given:
            raise Untranslatable(f"{name}() with an unexpected keyword argument {kw.arg}")
        given[kw.arg] = kw.value
    args: dict = {}
    for upstream_param, arg in params:
        if upstream_param not in given:
            raise Untranslatable(f"{name}() without its argument {upstream_param}")
        value = _const_value(given[upstream_param])
        if isinstance(value, _WordList):
            if name != "fraction_of_text_that_is_a_target":
                raise Untranslatable(f"{name}() with the module word list {_src(given[upstream_param])}")
            args["wordlist"] = value.name
        else:
            args[arg] = value
    return _spec(f"upstream_{name}", args)


def _membership(node: ast.Compare) -> dict | None:
    """`'s' in x`, `'s' in x.lower()`, `'w' in x.split()` (and `not in`), or None."""
    if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.In, ast.NotIn)):
        return None
    lit, target = const_str(node.left), node.comparators[0]
    if lit is None:
        return None
    if _subject(target):
        spec = _spec("substring_any", {"substrings": [lit], "lowercase": _subject(target) == "lower"})
    elif _split_subject(target):
        spec = _spec("token_any", {"tokens": [lit], "lowercase": _split_subject(target) == "lower"})
    else:
        return None
    return spec if isinstance(node.ops[0], ast.In) else _spec("one_minus", {"judge": spec})


def _generator(node: ast.Call) -> dict:
    """any(...)/all(...) over `v in <reply> for v in [literals]`."""
    assert isinstance(node.func, ast.Name)  # the caller matched any/all by name
    fn = node.func.id
    if len(node.args) != 1 or node.keywords or not isinstance(node.args[0], (ast.GeneratorExp, ast.ListComp)):
        raise Untranslatable(f"{fn}() of something other than a generator")
    gen = node.args[0]
    if len(gen.generators) != 1 or gen.generators[0].ifs or not isinstance(gen.generators[0].target, ast.Name):
        raise Untranslatable(f"{fn}() over a generator with conditions or several loops")
    var = gen.generators[0].target.id
    items = _const_value(gen.generators[0].iter)
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise Untranslatable(f"{fn}() over something other than a list of strings")
    elt = gen.elt
    match elt:
        case ast.Compare(left=ast.Name(id=v), ops=[ast.In()], comparators=[target]) if v == var:
            if _subject(target):
                name, key, low = "substring_any", "substrings", _subject(target) == "lower"
            elif _split_subject(target):
                name, key, low = "token_any", "tokens", _split_subject(target) == "lower"
            else:
                raise Untranslatable(f"{fn}() tests membership in {_src(target)}")
        case _:
            raise Untranslatable(f"{fn}() of {_src(elt)}")
    if fn == "any":
        return _spec(name, {key: items, "lowercase": low})
    return _spec("all_of", {"judges": [_spec(name, {key: [i], "lowercase": low}) for i in items]})


def _merge_or(specs: list[dict]) -> dict:
    """`a in x or b in x` -> one substring_any when all tests are alike; else any_of."""
    kinds = {(s["name"], s["args"].get("lowercase")) for s in specs if s["name"] in ("substring_any", "token_any")}
    if len(kinds) == 1 and all(s["name"] in ("substring_any", "token_any") for s in specs):
        name, low = kinds.pop()
        key = "substrings" if name == "substring_any" else "tokens"
        merged: list[str] = []
        for s in specs:
            merged += [w for w in s["args"][key] if w not in merged]
        return _spec(name, {key: merged, "lowercase": low})
    return _spec("any_of", {"judges": specs})


def _reciprocal(node: ast.BinOp) -> dict | None:
    """1 / (1 + M) or 1 / (1 + M ** p)."""
    if not (isinstance(node.op, ast.Div) and _const_num(node.left) == 1 and isinstance(node.right, ast.BinOp)
            and isinstance(node.right.op, ast.Add)):
        return None
    a, b = node.right.left, node.right.right
    term = b if _const_num(a) == 1 else a if _const_num(b) == 1 else None
    if term is None:
        return None
    power: float = 1.0
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Pow):
        p = _const_num(term.right)
        if p is None or p <= 0:
            return None
        term, power = term.left, float(p)
    m = _measure(term)
    if m is None:
        return None
    return _spec("reciprocal", {"measure": m, "power": power} if power != 1.0 else {"measure": m})


def translate_judge(node: ast.AST) -> dict:
    """The declarative judge spec of a lambda body (its parameter renamed to ``x``).

    Raises :class:`Untranslatable` naming the part that has no equivalent.
    """
    while (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "float", "bool")
           and len(node.args) == 1 and not node.keywords):
        node = node.args[0]  # upstream turns booleans into scores implicitly; casts change nothing
    if isinstance(node, ast.BoolOp):
        specs = [translate_judge(v) for v in node.values]
        return _spec("all_of", {"judges": specs}) if isinstance(node.op, ast.And) else _merge_or(specs)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _spec("one_minus", {"judge": translate_judge(node.operand)})
    if isinstance(node, ast.Compare):
        member = _membership(node)
        if member is not None:
            return member
        if len(node.ops) == 1 and type(node.ops[0]) in _OPS:
            left, right, op = node.left, node.comparators[0], _OPS[type(node.ops[0])]
            for tok_side, lit_side in ((left, right), (right, left)):
                match tok_side:
                    case ast.Subscript(value=split, slice=idx) if _split_subject(split) == "x" and _const_num(idx) == 0:
                        token = const_str(lit_side)
                        if token is not None and op == "==":
                            return _spec("first_token_is", {"token": token})
            m, value = _measure(left), _const_num(right)
            if m is None:
                m, value, op = _measure(right), _const_num(left), _FLIP[op]
            if m is not None and value is not None:
                return _spec("compare", {"measure": m, "op": op, "value": float(value)})
        raise Untranslatable(f"comparison {_src(node)}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in ("any", "all"):
            return _generator(node)
        if node.func.id in HELPERS:
            return _helper_call(node)
        raise Untranslatable(f"unknown helper {node.func.id}()")
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Sub) and _const_num(node.left) == 1:
            try:
                return _spec("one_minus", {"judge": translate_judge(node.right)})
            except Untranslatable:
                pass  # maybe arithmetic on a measure (1 - get_sentiment(...) used as a number)
        rec = _reciprocal(node)
        if rec is not None:
            return rec
        lin = _linear(node)
        if lin is not None and lin[0] is not None:
            return _spec("affine", {"measure": lin[0], "scale": lin[1], "offset": lin[2]})
        raise Untranslatable(f"arithmetic {_src(node)}")
    raise Untranslatable(f"expression {_src(node)}")


# ---- differences and quirks ------------------------------------------------------------------------
def _walk(spec: dict):
    yield spec
    args = spec.get("args") or {}
    if "judge" in args:
        yield from _walk(args["judge"])
    for j in args.get("judges", []):
        yield from _walk(j)


def differences(spec: dict) -> list[str]:
    """The deliberate differences from upstream in a judge spec (reasons, in order, no repeats)."""
    out: list[str] = []
    for s in _walk(spec):
        args = s.get("args") or {}
        keys = [s["name"], f"{s['name']}:{args.get('wordlist', '')}"]
        if s["name"] in ("affine", "compare", "reciprocal") and args["measure"]["name"] == "vader":
            keys.append("upstream_get_sentiment")
        for k in keys:
            if k in DIFFERENCES and DIFFERENCES[k] not in out:
                out.append(DIFFERENCES[k])
    return out


def quirks(spec: dict, system_prompt: str) -> list[str]:
    """Upstream behaviours kept as they are that a reader of the scores should know."""
    out: list[str] = []
    for s in _walk(spec):
        name, args = s["name"], s.get("args") or {}
        if name in ("upstream_does_not_contain", "upstream_fraction_of_target_words_hit",
                    "upstream_fraction_of_text_that_is_a_target"):
            never = [w for w in args.get("words", []) if w != w.lower() or len(w.split()) != 1]
            if never:
                out.append(f"upstream compares single lower-case words, so {never} can never match"
                           + (" (this judge can never reach 1.0)"
                              if name == "upstream_fraction_of_target_words_hit" else ""))
        if name == "upstream_fraction_repeated_words":
            out.append("upstream divides distinct repeated words by all words, so a perfect reply scores 0.5")
        if name == "substring_any" and not args.get("lowercase"):
            letters = [w for w in args["substrings"] if len(w) == 1 and w.isupper()]
            if letters:
                out.append(f"a substring test: any {letters[0]!r} anywhere in the reply counts (e.g. in a word),"
                           " as upstream")
        if name == "upstream_sentences_start_with" and not re.search(
                rf"(?<!\w){re.escape(args['word'])}(?!\w)", system_prompt):
            out.append(f"the judge checks {args['word']!r}, which the system prompt never writes so: "
                       f"it probably asks for another word")
    return out


# ---- conversion ----------------------------------------------------------------------------------
def _assignments(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level ``name = value`` assignments (the last one wins, as at run time)."""
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
            out[node.target.id] = node.value
    return out


def _sum_of_names(node: ast.AST) -> list[str] | None:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _sum_of_names(node.left), _sum_of_names(node.right)
        return a + b if a is not None and b is not None else None
    return None


def _slug(category: str, k: int) -> str:
    return f"upstream-{category.replace('_', '-')}-{k:02d}"


def _parse(source: Path) -> tuple[str, ast.Module]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(source, None, f"cannot read file: {e}") from None
    try:
        with warnings.catch_warnings():  # upstream's "\s" in plain strings warns; not the user's concern
            warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
            return text, ast.parse(text, filename=str(source))  # parsed only, never executed
    except SyntaxError as e:
        raise InputError(source, None, f"Python syntax error at line {e.lineno}: {e.msg}") from None


def _translate_item(elt: ast.AST, text: str, list_name: str, i: int, category: str) -> tuple[dict | None, UnmappedItem]:
    src = ast.get_source_segment(text, elt) or ast.unparse(elt)
    item = UnmappedItem(list_name, i, category, "", src)
    if not isinstance(elt, (ast.Tuple, ast.List)) or len(elt.elts) != 3:
        item.reason = "not a (system_prompt, probe, judge) triple"
        return None, item
    sys_node, probe_node, judge_node = elt.elts
    item.system_prompt, item.probe = const_str(sys_node), const_str(probe_node)
    item.upstream_judge = ast.get_source_segment(text, judge_node) or ast.unparse(judge_node)
    if not item.system_prompt or not item.probe:
        item.reason = "system prompt or probe is not a plain string literal"
        return None, item
    lam = judge_node
    if not isinstance(lam, ast.Lambda) or len(lam.args.args) != 1 or lam.args.vararg or lam.args.kwarg \
            or lam.args.kwonlyargs or lam.args.posonlyargs:
        item.reason = "judge is not a one-argument lambda"
        return None, item
    body = _Rename(lam.args.args[0].arg).visit(copy.deepcopy(lam.body))
    try:
        spec = translate_judge(body)
        check_judge_args(spec["name"], spec.get("args") or {})
    except Untranslatable as e:
        unknown = sorted({n.func.id for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                          and n.func.id not in HELPERS and n.func.id not in _KNOWN_CALLS})
        helpers = ", ".join(f"{u}()" for u in unknown)
        item.reason = (f"unknown helper {helpers}; " if unknown else "") + f"no equivalent for {e}"
        return None, item
    except JudgeSpecError as e:  # a translation produced bad arguments: report, don't crash
        item.reason = f"translated to an invalid judge ({e})"
        return None, item
    return spec, item


def convert(source: str | Path, out_dir: str | Path, expected_sha256: str | None = UPSTREAM_SHA256) -> ImportReport:
    """Import ``source`` into ``out_dir/personas.yaml`` (run.py order) and ``out_dir/report.yaml``.

    ``expected_sha256``: the file must have this sum (None: any file). The persona file
    validates with :func:`personadrift.protocol.personas.load_personas`.
    """
    source, out_dir = Path(source), Path(out_dir)
    digest = check_source(source, expected_sha256)
    text, tree = _parse(source)
    assigned = _assignments(tree)
    missing = [name for name in CATEGORY_LISTS.values() if name not in assigned]
    if missing:
        raise InputError(source, missing[0], f"no module-level list {missing[0]} (expected the five category lists "
                                             f"{', '.join(CATEGORY_LISTS.values())})")
    report = ImportReport(source=str(source), sha256=digest, out_dir=str(out_dir))
    if digest != UPSTREAM_SHA256:
        report.notices.append(f"not the released file (sha256 {UPSTREAM_SHA256}): helpers are judged with the released "
                              f"file's semantics, whatever this file defines")
    summed = _sum_of_names(assigned[SUM_VARIABLE]) if SUM_VARIABLE in assigned else None
    if summed is None:
        report.problems.append(f"{SUM_VARIABLE} is not a sum of named lists; the five category lists were read"
                               " directly")
        summed = list(CATEGORY_LISTS.values())
    for name in CATEGORY_LISTS.values():
        if name not in summed:
            report.problems.append(f"{name} is not part of {SUM_VARIABLE} (imported anyway: run.py reads the lists)")

    lists: dict[str, list[ast.AST]] = {}
    for name in dict.fromkeys(list(CATEGORY_LISTS.values()) + summed):
        node = assigned.get(name)
        if not isinstance(node, (ast.List, ast.Tuple)):
            got = _src(node) if node else "nothing"
            raise InputError(source, name, f"expected a list literal of (system_prompt, probe, judge) items, got {got}")
        lists[name] = list(node.elts)
    report.total = sum(len(v) for v in lists.values())

    # Items of a list in the sum that is not a category list: reported, never dropped silently.
    for name in summed:
        if name not in CATEGORY_LISTS.values():
            report.problems.append(f"{SUM_VARIABLE} adds {name} ({len(lists[name])} items), which is not one of"
                                   " the five category lists")
            for i, elt in enumerate(lists[name]):
                _, item = _translate_item(elt, text, name, i, "?")
                also = f"; also {item.reason}" if item.reason else ""
                item.reason = f"in {name}, not one of the five category lists{also}"
                report.unmapped.append(item)

    # upstream run.py's numbering: the first item of each category list, then the rest of each
    order = [(c, 0) for c in RUN_ORDER if lists[CATEGORY_LISTS[c]]]
    order += [(c, i) for c in RUN_ORDER for i in range(1, len(lists[CATEGORY_LISTS[c]]))]
    personas = []
    for run_index, (cat, i) in enumerate(order):
        name = CATEGORY_LISTS[cat]
        spec, item = _translate_item(lists[name][i], text, name, i, cat)
        if spec is None:
            report.unmapped.append(item)
            continue
        pid = _slug(cat, i + 1)
        diffs, qs = differences(spec), quirks(spec, item.system_prompt or "")
        note = (f"Imported from upstream {name}[{i}] (run.py persona {run_index}); "
                f"upstream judge: {item.upstream_judge}.")
        note += "".join(f" DIFFERS from upstream: {d}." for d in diffs)
        note += "".join(f" Upstream quirk kept: {q}." for q in qs)
        personas.append({"id": pid, "category": cat, "system_prompt": item.system_prompt, "probe": item.probe,
                         "judge": spec, "notes": note})
        report.imported.append(ImportedPersona(run_index, name, i, cat, pid, spec, diffs, qs, item.upstream_judge))

    out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by personadrift.protocol.upstream from {source.name} (sha256 {digest}); do not edit.\n"
              f"# Upstream: github likenneth/persona_drift (commit e5b57b0), parsed with ast, never executed.\n"
              f"# Order: upstream run.py's persona numbering. Differences from upstream are in each persona's notes.\n")
    out = out_dir / OUTPUT_FILE
    body = {"description": f"The paper's personas imported from {source.name}: {len(personas)} of {report.total} items",
            "personas": personas}
    out.write_text(header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
    rep = out_dir / REPORT_FILE
    rep.write_text(header + yaml.safe_dump(report.to_yaml(), sort_keys=False, allow_unicode=True, width=1000),
                   encoding="utf-8")
    report.written = {"personas": str(out), "report": str(rep)}
    load_personas([out])  # the output must validate
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m personadrift.protocol.upstream SOURCE --out DIR [--sha256 SUM|any] [--strict]``.

    Exit status: 0 on success (unmapped items and problems are printed), 1 with ``--strict``
    when some item was not imported or the structure differs, 2 on an input error.
    """
    return COMMANDS[0].main(argv)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("source", type=Path, help="the paper's hundred_system_prompts.py (parsed, never executed)")
    ap.add_argument("--out", type=Path, default=Path("resources/personas/upstream"),
                    help="output directory (default: resources/personas/upstream)")
    ap.add_argument("--sha256", default=UPSTREAM_SHA256,
                    help="the sum the file must have (default: the released file's); 'any' accepts any file")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any item was not imported")


def run(args: argparse.Namespace) -> int:
    """Convert; 1 with ``--strict`` when some item was not imported."""
    report = convert(args.source, args.out, None if args.sha256 == "any" else args.sha256)
    print(report.summary())
    return 1 if (args.strict and not report.ok) else 0


COMMANDS = [
    Command("import-upstream", "convert the paper's hundred_system_prompts.py into persona YAML", run, add_arguments,
            takes_config=False),
]


if __name__ == "__main__":
    raise SystemExit(main())
