"""The upstream importer: parses the paper's persona file with ast (never executes it)."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from personadrift.errors import InputError
from personadrift.protocol.personas import load_personas
from personadrift.protocol.upstream import (
    UPSTREAM_SHA256,
    ImportReport,
    Untranslatable,
    _Rename,
    convert,
    main,
    translate_judge,
)

FIXTURE = Path(__file__).parent / "fixtures" / "upstream" / "hundred_system_prompts.py"
FIXTURE_SHA = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()


@pytest.fixture
def report(tmp_path) -> ImportReport:
    return convert(FIXTURE, tmp_path / "out", FIXTURE_SHA)


def _sub(words, lowercase=False):
    return {"name": "substring_any", "args": {"substrings": words, "lowercase": lowercase}}


# run.py order: the first item of each list (pattern, multiple_choice, persona, memorization,
# language), then the rest of each list in that order; the category is the list's.
EXPECTED = [
    ("upstream-pattern-01", {"name": "upstream_fraction_starts_with", "args": {"prefix": "q"}}),
    ("upstream-multiple-choice-01", _sub(["B"])),
    ("upstream-persona-01", _sub(["sail"], True)),
    ("upstream-memorization-01", _sub(["two", "2"])),
    ("upstream-language-01", {"name": "upstream_get_french_percentage"}),
    ("upstream-pattern-02", {"name": "reciprocal", "args": {"measure": {"name": "occurrences", "args": {"substring": "o"}}}}),
    ("upstream-pattern-03", {"name": "compare", "args": {"measure": {"name": "sentence_count"}, "op": "==", "value": 1.0}}),
    ("upstream-pattern-04", {"name": "upstream_fraction_of_case_letters", "args": {"upper": True}}),
    ("upstream-pattern-05", {"name": "upstream_is_valid_sentence_word_count", "args": {"pattern": [4, 4]}}),
    ("upstream-pattern-06", {"name": "upstream_sentences_start_with", "args": {"word": "Indeed"}}),
    ("upstream-pattern-07", {"name": "first_token_is", "args": {"token": "Sure"}}),
    ("upstream-pattern-08", {"name": "upstream_does_not_contain", "args": {"words": ["we", "us"]}}),
    ("upstream-pattern-09", {"name": "upstream_fraction_of_text_that_is_a_target", "args": {"wordlist": "one_syllable_words"}}),
    ("upstream-multiple-choice-02", _sub(["no"], True)),
    ("upstream-multiple-choice-03", {"name": "token_any", "args": {"tokens": ["i", "me", "my"], "lowercase": True}}),
    ("upstream-multiple-choice-04", {"name": "upstream_close_to_num", "args": {"target": 5}}),
    ("upstream-persona-02", {"name": "one_minus", "args": {"judge": {
        "name": "upstream_fraction_of_text_that_is_a_target", "args": {"wordlist": "frequent_words"}}}}),
    ("upstream-persona-03", {"name": "affine", "args": {
        "measure": {"name": "vader", "args": {"component": "compound"}}, "scale": -0.5, "offset": 0.5}}),
    ("upstream-persona-04", {"name": "upstream_get_sentiment", "args": {"component": "pos"}}),
    ("upstream-persona-05", {"name": "one_minus", "args": {"judge": {
        "name": "reciprocal", "args": {"measure": {"name": "word_count"}, "power": 1 / 3}}}}),
    ("upstream-memorization-02", {"name": "one_minus", "args": {"judge": _sub(["4711"])}}),
    ("upstream-memorization-03", {"name": "one_minus", "args": {"judge": {
        "name": "upstream_fraction_of_target_words_hit", "args": {"words": ["but"]}}}}),
    ("upstream-memorization-04", _sub(["january", "june", "july"], True)),
    ("upstream-memorization-05", {"name": "all_of", "args": {"judges": [
        _sub(["dinner", "supper"], True), {"name": "one_minus", "args": {"judge": _sub(["lunch"], True)}}]}}),
    ("upstream-language-02", {"name": "all_of", "args": {"judges": [
        _sub(["déjeuner"]), {"name": "compare", "args": {"measure": {"name": "word_count"}, "op": "<", "value": 15.0}}]}}),
]


def test_imports_every_item_in_run_order_with_categories_from_the_lists(report, tmp_path):
    assert report.ok and report.total == 25 and not report.unmapped and not report.problems
    assert report.counts() == {"pattern": 9, "multiple_choice": 4, "persona": 5, "memorization": 5, "language": 2}
    personas = load_personas([tmp_path / "out" / "personas.yaml"])
    assert [(p.id, p.judge_args.to_dict() and {"name": p.judge, "args": p.judge_args.to_dict()} or {"name": p.judge})
            for p in personas] == EXPECTED
    assert [p.run_index for p in report.imported] == list(range(25))
    by_id = {p.id: p for p in personas}
    assert by_id["upstream-memorization-01"].category == "memorization"
    assert by_id["upstream-language-01"].system_prompt == "Réponds toujours en français."
    assert by_id["upstream-multiple-choice-02"].probe == "Should the wetland be drained? Reply only with 'yes' or 'no'."
    note = by_id["upstream-pattern-06"].notes
    assert "pattern_system_prompts[5] (run.py persona 9)" in note and 'sentences_start_with(split_into_sentences(x), "Indeed")' in note


def test_differences_and_quirks_are_in_the_notes_and_the_report(report, tmp_path):
    by_id = {p.id: p for p in load_personas([tmp_path / "out" / "personas.yaml"])}
    assert "DIFFERS from upstream: upstream bug fixed" in by_id["upstream-pattern-06"].notes
    assert "wordfreq's 10,000 most frequent" in by_id["upstream-persona-02"].notes      # nested in one_minus
    assert "vaderSentiment" in by_id["upstream-persona-03"].notes                       # a measure inside affine
    assert "CMU pronouncing dictionary" in by_id["upstream-pattern-09"].notes
    assert "any 'B' anywhere in the reply counts" in by_id["upstream-multiple-choice-01"].notes
    assert "DIFFERS" not in by_id["upstream-memorization-01"].notes
    rep = yaml.safe_load((tmp_path / "out" / "report.yaml").read_text(encoding="utf-8"))
    assert rep["sha256"] == FIXTURE_SHA and rep["total"] == 25 and rep["unmapped"] == []
    rows = {r["id"]: r for r in rep["differences"]}
    assert rows["upstream-pattern-06"]["upstream"] == "pattern_system_prompts[5]" and rows["upstream-pattern-06"]["differs"]
    assert set(rows) == {p.id for p in report.imported if p.differences or p.quirks}
    assert "not the released file" in rep["notices"][0]


def test_the_fixture_is_never_executed(report):
    # The fixture calls sys.exit() at import time; converting it must not run it.
    assert "hundred_system_prompts" not in sys.modules
    assert report.total == 25


def test_anything_new_is_reported_not_dropped(tmp_path):
    text = FIXTURE.read_text(encoding="utf-8")
    text = text.replace('lambda x: close_to_num(x, 5)', 'lambda x: count_vowels(x) > 3')         # unknown helper
    text = text.replace('lambda x: "sail" in x.lower()', 'lambda x: x.count("!")')              # a number, not a score
    text = text.replace("system_prompts = pattern_system_prompts +",
                        "bonus_system_prompts = [('Be brief.', 'Hi?', lambda x: len(x) < 50)]\n"
                        "system_prompts = bonus_system_prompts + pattern_system_prompts +")
    src = tmp_path / "new.py"
    src.write_text(text, encoding="utf-8")
    rep = convert(src, tmp_path / "out", None)
    assert not rep.ok and rep.total == 26 and len(rep.imported) == 23
    assert [(u.list_name, u.list_index) for u in rep.unmapped] == [
        ("bonus_system_prompts", 0), ("persona_system_prompts", 0), ("multiple_choice_system_prompts", 3)]
    assert "not one of the five category lists" in rep.unmapped[0].reason
    assert "x.count('!')" in rep.unmapped[1].reason and "unknown helper count_vowels()" in rep.unmapped[2].reason
    assert rep.unmapped[2].system_prompt.startswith("Answer with the number of letters")
    assert any("bonus_system_prompts" in p for p in rep.problems)
    summary = rep.summary()
    assert "3 NOT mapped" in summary and "UNMAPPED: multiple_choice_system_prompts[3] (multiple_choice)" in summary
    rows = yaml.safe_load((tmp_path / "out" / "report.yaml").read_text(encoding="utf-8"))["unmapped"]
    assert [r["upstream_judge"] for r in rows][1:] == ['lambda x: x.count("!")', "lambda x: count_vowels(x) > 3"]
    assert len(load_personas([tmp_path / "out" / "personas.yaml"])) == 23   # the rest is still written
    assert main([str(src), "--out", str(tmp_path / "o2"), "--sha256", "any", "--strict"]) == 1


def test_the_sha256_is_checked_naming_both_sums(tmp_path, capsys):
    with pytest.raises(InputError) as e:
        convert(FIXTURE, tmp_path / "o")   # default: the released file's sum
    assert FIXTURE_SHA in str(e.value) and UPSTREAM_SHA256 in str(e.value) and "upstream_sha256" in str(e.value)
    with pytest.raises(InputError, match="file not found. Download .*raw.githubusercontent.com/likenneth/persona_drift"):
        convert(tmp_path / "missing.py", tmp_path / "o")
    assert main([str(FIXTURE), "--out", str(tmp_path / "a")]) == 2
    assert "expected " + UPSTREAM_SHA256 in capsys.readouterr().err
    assert main([str(FIXTURE), "--out", str(tmp_path / "b"), "--sha256", FIXTURE_SHA, "--strict"]) == 0
    assert "25 imported, 0 NOT mapped" in capsys.readouterr().out


def test_input_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("pattern_system_prompts = [\n  ('a', 'b', lambda x: \n", encoding="utf-8")
    with pytest.raises(InputError, match="Python syntax error at line"):
        convert(bad, tmp_path / "o", None)
    flat = tmp_path / "flat.py"
    flat.write_text("system_prompts = [('a', 'b', lambda x: 'z' in x)]\n", encoding="utf-8")
    with pytest.raises(InputError, match="pattern_system_prompts: no module-level list"):
        convert(flat, tmp_path / "o", None)


def test_odd_items_are_reported(tmp_path):
    lists = "\n".join(f"{c}_system_prompts = []" for c in ("multiple_choice", "persona", "memorization", "language"))
    src = tmp_path / "odd.py"
    src.write_text(
        "def judge(x):\n    return 1\n"
        "pattern_system_prompts = [\n"
        "  ('a', 'b'),\n"                                   # not a triple
        "  (PROMPT, 'b', lambda x: 'z' in x),\n"           # prompt is not a literal
        "  ('a', 'b', judge),\n"                           # a named function
        "  ('a', 'b', lambda x, y: 'z' in x),\n"           # two arguments
        "  ('a', 'b', lambda x: close_to_num(x, -3)),\n"   # bad argument value
        "  ('a', 'b', lambda x: does_not_contain(x, WORDS)),\n"  # unknown module-level name
        "]\n" + lists + "\n", encoding="utf-8")
    rep = convert(src, tmp_path / "o", None)
    reasons = [u.reason for u in rep.unmapped]
    assert len(reasons) == 6 and not rep.imported
    assert "triple" in reasons[0] and "literal" in reasons[1] and "lambda" in reasons[2] and "lambda" in reasons[3]
    assert "invalid judge" in reasons[4] and "args.target" in reasons[4]
    assert "WORDS is not a literal" in reasons[5]
    assert any("not a sum of named lists" in p for p in rep.problems)


def _body(src: str) -> ast.AST:
    lam = ast.parse(src, mode="eval").body
    assert isinstance(lam, ast.Lambda)
    return _Rename(lam.args.args[0].arg).visit(lam.body)


@pytest.mark.parametrize("src,spec", [
    ('lambda t: float("Tennis" in t)', _sub(["Tennis"])),
    ('lambda x: not "a" in x', {"name": "one_minus", "args": {"judge": _sub(["a"])}}),
    ('lambda x: "a" in x or "b" in x.lower()', {"name": "any_of", "args": {"judges": [_sub(["a"]), _sub(["b"], True)]}}),
    ('lambda x: "w" in x.split()', {"name": "token_any", "args": {"tokens": ["w"], "lowercase": False}}),
    ("lambda x: 20 > len(x.split())", {"name": "compare", "args": {"measure": {"name": "word_count"}, "op": "<", "value": 20.0}}),
    ("lambda x: len(x) <= 100", {"name": "compare", "args": {"measure": {"name": "characters"}, "op": "<=", "value": 100.0}}),
    ("lambda x: 1 / (x.count('!') + 1)", {"name": "reciprocal", "args": {"measure": {"name": "occurrences", "args": {"substring": "!"}}}}),
    ("lambda x: get_sentiment(x, 'neg') * 2 - 1", {"name": "affine", "args": {
        "measure": {"name": "vader", "args": {"component": "neg"}}, "scale": 2.0, "offset": -1.0}}),
    ("lambda x: 1 - get_sentiment(x, 'pos')", {"name": "one_minus", "args": {"judge": {
        "name": "upstream_get_sentiment", "args": {"component": "pos"}}}}),
    ('lambda x: all(w in x for w in ["a", "b"])', {"name": "all_of", "args": {"judges": [_sub(["a"]), _sub(["b"])]}}),
    ("lambda x: fraction_of_case_letters(x, False)", {"name": "upstream_fraction_of_case_letters", "args": {"upper": False}}),
])
def test_translations(src, spec):
    assert translate_judge(_body(src)) == spec


@pytest.mark.parametrize("src,reason", [
    ('lambda x: x.count("!")', "expression x.count('!')"),
    ("lambda x: json.loads(x)", "expression"),
    ("lambda x: is_haiku(x)", "unknown helper is_haiku()"),
    ('lambda x: y.startswith("a")', "expression"),
    ("lambda x: fraction_digit(x.lower())", "not the reply"),
    ("lambda x: sentences_start_with(x, 'Yes')", "not split_into_sentences(x)"),
    ("lambda x: does_not_contain(x, frequent_words_list)", "module word list"),
    ("lambda x: len(x.split()) == len(x)", "comparison"),
])
def test_untranslatable(src, reason):
    with pytest.raises(Untranslatable, match=re.escape(reason)):
        translate_judge(_body(src))


REAL_FILE = os.environ.get("PERSONADRIFT_UPSTREAM_FILE", "")


@pytest.mark.skipif(not REAL_FILE, reason="set PERSONADRIFT_UPSTREAM_FILE to the paper's hundred_system_prompts.py")
def test_the_real_upstream_file_imports_completely(tmp_path):
    rep = convert(REAL_FILE, tmp_path / "out")   # checks the released file's sha256
    assert rep.ok and rep.total == 100 and len(rep.imported) == 100 and not rep.notices
    assert rep.counts() == {"pattern": 29, "multiple_choice": 27, "persona": 14, "memorization": 27, "language": 3}
    assert [p.category for p in rep.imported[:5]] == ["pattern", "multiple_choice", "persona", "memorization", "language"]
    assert len(load_personas([tmp_path / "out" / "personas.yaml"])) == 100
