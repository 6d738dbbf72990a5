"""The upstream importer: parses the paper's persona file with ast (never executes it)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from personadrift.benchmark.personas import CATEGORIES, load_personas
from personadrift.benchmark.upstream import (
    SHAPES,
    ImportReport,
    convert,
    main,
    map_judge,
)
from personadrift.errors import InputError

FIXTURE = Path(__file__).parent / "fixtures" / "upstream" / "hundred_system_prompts.py"
COUNTS = {"pattern": 5, "multiple_choice": 2, "persona": 3, "memorization": 2, "language": 1}


@pytest.fixture
def report(tmp_path) -> ImportReport:
    return convert(FIXTURE, tmp_path / "out", COUNTS)


def test_converts_the_fixture_and_keeps_upstream_order(report, tmp_path):
    out = tmp_path / "out"
    assert report.total == 13 and len(report.imported) == 11
    personas = load_personas([out / f"{c}.yaml" for c in CATEGORIES])
    assert [p.id for p in personas] == [p.id for p in report.imported]
    assert [p.index for p in report.imported] == sorted(p.index for p in report.imported)
    got = {p.id: (p.category, p.judge, p.judge_args.to_dict()) for p in personas}
    assert got == {
        "pattern-01": ("pattern", "starts_with_letter", {"letter": "b", "case_sensitive": False}),
        "pattern-02": ("pattern", "word_count_close", {"n": 8}),
        "pattern-03": ("pattern", "uppercase_fraction", {}),
        "pattern-04": ("pattern", "ends_with", {"suffix": "?", "case_sensitive": True}),
        "multiple-choice-01": ("multiple_choice", "multiple_choice", {"letter": "B"}),
        "multiple-choice-02": ("multiple_choice", "multiple_choice", {"letter": "A"}),
        "persona-01": ("persona", "contains_any", {"words": ["bird", "binoculars", "feathers"], "case_sensitive": False}),
        "persona-02": ("persona", "sentiment", {"kind": "positive"}),
        "memorization-01": ("memorization", "contains", {"substring": "ottoline", "case_sensitive": False}),
        "memorization-02": ("memorization", "not_contains", {"substring": "apple", "case_sensitive": False}),
        "language-01": ("language", "french_probability", {}),
    }
    p = {x.id: x for x in personas}
    assert p["pattern-02"].system_prompt == "Reply in exactly eight words, never more and never fewer."
    assert "system_prompts[1]" in p["pattern-02"].notes and "count_num_words" in p["pattern-02"].notes
    assert "approximate" in p["pattern-03"].notes and "approximate" not in p["pattern-02"].notes
    assert p["language-01"].system_prompt.startswith("Tu parles toujours en français")
    # the imported judges behave like the upstream lambdas on clear cases
    assert p["pattern-01"].score("Buongiorno! Visit the Colosseum.") == 1.0
    assert p["pattern-01"].score("Visit the Colosseum.") == 0.0
    assert p["multiple-choice-01"].score("(B) an owl") == 1.0
    assert p["memorization-02"].score("A cherry.") == 1.0 and p["memorization-02"].score("An apple.") == 0.0


def test_unmappable_items_are_reported_not_dropped(report, tmp_path, capsys):
    assert not report.ok
    assert [(u.index, u.category) for u in report.unmapped] == [(4, "pattern"), (9, "persona")]
    assert report.unmapped[0].upstream_judge == 'lambda x: x.count("!")'
    assert report.unmapped[1].system_prompt == "You speak only in haiku." and report.unmapped[1].probe == "Describe autumn."
    text = report.summary()
    assert "2 NOT mapped" in text and "UNMAPPED: system_prompts[9] (persona)" in text and "is_haiku" in text
    rows = yaml.safe_load((tmp_path / "out" / "unmapped.yaml").read_text(encoding="utf-8"))["unmapped"]
    assert [r["index"] for r in rows] == [4, 9] and rows[1]["upstream_judge"] == "lambda x: is_haiku(x)"
    assert len(report.imported) + len(report.unmapped) == report.total


def test_the_fixture_is_never_executed(report):
    # The fixture calls sys.exit() at import time; converting it must not run it.
    assert "hundred_system_prompts" not in sys.modules
    assert report.total == 13


def test_main_prints_the_report_and_sets_the_exit_status(tmp_path, capsys):
    counts = ",".join(f"{k}={v}" for k, v in COUNTS.items())
    assert main([str(FIXTURE), "--out", str(tmp_path / "a"), "--counts", counts]) == 0
    out = capsys.readouterr().out
    assert "11 imported" in out and "UNMAPPED: system_prompts[4] (pattern)" in out
    assert main([str(FIXTURE), "--out", str(tmp_path / "b"), "--counts", counts, "--strict"]) == 1
    capsys.readouterr()
    assert main([str(FIXTURE), "--out", str(tmp_path / "c")]) == 2  # paper counts sum to 100, not 13
    assert "has 13 items but the category counts add up to 100" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.py"), "--out", str(tmp_path / "d")]) == 2


def test_input_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("system_prompts = [\n  ('a', 'b', lambda x: \n", encoding="utf-8")
    with pytest.raises(InputError, match="Python syntax error at line"):
        convert(bad, tmp_path / "o")
    none = tmp_path / "none.py"
    none.write_text("prompts = []\n", encoding="utf-8")
    with pytest.raises(InputError, match="system_prompts: no module-level list"):
        convert(none, tmp_path / "o")
    with pytest.raises(InputError, match="unknown categories"):
        convert(FIXTURE, tmp_path / "o", {**COUNTS, "poetry": 0})


def test_odd_items_are_reported(tmp_path):
    src = tmp_path / "odd.py"
    src.write_text(
        "def judge(x):\n    return 1\n"
        "system_prompts = [\n"
        "  ('a', 'b'),\n"                                   # not a triple
        "  (PROMPT, 'b', lambda x: 'z' in x),\n"           # prompt is not a literal
        "  ('a', 'b', judge),\n"                           # a named function
        "  ('a', 'b', lambda x, y: 'z' in x),\n"           # two arguments
        "  ('a', 'b', lambda x: count_num_words(x) == 0),\n"  # bad argument value
        "]\n", encoding="utf-8")
    rep = convert(src, tmp_path / "o", {"pattern": 5, "multiple_choice": 0, "persona": 0, "memorization": 0, "language": 0})
    reasons = [u.reason for u in rep.unmapped]
    assert len(reasons) == 5 and not rep.imported
    assert "triple" in reasons[0] and "literal" in reasons[1] and "lambda" in reasons[2] and "lambda" in reasons[3]
    assert "no recognised judge shape" in reasons[4]


def _body(src: str) -> ast.AST:
    lam = ast.parse(src, mode="eval").body
    assert isinstance(lam, ast.Lambda)
    from personadrift.benchmark.upstream import _Rename

    return _Rename(lam.args.args[0].arg).visit(lam.body)


@pytest.mark.parametrize("src,judge,args", [
    ('lambda x: x.startswith("Dear")', "starts_with", {"prefix": "Dear", "case_sensitive": True}),
    ('lambda t: float("Tennis" in t)', "contains", {"substring": "Tennis", "case_sensitive": True}),
    ('lambda x: "e" not in x.lower()', "letter_absent", {"letter": "e", "case_sensitive": False}),
    ('lambda x: x.lower().count("e") == 0', "letter_absent", {"letter": "e", "case_sensitive": False}),
    ('lambda x: x.count("z") >= 5', "letter_count_at_least", {"letter": "z", "n": 5, "case_sensitive": True}),
    ("lambda x: count_num_words(x) == 10", "word_count_close", {"n": 10}),
    ("lambda x: len(x.split()) == 1", "one_word", {}),
    ("lambda x: count_num_sentences(x) == 3", "sentence_count", {"n": 3}),
    ("lambda x: len(sent_tokenize(x)) == 2", "sentence_count", {"n": 2}),
    ("lambda x: 1 - abs(count_num_sentences(x) - 4) / 4", "sentence_count", {"n": 4}),
    ("lambda x: x.upper() == x", "uppercase_fraction", {}),
    ("lambda x: x == x.lower()", "lowercase_fraction", {}),
    ("lambda x: x.islower()", "lowercase_fraction", {}),
    ("lambda x: get_french_percentage(x)", "french_probability", {}),
    ('lambda x: get_sentiment(x, "neg")', "sentiment", {"kind": "negative"}),
    ('lambda x: not any(w in x.lower() for w in ["no", "never"])', "forbidden_words", {"words": ["no", "never"]}),
    ('lambda x: all([w in x.lower() for w in ["red", "blue"]])', "target_words_present", {"words": ["red", "blue"]}),
    ("lambda x: x.split()[0] == x.split()[-1]", "first_word_equals_last", {}),
])
def test_recognised_shapes(src, judge, args):
    m = map_judge(_body(src))
    assert m is not None and (m.judge, m.args) == (judge, args)


@pytest.mark.parametrize("src", [
    'lambda x: x.count("!")',
    "lambda x: json.loads(x)",
    "lambda x: len(x) < 100",
    'lambda x: "a" in x or "b" in x',
    "lambda x: is_haiku(x)",
    'lambda x: y.startswith("a")',
])
def test_unrecognised_shapes(src):
    assert map_judge(_body(src)) is None


def test_shape_table_is_documented():
    assert len(SHAPES) >= 8 and all(isinstance(n, str) and callable(f) for n, f in SHAPES)
