"""Import the paper's persona file into this project's YAML, without executing it.

The released code (github likenneth/persona_drift, commit e5b57b0, no license) keeps its 100
personas in ``hundred_system_prompts.py`` as a module-level list::

    system_prompts = [(system_prompt, probe, lambda x: <judge expression>), ...]

This module parses that file with :mod:`ast` (the file is never imported or executed), maps
each judge lambda onto a registered judge through a table of recognised expression shapes
(:data:`SHAPES`), assigns categories by upstream index ranges (pattern, multiple_choice,
persona, memorization, language; counts configurable, paper: 29/27/14/27/3), keeps the
upstream order, and writes one persona file per category plus ``unmapped.yaml``. Every item
that cannot be mapped is reported (returned and printed), never dropped silently.

Mappings that are close but not identical to the upstream expression (a boolean test
mapped onto a graded judge, substring tests mapped onto whole-word matching) are flagged
``approximate`` in the report and in the persona's ``notes``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from personadrift.benchmark.judges import JudgeSpecError, check_judge_args
from personadrift.benchmark.personas import CATEGORIES, PAPER_COUNTS, load_personas
from personadrift.errors import InputError

UPSTREAM_VARIABLE = "system_prompts"

# Upstream-style helpers taking only the text, and the judge each maps to.
HELPERS_1: dict[str, tuple[str, dict, bool]] = {
    # name: (judge, args, approximate)
    "get_french_percentage": ("french_probability", {}, False),
    "get_french_probability": ("french_probability", {}, False),
    "get_percentage_uppercase": ("uppercase_fraction", {}, False),
    "get_uppercase_percentage": ("uppercase_fraction", {}, False),
    "get_percentage_lowercase": ("lowercase_fraction", {}, False),
    "get_lowercase_percentage": ("lowercase_fraction", {}, False),
    "get_question_percentage": ("question_fraction", {}, False),
    "get_past_tense_percentage": ("past_tense_fraction", {}, True),
    "fraction_of_unique_words": ("unique_word_fraction", {}, False),
    "get_unique_word_percentage": ("unique_word_fraction", {}, False),
    "is_first_person": ("first_person", {}, True),
    "get_english_percentage": ("english_fluency", {}, True),
}
_WORD_COUNTERS = {"count_num_words", "count_words", "num_words"}
_SENT_COUNTERS = {"count_num_sentences", "count_sentences", "num_sentences", "sent_tokenize", "split_into_sentences"}
_SENTIMENT_KINDS = {"pos": "positive", "positive": "positive", "neg": "negative", "negative": "negative",
                    "compound": "compound"}


@dataclass(frozen=True)
class JudgeMapping:
    judge: str
    args: dict
    approximate: bool = False
    shape: str = ""


@dataclass
class ImportedPersona:
    index: int
    category: str
    id: str
    judge: str
    args: dict
    approximate: bool
    upstream_judge: str


@dataclass
class UnmappedItem:
    index: int
    category: str
    reason: str
    upstream_judge: str = ""
    system_prompt: str | None = None
    probe: str | None = None

    def line(self) -> str:
        return f"system_prompts[{self.index}] ({self.category}): {self.reason}: {self.upstream_judge or '?'}"


@dataclass
class ImportReport:
    source: str
    out_dir: str
    counts: dict
    total: int = 0
    imported: list[ImportedPersona] = field(default_factory=list)
    unmapped: list[UnmappedItem] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every upstream item was mapped."""
        return not self.unmapped

    @property
    def approximate(self) -> list[ImportedPersona]:
        return [p for p in self.imported if p.approximate]

    def summary(self) -> str:
        lines = [f"{self.source}: {self.total} items, {len(self.imported)} imported "
                 f"({len(self.approximate)} approximate), {len(self.unmapped)} NOT mapped"]
        for c in CATEGORIES:
            n = sum(p.category == c for p in self.imported)
            lines.append(f"  {c}: {n}/{self.counts.get(c, 0)} -> {self.written.get(c, '-')}")
        for p in self.approximate:
            lines.append(f"  approximate: {p.id} (system_prompts[{p.index}]) {p.upstream_judge} -> {p.judge} {p.args}")
        for u in self.unmapped:
            lines.append(f"  UNMAPPED: {u.line()}")
        return "\n".join(lines)


# ---- AST helpers ------------------------------------------------------------------------------
class _Rename(ast.NodeTransformer):
    def __init__(self, old: str):
        self.old = old

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            return ast.copy_location(ast.Name(id="x", ctx=node.ctx), node)
        return node


def _const_str(node: ast.AST) -> str | None:
    """A string literal, or a '+' concatenation of literals."""
    match node:
        case ast.Constant(value=str() as s):
            return s
        case ast.BinOp(left=l, op=ast.Add(), right=r):
            a, b = _const_str(l), _const_str(r)
            return a + b if a is not None and b is not None else None
        case ast.JoinedStr(values=vals) if all(isinstance(v, ast.Constant) for v in vals):
            return "".join(str(v.value) for v in vals)
    return None


def _const_num(node: ast.AST) -> float | int | None:
    match node:
        case ast.Constant(value=bool()):
            return None
        case ast.Constant(value=int() | float() as v):
            return v
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as v)) if not isinstance(v, bool):
            return -v
    return None


def _const_str_list(node: ast.AST) -> list[str] | None:
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        out = [_const_str(e) for e in node.elts]
        return out if out and all(s is not None for s in out) else None  # type: ignore[return-value]
    return None


def _subject(node: ast.AST) -> str | None:
    """'exact' for x (or x.strip()), 'lower' for x.lower()/x.casefold(), 'upper' for x.upper(); else None."""
    match node:
        case ast.Name(id="x"):
            return "exact"
        case ast.Call(func=ast.Attribute(value=inner, attr=("strip" | "lstrip" | "rstrip")), args=[], keywords=[]):
            return _subject(inner)
        case ast.Call(func=ast.Attribute(value=inner, attr=("lower" | "casefold")), args=[], keywords=[]):
            return "lower" if _subject(inner) else None
        case ast.Call(func=ast.Attribute(value=inner, attr="upper"), args=[], keywords=[]):
            return "upper" if _subject(inner) else None
    return None


def _counter(node: ast.AST) -> str | None:
    """'words' or 'sentences' for an expression counting them in x."""
    match node:
        case ast.Call(func=ast.Name(id=name), args=[arg], keywords=[]) if name in _WORD_COUNTERS and _subject(arg):
            return "words"
        case ast.Call(func=ast.Name(id=name), args=[arg], keywords=[]) if name in _SENT_COUNTERS - {"sent_tokenize", "split_into_sentences"} and _subject(arg):
            return "sentences"
        case ast.Call(func=ast.Name(id="len"), args=[ast.Call(func=ast.Attribute(value=arg, attr="split"), args=[], keywords=[])]) if _subject(arg):
            return "words"
        case ast.Call(func=ast.Name(id="len"), args=[ast.Call(func=ast.Name(id=name), args=[arg])]) if name in _SENT_COUNTERS and _subject(arg):
            return "sentences"
    return None


def _unwrap(node: ast.AST) -> ast.AST:
    """Strip int(...)/float(...)/bool(...) casts (upstream turns booleans into scores that way)."""
    while (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "float", "bool")
           and len(node.args) == 1 and not node.keywords):
        node = node.args[0]
    return node


def _case_args(subject: str) -> dict:
    return {"case_sensitive": subject == "exact"}


_MC_RE = re.compile(r"^\(([A-H])\)$")


# ---- recognised shapes -----------------------------------------------------------------------------
def _shape_startswith(b: ast.AST) -> JudgeMapping | None:
    match b:
        case ast.Call(func=ast.Attribute(value=subj, attr="startswith"), args=[s], keywords=[]):
            sub, prefix = _subject(subj), _const_str(s)
            if sub is None or not prefix:
                return None
            if len(prefix) == 1 and prefix.isalpha():
                return JudgeMapping("starts_with_letter", {"letter": prefix, **_case_args(sub)}, True, "x.startswith(letter)")
            return JudgeMapping("starts_with", {"prefix": prefix, **_case_args(sub)}, False, "x.startswith(prefix)")
        case ast.Call(func=ast.Attribute(value=subj, attr="endswith"), args=[s], keywords=[]):
            sub, suffix = _subject(subj), _const_str(s)
            if sub is None or not suffix:
                return None
            return JudgeMapping("ends_with", {"suffix": suffix, **_case_args(sub)}, False, "x.endswith(suffix)")
    return None


def _shape_in(b: ast.AST) -> JudgeMapping | None:
    match b:
        case ast.Compare(left=lit, ops=[ast.In() | ast.NotIn() as op], comparators=[subj]):
            s, sub = _const_str(lit), _subject(subj)
            if not s or sub is None:
                return None
            if isinstance(op, ast.In):
                m = _MC_RE.match(s)
                if m:
                    return JudgeMapping("multiple_choice", {"letter": m.group(1)}, True, "'(B)' in x")
                return JudgeMapping("contains", {"substring": s, **_case_args(sub)}, False, "'s' in x")
            if len(s) == 1 and s.isalpha():
                return JudgeMapping("letter_absent", {"letter": s, **_case_args(sub)}, False, "'c' not in x")
            return JudgeMapping("not_contains", {"substring": s, **_case_args(sub)}, False, "'s' not in x")
    return None


def _shape_count_zero(b: ast.AST) -> JudgeMapping | None:
    match b:
        case ast.Compare(left=ast.Call(func=ast.Attribute(value=subj, attr="count"), args=[lit]), ops=[op], comparators=[num]):
            s, sub, n = _const_str(lit), _subject(subj), _const_num(num)
            if not s or sub is None or n is None:
                return None
            if isinstance(op, ast.Eq) and n == 0:
                if len(s) == 1 and s.isalpha():
                    return JudgeMapping("letter_absent", {"letter": s, **_case_args(sub)}, False, "x.count(c) == 0")
                return JudgeMapping("not_contains", {"substring": s, **_case_args(sub)}, False, "x.count(s) == 0")
            if isinstance(op, (ast.GtE, ast.Gt)) and len(s) == 1 and s.isalpha() and isinstance(n, int):
                k = n if isinstance(op, ast.GtE) else n + 1
                if k >= 1:
                    return JudgeMapping("letter_count_at_least", {"letter": s, "n": k, **_case_args(sub)}, True, "x.count(c) >= n")
    return None


def _shape_count_eq(b: ast.AST) -> JudgeMapping | None:
    match b:
        case ast.Compare(left=left, ops=[ast.Eq()], comparators=[num]):
            kind, n = _counter(left), _const_num(num)
            if kind is None or not isinstance(n, int) or n < 1:
                return None
            if kind == "words":
                if n == 1:
                    return JudgeMapping("one_word", {}, False, "count_words(x) == 1")
                return JudgeMapping("word_count_close", {"n": n}, True, "count_words(x) == n")
            return JudgeMapping("sentence_count", {"n": n}, True, "count_sentences(x) == n")
    return None


def _shape_closeness(b: ast.AST) -> JudgeMapping | None:
    """1 - abs(count(x) - N) / N"""
    match b:
        case ast.BinOp(left=one, op=ast.Sub(), right=ast.BinOp(
                left=ast.Call(func=ast.Name(id="abs"), args=[ast.BinOp(left=cnt, op=ast.Sub(), right=n1)]),
                op=ast.Div(), right=n2)):
            kind, a, c, d = _counter(cnt), _const_num(one), _const_num(n1), _const_num(n2)
            if kind and a == 1 and isinstance(c, int) and c == d and c >= 1:
                judge = "word_count_close" if kind == "words" else "sentence_count"
                return JudgeMapping(judge, {"n": c}, False, "1 - abs(count(x) - n) / n")
    return None


def _shape_case(b: ast.AST) -> JudgeMapping | None:
    match b:
        case ast.Call(func=ast.Attribute(value=subj, attr="isupper"), args=[]) if _subject(subj) == "exact":
            return JudgeMapping("uppercase_fraction", {}, True, "x.isupper()")
        case ast.Call(func=ast.Attribute(value=subj, attr="islower"), args=[]) if _subject(subj) == "exact":
            return JudgeMapping("lowercase_fraction", {}, True, "x.islower()")
        case ast.Compare(left=l, ops=[ast.Eq()], comparators=[r]):
            pair = {_subject(l), _subject(r)}
            if pair == {"exact", "upper"}:
                return JudgeMapping("uppercase_fraction", {}, True, "x.upper() == x")
            if pair == {"exact", "lower"}:
                return JudgeMapping("lowercase_fraction", {}, True, "x.lower() == x")
    return None


def _shape_helper(b: ast.AST) -> JudgeMapping | None:
    match b:
        case ast.Call(func=ast.Name(id=name), args=[arg], keywords=[]) if name in HELPERS_1 and _subject(arg):
            judge, args, approx = HELPERS_1[name]
            return JudgeMapping(judge, dict(args), approx, f"{name}(x)")
        case ast.Call(func=ast.Name(id="get_sentiment"), args=[arg, kind], keywords=[]) if _subject(arg):
            k = _const_str(kind)
            if k in _SENTIMENT_KINDS:
                return JudgeMapping("sentiment", {"kind": _SENTIMENT_KINDS[k]}, True, "get_sentiment(x, kind)")
    return None


def _generator_words(node: ast.AST) -> tuple[list[str], str] | None:
    """(words, subject) for `w in x.lower() for w in [...]` (generator or list comprehension)."""
    match node:
        case ast.GeneratorExp(elt=elt, generators=[ast.comprehension(target=ast.Name(id=var), iter=it, ifs=[])]) | \
             ast.ListComp(elt=elt, generators=[ast.comprehension(target=ast.Name(id=var), iter=it, ifs=[])]):
            words = _const_str_list(it)
            match elt:
                case ast.Compare(left=ast.Name(id=v), ops=[ast.In()], comparators=[subj]) if v == var and _subject(subj) and words:
                    return words, _subject(subj)  # type: ignore[return-value]
    return None


def _shape_any_all(b: ast.AST) -> JudgeMapping | None:
    neg = False
    if isinstance(b, ast.UnaryOp) and isinstance(b.op, ast.Not):
        neg, b = True, b.operand
    match b:
        case ast.Call(func=ast.Name(id=("any" | "all") as fn), args=[gen], keywords=[]):
            found = _generator_words(gen)
            if not found:
                return None
            words, sub = found
            if fn == "any" and not neg:
                return JudgeMapping("contains_any", {"words": words, **_case_args(sub)}, True, "any(w in x for w in [...])")
            if fn == "any" and neg:
                return JudgeMapping("forbidden_words", {"words": words}, True, "not any(w in x for w in [...])")
            if fn == "all" and not neg:
                return JudgeMapping("target_words_present", {"words": words}, True, "all(w in x for w in [...])")
    return None


def _shape_first_last(b: ast.AST) -> JudgeMapping | None:
    def split_index(n: ast.AST) -> int | None:
        match n:
            case ast.Subscript(value=ast.Call(func=ast.Attribute(value=subj, attr="split"), args=[]), slice=idx) if _subject(subj):
                return _const_num(idx)  # type: ignore[return-value]
        return None

    match b:
        case ast.Compare(left=l, ops=[ast.Eq()], comparators=[r]):
            if {split_index(l), split_index(r)} == {0, -1}:
                return JudgeMapping("first_word_equals_last", {}, True, "x.split()[0] == x.split()[-1]")
    return None


#: Recognised judge-expression shapes, tried in order: (name, matcher).
SHAPES: list[tuple[str, Callable[[ast.AST], JudgeMapping | None]]] = [
    ("startswith/endswith", _shape_startswith),
    ("substring in/not in", _shape_in),
    ("count of a letter", _shape_count_zero),
    ("word/sentence count ==", _shape_count_eq),
    ("1 - abs(count - n)/n", _shape_closeness),
    ("case", _shape_case),
    ("helper call", _shape_helper),
    ("any/all keywords", _shape_any_all),
    ("first word == last word", _shape_first_last),
]


def map_judge(body: ast.AST) -> JudgeMapping | None:
    """The registry judge for a lambda body (its argument renamed to ``x``), or None."""
    body = _unwrap(body)
    for _, matcher in SHAPES:
        m = matcher(body)
        if m is not None:
            return m
    return None


# ---- conversion ----------------------------------------------------------------------------------
def _find_list(tree: ast.Module, variable: str) -> ast.List | ast.Tuple | None:
    found = None
    for node in tree.body:
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == variable for t in targets) and isinstance(value, (ast.List, ast.Tuple)):
            found = value  # the last assignment wins, as it would at run time
    return found


def _category_ranges(counts: dict, total: int, source: Path) -> list[str]:
    unknown = set(counts) - set(CATEGORIES)
    if unknown:
        raise InputError(source, "counts", f"unknown categories {sorted(unknown)} (expected {', '.join(CATEGORIES)})")
    for c, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(source, f"counts.{c}", f"expected a non-negative integer, got {n!r}")
    if sum(counts.get(c, 0) for c in CATEGORIES) != total:
        raise InputError(source, UPSTREAM_VARIABLE,
                         f"has {total} items but the category counts add up to {sum(counts.values())} ({counts})")
    out: list[str] = []
    for c in CATEGORIES:
        out += [c] * counts.get(c, 0)
    return out


def _slug(category: str, k: int) -> str:
    return f"{category.replace('_', '-')}-{k:02d}"


def convert(source: Path, out_dir: Path, counts: dict | None = None) -> ImportReport:
    """Convert the upstream persona file into ``out_dir/<category>.yaml`` (+ ``unmapped.yaml``).

    The files validate with :func:`personadrift.benchmark.personas.load_personas`. Unmappable items are
    listed in the report and in ``unmapped.yaml`` with their prompt, probe and judge source.
    """
    source, out_dir = Path(source), Path(out_dir)
    counts = dict(PAPER_COUNTS if counts is None else counts)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(source, None, f"cannot read file: {e}") from None
    try:
        tree = ast.parse(text, filename=str(source))  # parsed only, never executed
    except SyntaxError as e:
        raise InputError(source, None, f"Python syntax error at line {e.lineno}: {e.msg}") from None
    items = _find_list(tree, UPSTREAM_VARIABLE)
    if items is None:
        raise InputError(source, UPSTREAM_VARIABLE, "no module-level list assignment found")
    cats = _category_ranges(counts, len(items.elts), source)
    report = ImportReport(source=str(source), out_dir=str(out_dir), counts=counts, total=len(items.elts))
    per_cat: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    unmapped_rows: list[dict] = []
    seen_in_cat: dict[str, int] = {c: 0 for c in CATEGORIES}

    for i, elt in enumerate(items.elts):
        cat = cats[i]
        seen_in_cat[cat] += 1
        pid = _slug(cat, seen_in_cat[cat])
        src = ast.get_source_segment(text, elt) or ast.unparse(elt)
        if not isinstance(elt, (ast.Tuple, ast.List)) or len(elt.elts) != 3:
            report.unmapped.append(UnmappedItem(i, cat, "not a (system_prompt, probe, judge) triple", src))
            continue
        sys_node, probe_node, judge_node = elt.elts
        system_prompt, probe = _const_str(sys_node), _const_str(probe_node)
        judge_src = ast.get_source_segment(text, judge_node) or ast.unparse(judge_node)
        item = UnmappedItem(i, cat, "", judge_src, system_prompt, probe)
        if not system_prompt or not probe:
            item.reason = "system prompt or probe is not a plain string literal"
        elif not isinstance(judge_node, ast.Lambda) or len(judge_node.args.args) != 1 or \
                judge_node.args.vararg or judge_node.args.kwarg or judge_node.args.kwonlyargs:
            item.reason = "judge is not a one-argument lambda"
        else:
            body = _Rename(judge_node.args.args[0].arg).visit(copy.deepcopy(judge_node.body))
            mapped = map_judge(body)
            if mapped is None:
                item.reason = "no recognised judge shape"
            else:
                try:
                    check_judge_args(mapped.judge, mapped.args)
                except JudgeSpecError as e:  # a shape produced bad args: report, don't crash
                    item.reason = f"mapped to {mapped.judge} but {e}"
                    mapped = None
            if mapped is not None:
                note = f"Imported from upstream system_prompts[{i}]: {judge_src}"
                if mapped.approximate:
                    note += f" (approximate: shape {mapped.shape!r} mapped to {mapped.judge})"
                judge: dict = {"name": mapped.judge}
                if mapped.args:
                    judge["args"] = mapped.args
                per_cat[cat].append({"id": pid, "category": cat, "system_prompt": system_prompt, "probe": probe,
                                     "judge": judge, "notes": note})
                report.imported.append(ImportedPersona(i, cat, pid, mapped.judge, mapped.args, mapped.approximate, judge_src))
                continue
        report.unmapped.append(item)

    for u in report.unmapped:
        unmapped_rows.append({"index": u.index, "category": u.category, "reason": u.reason,
                              "system_prompt": u.system_prompt, "probe": u.probe, "upstream_judge": u.upstream_judge})

    out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by personadrift.benchmark.upstream from {source.name}; do not edit by hand.\n"
              f"# Upstream: github likenneth/persona_drift (commit e5b57b0), parsed with ast, never executed.\n")
    paths = []
    for c in CATEGORIES:
        p = out_dir / f"{c}.yaml"
        body = {"description": f"Upstream {c} personas ({len(per_cat[c])} of {counts.get(c, 0)} mapped)",
                "personas": per_cat[c]}
        p.write_text(header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
        report.written[c] = str(p)
        paths.append(p)
    (out_dir / "unmapped.yaml").write_text(
        header + "# Upstream items that could not be mapped onto a judge (fix by hand or extend upstream.SHAPES).\n"
        + yaml.safe_dump({"unmapped": unmapped_rows}, sort_keys=False, allow_unicode=True, width=1000),
        encoding="utf-8")
    load_personas(paths)  # the output must validate
    return report


def _parse_counts(s: str) -> dict:
    out = {}
    for part in s.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not v.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected category=count pairs, got {part!r}")
        out[k.strip()] = int(v)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m personadrift.benchmark.upstream SOURCE --out DIR [--counts ...] [--strict]``.

    Exit status: 0 on success (unmapped items are printed), 1 with ``--strict`` when some item
    was not mapped, 2 on an input error.
    """
    ap = argparse.ArgumentParser(prog="personadrift-import-upstream", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="the upstream hundred_system_prompts.py (parsed, never executed)")
    ap.add_argument("--out", type=Path, default=Path("personas/upstream"), help="output directory (default: personas/upstream)")
    ap.add_argument("--counts", type=_parse_counts, default=None,
                    help="category sizes in upstream order, e.g. pattern=29,multiple_choice=27,persona=14,memorization=27,language=3")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any item could not be mapped")
    args = ap.parse_args(argv)
    try:
        report = convert(args.source, args.out, args.counts)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if (args.strict and not report.ok) else 0


if __name__ == "__main__":
    raise SystemExit(main())
