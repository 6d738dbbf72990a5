"""Judges: hand-written compliant/non-compliant answers, argument checking, robustness, determinism."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personadrift.protocol import judges
from personadrift.protocol.judges import (
    FLUENCY_GATE,
    JudgeSpecError,
    check_judge_args,
    english_fluency,
    gate,
    judge_names,
    register,
    run_judge,
)
from personadrift.protocol.judges.paper import UpstreamExpressionError

# Valid arguments for every judge (used by the property tests; must cover the registry).
VALID_ARGS = {
    "alliteration": {}, "alternating_case_words": {}, "alternating_word_lengths": {"short_max": 3},
    "bracketed_word_list": {}, "contains": {"substring": "tennis"}, "contains_any": {"words": ["tennis", "racket"]},
    "contains_at_least": {"words": ["a", "b", "c"], "n": 2}, "dash_separated_characters": {}, "digit_fraction": {},
    "doubled_words": {}, "ends_with": {"suffix": "?"}, "english_fluency": {},
    "filler_every_other_word": {"word": "um"}, "first_person": {}, "first_word_equals_last": {},
    "forbidden_words": {"words": ["the"]}, "french_gloss_alternation": {}, "french_probability": {},
    "increasing_sentence_lengths": {}, "json_keys": {"keys": ["name", "age"]}, "letter_absent": {"letter": "e"},
    "letter_count_at_least": {"letter": "z", "n": 5}, "lowercase_fraction": {}, "no_uppercase": {},
    "multiple_choice": {"letter": "B", "options": ["a dog", "a cat"]}, "non_letter_fraction": {},
    "not_contains": {"substring": "AI"}, "number_close": {"target": 42}, "one_syllable_fraction": {},
    "one_word": {}, "past_tense_fraction": {}, "question_fraction": {}, "rare_word_fraction": {},
    "repeated_word_fraction": {}, "sentence_count": {"n": 3}, "sentence_word_pattern": {"pattern": [3, 5]},
    "sentences_start_with": {"word": "Indeed"}, "sentiment": {"kind": "negative"}, "slang_fraction": {},
    "starts_with": {"prefix": "Hello"}, "starts_with_letter": {"letter": "A"}, "starts_with_word": {"word": "Well"},
    "target_word_fraction": {"words": ["yes", "no"]}, "target_words_present": {"words": ["red", "blue"]},
    "unique_word_fraction": {}, "uppercase_fraction": {}, "word_count_close": {"n": 10},
}

# Valid arguments for the judges with upstream's semantics and the composition judges (their
# hand-written cases are in test_upstream_judges.py). They score empty replies themselves and
# may raise UpstreamExpressionError where upstream's expression raises.
_SUB = {"name": "substring_any", "args": {"substrings": ["tennis"]}}
SEMANTICS_ARGS = {
    "upstream_fraction_starts_with": {"prefix": "a"}, "upstream_fraction_of_case_letters": {"upper": True},
    "upstream_count_num_words_one": {}, "upstream_fraction_non_letter": {}, "upstream_fraction_digit": {},
    "upstream_are_first_and_last_words_same": {}, "upstream_count_num_words": {},
    "upstream_get_sentiment": {"component": "pos"}, "upstream_count_plural_nouns": {},
    "upstream_is_valid_json_format": {}, "upstream_is_valid_list_format": {}, "upstream_is_valid_dash_format": {},
    "upstream_does_not_contain": {"words": ["we", "us"]},
    "upstream_fraction_of_text_that_is_a_target": {"wordlist": "one_syllable_words"},
    "upstream_fraction_of_target_words_hit": {"words": ["lamp"]}, "upstream_sentences_start_with": {"word": "Yes"},
    "upstream_is_alliteration": {}, "upstream_is_valid_sentence_word_count": {"pattern": [5, 5, 5]},
    "upstream_is_increasing_sentence_word_count": {}, "upstream_is_valid_alternating_french_english": {},
    "upstream_close_to_num": {"target": 9}, "upstream_fraction_alter_upper_lower": {}, "upstream_teenager_score": {},
    "upstream_fraction_past_tense_verbs": {}, "upstream_fraction_unique_words": {}, "upstream_fraction_repeated_words": {},
    "upstream_contains_color_and_number": {}, "upstream_fraction_alter_short_long": {}, "upstream_fraction_alter_banana": {},
    "upstream_fraction_sentences_that_are_questions": {}, "upstream_is_valid_repeat": {},
    "upstream_get_french_percentage": {}, "substring_any": {"substrings": ["tennis"], "lowercase": True},
    "token_any": {"tokens": ["i"], "lowercase": True}, "first_token_is": {"token": "Yes"},
    "one_minus": {"judge": _SUB}, "all_of": {"judges": [_SUB, {"name": "upstream_fraction_digit"}]},
    "any_of": {"judges": [_SUB, {"name": "one_word"}]},
    "affine": {"measure": {"name": "vader", "args": {"component": "compound"}}, "scale": -0.5, "offset": 0.5},
    "compare": {"measure": {"name": "word_count"}, "op": "<", "value": 20},
    "reciprocal": {"measure": {"name": "occurrences", "args": {"substring": "e"}}},
}

# (judge, args, text, expected score); a tuple expected means an inclusive range.
CASES = [
    # starts_with_letter / word / prefix / ends_with
    ("starts_with_letter", {"letter": "A"}, "A fine day to visit.", 1.0),
    ("starts_with_letter", {"letter": "A"}, '  "**Absolutely**, go!', 1.0),
    ("starts_with_letter", {"letter": "A"}, "Be sure to go.", 0.0),
    ("starts_with_letter", {"letter": "a", "case_sensitive": True}, "Apple pie.", 0.0),
    ("starts_with_word", {"word": "Greetings"}, "Greetings! Go to the Louvre.", 1.0),
    ("starts_with_word", {"word": "Greetings"}, "Greeting cards are nice.", 0.0),
    ("starts_with_word", {"word": "good morning"}, "Good morning, friend.", 1.0),
    ("starts_with", {"prefix": "Dear"}, "  Dear friend", 1.0),
    ("starts_with", {"prefix": "Dear", "case_sensitive": True}, "dear friend", 0.0),
    ("ends_with", {"suffix": "?"}, "Shall we go? ", 1.0),
    ("ends_with", {"suffix": "?"}, "We shall go.", 0.0),
    # letters
    ("letter_absent", {"letter": "e"}, "Go to a park and stroll along a canal.", 1.0),
    ("letter_absent", {"letter": "e"}, "See the tower.", 0.0),
    ("letter_absent", {"letter": "e", "case_sensitive": True}, "ELK", 1.0),
    ("letter_count_at_least", {"letter": "z", "n": 4}, "Zany zebras zigzag.", 1.0),
    ("letter_count_at_least", {"letter": "z", "n": 4}, "A lazy day.", 0.25),
    ("letter_count_at_least", {"letter": "z", "n": 4}, "Nothing here.", 0.0),
    ("alliteration", {}, "Peter picked purple plums.", 1.0),
    ("alliteration", {}, "Visit the Louvre and eat bread.", (0.1, 0.25)),
    ("alliteration", {"letter": "s"}, "Silly snakes sleep soundly, mostly.", 0.8),
    # sentences and case
    ("sentence_count", {"n": 1}, "Visit the Louvre and walk along the river.", 1.0),
    ("sentence_count", {"n": 1}, "Visit the Louvre. Then walk. Then eat.", 0.0),
    ("sentence_count", {"n": 3}, "One. Two. Three. Four.", pytest.approx(2 / 3)),
    ("sentence_count", {"n": 2}, "Dr. Smith went home. He slept.", 1.0),
    ("uppercase_fraction", {}, "HELLO THERE!", 1.0),
    ("uppercase_fraction", {}, "hello there", 0.0),
    ("uppercase_fraction", {}, "HEllo", 0.4),
    ("lowercase_fraction", {}, "all lower case here.", 1.0),
    ("lowercase_fraction", {}, "ALL UPPER", 0.0),
    ("question_fraction", {}, "Why not? Have you been?", 1.0),
    ("question_fraction", {}, "Go now. Why not?", 0.5),
    ("question_fraction", {}, "Go now. Eat well.", 0.0),
    ("non_letter_fraction", {}, "🗼🥐 123!", 1.0),
    ("non_letter_fraction", {}, "Visit the tower", 0.0),
    ("digit_fraction", {}, "4 7 1889", 1.0),
    ("digit_fraction", {}, "four days", 0.0),
    ("sentence_word_pattern", {"pattern": [3, 5]}, "I love Paris. It is a great city to visit. Go there now.", pytest.approx(2 / 3)),
    ("sentence_word_pattern", {"pattern": [3, 5]}, "I love Paris.", 0.5),
    ("sentence_word_pattern", {"pattern": [3, 5]}, "Paris is great for tourists in summer.", 0.0),
    ("increasing_sentence_lengths", {}, "Go. See it now. Then climb the big tower.", 1.0),
    ("increasing_sentence_lengths", {}, "Climb the big tower today. See it. Go.", 0.0),
    ("increasing_sentence_lengths", {}, "Only one sentence here.", 0.0),
    ("alternating_case_words", {}, "VISIT the LOUVRE now", 1.0),
    ("alternating_case_words", {}, "visit the louvre now", 0.0),
    ("alternating_case_words", {}, "VISIT the louvre NOW", pytest.approx(2 / 3)),
    ("dash_separated_characters", {}, "H-e-l-l-o w-o-r-l-d!", 1.0),
    ("dash_separated_characters", {}, "Hello world", 0.0),
    ("dash_separated_characters", {}, "H-i there", 0.5),
    ("bracketed_word_list", {}, "[Louvre, Eiffel, croissants]", 1.0),
    ("bracketed_word_list", {}, "Here you go: [Louvre, Eiffel]", 0.5),
    ("bracketed_word_list", {}, "[the Louvre museum, Eiffel]", 0.0),
    ("bracketed_word_list", {}, "Louvre, Eiffel, croissants", 0.0),
    # lexical
    ("word_count_close", {"n": 10}, "one two three four five six seven eight nine ten", 1.0),
    ("word_count_close", {"n": 10}, "one two three four five", 0.5),
    ("word_count_close", {"n": 10}, " ".join(["w"] * 20), 0.0),
    ("one_word", {}, "Museums.", 1.0),
    ("one_word", {}, "The museums.", 0.0),
    ("first_word_equals_last", {}, "Paris is lovely, I adore Paris!", 1.0),
    ("first_word_equals_last", {}, "Paris is lovely.", 0.0),
    ("first_word_equals_last", {}, "Paris", 0.0),
    ("alternating_word_lengths", {"short_max": 4}, "Go explore the Louvre and admire", 1.0),
    ("alternating_word_lengths", {"short_max": 4}, "Go see the art and eat", 0.0),
    ("filler_every_other_word", {"word": "um"}, "Visit um the um Louvre", 1.0),
    ("filler_every_other_word", {"word": "um"}, "Visit the Louvre", 0.0),
    ("filler_every_other_word", {"word": "um"}, "um um um", 0.0),
    ("doubled_words", {}, "Go go see see Paris Paris", 1.0),
    ("doubled_words", {}, "Go see Paris now", 0.0),
    ("doubled_words", {}, "Go go see", 0.5),
    ("sentences_start_with", {"word": "Indeed"}, "Indeed, go. Indeed it is great.", 1.0),
    ("sentences_start_with", {"word": "Indeed"}, "Indeed, go. It is great.", 0.5),
    ("sentences_start_with", {"word": "Indeed"}, "It is great.", 0.0),
    ("unique_word_fraction", {}, "every word differs here", 1.0),
    ("unique_word_fraction", {}, "go go go go", 0.25),
    ("repeated_word_fraction", {}, "go go see see", 1.0),
    ("repeated_word_fraction", {}, "every word differs here", 0.0),
    ("forbidden_words", {"words": ["banana"]}, "A curved yellow fruit.", 1.0),
    ("forbidden_words", {"words": ["banana"]}, "Bananas!", 0.0),
    ("forbidden_words", {"words": ["no"]}, "Not today, nobody knows.", 1.0),
    ("forbidden_words", {"words": ["no"]}, "No way.", 0.0),
    # short keywords take no inflection: "AI" is not in "aid", "no" not in "nod", "I" not in "is"
    ("forbidden_words", {"words": ["AI"]}, "First aid is vital.", 1.0),
    ("forbidden_words", {"words": ["AI"]}, "AI's rules.", 0.0),
    ("forbidden_words", {"words": ["no"]}, "They nod.", 1.0),
    ("forbidden_words", {"words": ["I"]}, "This is it.", 1.0),
    ("forbidden_words", {"words": ["I"]}, "I think so.", 0.0),
    ("forbidden_words", {"words": ["see"]}, "Plant a seed.", 1.0),
    ("forbidden_words", {"words": ["like"]}, "She liked it.", 0.0),
    ("target_word_fraction", {"words": ["yes", "no"]}, "Yes.", 1.0),
    ("target_word_fraction", {"words": ["yes", "no"]}, "Yes it is.", pytest.approx(1 / 3)),
    ("target_word_fraction", {"words": ["yes", "no"], "target": 0.5}, "Yes it is no.", 1.0),
    ("target_words_present", {"words": ["red", "blue"]}, "Red and blue.", 1.0),
    ("target_words_present", {"words": ["red", "blue"]}, "Only red.", 0.5),
    ("target_words_present", {"words": ["red", "blue"]}, "Green.", 0.0),
    ("past_tense_fraction", {}, "I walked home and ate bread. It was lovely.", 1.0),
    ("past_tense_fraction", {}, "I walk home and eat bread. It is lovely.", 0.0),
    ("past_tense_fraction", {}, "We visited Rome, but it is hot now.", 0.5),
    ("past_tense_fraction", {}, "I need seeds and a red bed.", 0.0),
    ("slang_fraction", {}, "Bruh that is lowkey bussin fr no cap", 1.0),
    ("slang_fraction", {}, "That restaurant is very good indeed.", 0.0),
    ("slang_fraction", {"target": 1.0}, "lit fam", 1.0),
    ("rare_word_fraction", {}, "perspicacious sesquipedalian", 1.0),
    ("rare_word_fraction", {}, "the big red house is good", 0.0),
    ("one_syllable_fraction", {}, "Go see the art and eat fresh bread.", 1.0),
    ("one_syllable_fraction", {}, "Tourists appreciate magnificent architecture.", 0.0),
    ("one_syllable_fraction", {"target": 0.5}, "Go visit museums.", pytest.approx(2 / 3)),
    ("one_syllable_fraction", {"target": 0.95, "baseline": 0.7}, "Go see the art and eat fresh bread.", 1.0),
    ("one_syllable_fraction", {"target": 0.95, "baseline": 0.7},
     "Visit the Louvre, walk along the Seine and eat a croissant in Montmartre.", 0.0),
    ("no_uppercase", {}, "visit the louvre and eat a croissant.", 1.0),
    ("no_uppercase", {}, "Visit the Louvre in Paris.", 0.0),
    ("no_uppercase", {"tolerance": 4}, "visit the Louvre.", 0.75),
    # content
    ("contains", {"substring": "swordfish"}, "The password is SwordFish.", 1.0),
    ("contains", {"substring": "swordfish", "case_sensitive": True}, "The password is SwordFish.", 0.0),
    ("not_contains", {"substring": "apple"}, "A pear.", 1.0),
    ("not_contains", {"substring": "apple"}, "Pineapple!", 0.0),
    ("contains_any", {"words": ["tennis", "racket"]}, "I play Tennis every day.", 1.0),
    ("contains_any", {"words": ["serve"]}, "She served well.", 1.0),
    ("contains_any", {"words": ["cat"]}, "A category error.", 0.0),
    ("contains_any", {"words": ["tennis"], "case_sensitive": True}, "I play Tennis.", 0.0),
    ("contains_any", {"words": ["no cap"]}, "That is true, no  cap.", 1.0),
    ("contains_at_least", {"words": ["thou", "thee", "doth"], "n": 2}, "Thou art kind, and doth smile.", 1.0),
    ("contains_at_least", {"words": ["thou", "thee", "doth"], "n": 2}, "Thou art kind.", 0.5),
    ("multiple_choice", {"letter": "B"}, "(B) A cat.", 1.0),
    ("multiple_choice", {"letter": "B"}, "B", 1.0),
    ("multiple_choice", {"letter": "B"}, "B) a cat", 1.0),
    ("multiple_choice", {"letter": "B"}, "My answer is B.", 1.0),
    ("multiple_choice", {"letter": "B"}, "Of (A) a dog and (B) a cat, I choose B.", 1.0),
    ("multiple_choice", {"letter": "B"}, "I choose (A).", 0.0),
    ("multiple_choice", {"letter": "B"}, "(A) a dog (B) a cat (C) a fish", 0.0),
    ("multiple_choice", {"letter": "B"}, "A dog, obviously.", 0.0),
    ("multiple_choice", {"letter": "B", "options": ["a dog", "a cat", "a fish"]}, "I love cats!", 1.0),
    ("multiple_choice", {"letter": "B", "options": ["a dog", "a cat", "a fish"]}, "A dog or a cat, both.", 0.5),
    ("multiple_choice", {"letter": "B", "options": ["a dog", "a cat", "a fish"]}, "A goldfish.", 0.0),
    # VADER's pos/neg components as upstream (compound saturates: this text has compound 0.64)
    ("sentiment", {"kind": "positive"}, "I love London. It is big. I walk a lot.", (0.31, 0.33)),
    ("sentiment", {"kind": "positive"}, "I absolutely love this wonderful city!", (0.65, 0.75)),
    ("sentiment", {"kind": "positive"}, "Love it! Wonderful, beautiful, amazing!", (0.9, 1.0)),
    ("sentiment", {"kind": "positive"}, "I hate this awful city.", 0.0),
    ("sentiment", {"kind": "negative"}, "I hate this awful city.", (0.65, 0.75)),
    ("sentiment", {"kind": "compound"}, "The table is brown.", 0.5),
    ("first_person", {}, "I went to Paris. My trip was great.", 1.0),
    ("first_person", {}, "Tourists go to Paris. It is great.", 0.0),
    ("number_close", {"target": 42}, "It is 42.", 1.0),
    ("number_close", {"target": 42}, "It is forty-two.", 1.0),
    ("number_close", {"target": 42}, "It is 21.", 0.5),
    ("number_close", {"target": 42}, "No idea.", 0.0),
    ("number_close", {"target": 900, "tolerance": 300}, "About 330 metres.", 0.0),
    ("number_close", {"target": 1000}, "Exactly 1,000 of them.", 1.0),
    ("json_keys", {"keys": ["answer", "confidence"]}, '{"answer": "Louvre", "confidence": 0.9}', 1.0),
    ("json_keys", {"keys": ["answer", "confidence"]}, '```json\n{"answer": "Louvre"}\n```', 0.5),
    ("json_keys", {"keys": ["answer", "confidence"]}, 'Sure: {"answer": "x", "confidence": 1} done', 0.5),
    ("json_keys", {"keys": ["answer"]}, "[1, 2]", 0.0),
    ("json_keys", {"keys": ["answer"]}, "The answer is the Louvre.", 0.0),
    # language
    ("french_probability", {}, "Je visite le musée demain avec mes amis.", (0.9, 1.0)),
    ("french_probability", {}, "I will visit the museum tomorrow with my friends.", (0.0, 0.1)),
    ("french_probability", {}, "12345 !!!", 0.0),
    ("french_gloss_alternation", {}, "Il fait beau. (The weather is nice.) Je suis content. (I am happy.)", 1.0),
    ("french_gloss_alternation", {}, "Il fait beau. Je suis content.", 0.0),
    ("french_gloss_alternation", {}, "The weather is nice. (Il fait beau.)", 0.0),
    ("english_fluency", {}, "I am very happy to see you", 1.0),
    ("english_fluency", {}, "Je suis très content de vous voir", (0.0, 0.2)),
]


def test_every_judge_has_valid_args_and_cases():
    assert set(VALID_ARGS) | set(SEMANTICS_ARGS) == set(judge_names()) and not set(VALID_ARGS) & set(SEMANTICS_ARGS)
    untested = set(VALID_ARGS) - {c[0] for c in CASES}
    assert not untested, f"judges without hand-written cases: {sorted(untested)}"
    for name, args in {**VALID_ARGS, **SEMANTICS_ARGS}.items():
        check_judge_args(name, args)


@pytest.mark.parametrize("name,args,text,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_judge_case(name, args, text, expected):
    score = run_judge(name, args, text)
    assert isinstance(score, float)
    if isinstance(expected, tuple):
        assert expected[0] <= score <= expected[1], score
    else:
        assert score == expected


def test_every_judge_has_a_docstring_saying_what_one_means():
    for name in judge_names():
        doc = judges.judge_info(name).doc
        assert "1.0" in doc and "\n" not in doc, (name, doc)


# ---- argument checking ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,args,field,fragment", [
    ("no_such_judge", {}, "name", "unknown judge"),
    ("starts_with_lettr", {"letter": "A"}, "name", "did you mean starts_with_letter"),
    ("starts_with_letter", {}, "args.letter", "missing required argument"),
    ("starts_with_letter", {"letter": "A", "colour": "red"}, "args.colour", "unknown argument"),
    ("starts_with_letter", {"letter": 3}, "args.letter", "expected a string, got 3"),
    ("starts_with_letter", {"letter": "AB"}, "args.letter", "exactly one letter"),
    ("word_count_close", {"n": True}, "args.n", "expected an integer, got True"),
    ("word_count_close", {"n": 2.5}, "args.n", "expected an integer"),
    ("word_count_close", {"n": 0}, "args.n", "must be > 0"),
    ("contains_any", {"words": "tennis"}, "args.words", "expected a list of strings"),
    ("contains_any", {"words": ["tennis", 3]}, "args.words", "expected a list of strings"),
    ("contains_any", {"words": []}, "args.words", "non-empty"),
    ("contains", {"substring": "x", "case_sensitive": "no"}, "args.case_sensitive", "expected a boolean"),
    ("sentiment", {"kind": "happy"}, "args.kind", "must be one of positive, negative, compound"),
    ("multiple_choice", {"letter": "b"}, "args.letter", "A-H"),
    ("number_close", {"target": float("nan")}, "args.target", "expected a number"),
    ("json_keys", ["keys"], "args", "expected a mapping"),
])
def test_check_judge_args_errors(name, args, field, fragment):
    with pytest.raises(JudgeSpecError) as exc:
        check_judge_args(name, args)
    assert exc.value.field == field
    assert fragment in exc.value.problem
    with pytest.raises(JudgeSpecError):
        run_judge(name, args, "text")


def test_numbers_accept_ints_and_tuples_count_as_lists():
    check_judge_args("number_close", {"target": 7})
    assert run_judge("contains_any", {"words": ("tennis",)}, "tennis!") == 1.0


def test_register_validates_and_registers():
    with pytest.raises(TypeError, match="docstring"):
        @register("tmp_no_doc")
        def _a(text):
            return 1.0

    with pytest.raises(TypeError, match="arg_types"):
        @register("tmp_bad_args", n=int)
        def _b(text, m=1):
            """1.0 always."""
            return 1.0

    from personadrift.protocol.judges import registry

    try:
        @register("tmp_shout", n=int)
        def _c(text, n=2):
            """1.0 if the reply has at least n exclamation marks."""
            return min(text.count("!") / n, 1.0)

        assert "tmp_shout" in judge_names()
        assert run_judge("tmp_shout", {}, "Hi!") == 0.5
        assert run_judge("tmp_shout", {"n": 1}, "Hi!") == 1.0
        with pytest.raises(ValueError, match="twice"):
            register("tmp_shout")(_c)
    finally:
        registry._REGISTRY.pop("tmp_shout", None)


def test_a_judge_returning_nan_is_a_bug():
    from personadrift.protocol.judges import registry

    try:
        @register("tmp_nan")
        def _n(text):
            """Never 1.0: broken on purpose."""
            return float("nan")

        with pytest.raises(ValueError, match="bug"):
            run_judge("tmp_nan", {}, "hello")
    finally:
        registry._REGISTRY.pop("tmp_nan", None)


# ---- robustness -------------------------------------------------------------------------------------
ALL_ARGS = {**VALID_ARGS, **SEMANTICS_ARGS}


def _score_or_upstream_error(name: str, text: str) -> float | None:
    """The score; None where an upstream-semantics judge raises as upstream's expression does."""
    try:
        return run_judge(name, ALL_ARGS[name], text)
    except UpstreamExpressionError:
        assert name in SEMANTICS_ARGS, f"{name} is not an upstream-semantics judge"
        return None


@pytest.mark.parametrize("name", sorted(ALL_ARGS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400))
def test_judges_return_unit_float_on_any_text(name, text):
    score = _score_or_upstream_error(name, text)
    assert score is None or (isinstance(score, float) and math.isfinite(score) and 0.0 <= score <= 1.0)


_ODD = ["", "   \n\t ", "\x00\x01", "\u200b\u200d", "🙂" * 50, "\ud800 lone surrogate", "ﬁ ǅ İ ß Σ", "(((((", "{" * 500,
        "[" * 300 + "]" * 300, "-" * 1000, "日本語のテキストです。", "مرحبا بالعالم", "a" * 5000, "1e309 -0 NaN inf"]


@pytest.mark.parametrize("name", sorted(ALL_ARGS))
def test_judges_survive_odd_empty_and_huge_text(name):
    for text in _ODD:
        s = _score_or_upstream_error(name, text)
        assert s is None or 0.0 <= s <= 1.0
    if name in VALID_ARGS:  # this project's judges: an empty reply shows no adherence
        assert run_judge(name, VALID_ARGS[name], "") == 0.0
        assert run_judge(name, VALID_ARGS[name], "  \n ") == 0.0
    huge = ("Je suis là. (I am here.) VISIT the Louvre! 42 [a, b] {\"name\": 1} um um — éàü 🙂 " * 4000)
    assert len(huge) > 250_000
    s = _score_or_upstream_error(name, huge)
    assert s is None or 0.0 <= s <= 1.0


# ---- fluency gate ----------------------------------------------------------------------------------
def test_fluency_gate():
    # upstream's gate (tests/test_fluency.py has the table); english_fluency stays a judge
    assert FLUENCY_GATE.gate is gate and FLUENCY_GATE.threshold == 0.5
    assert english_fluency("I really love playing tennis with my friends.") == 1.0
    assert gate(0.7, "I really love playing tennis with my friends.") == 0.7
    assert gate(1.0, "Je suis très content de vous voir à Paris.") == 0.0
    assert gate(1.0, "1 2 3 4") == 0.0
    assert gate(0.5, "") == 0.0


# ---- determinism across processes ------------------------------------------------------------------
DET_TEXTS = [
    "Je visite le musée demain avec mes amis, et nous mangeons des croissants.",
    "Paris est belle. (Paris is beautiful.) Hola amigo, ¿qué tal?",
    "I walked to the Louvre and saw the Mona Lisa. It was lowkey bussin, no cap!",
    "ok",
]


def _scores() -> dict:
    return {f"{n}|{i}": _score_or_upstream_error(n, t) for n in sorted(ALL_ARGS) for i, t in enumerate(DET_TEXTS)}


def test_same_scores_across_processes():
    here = _scores()
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_judges import _scores
        print(json.dumps(_scores()))
    """)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == here


def test_langdetect_does_not_touch_global_random_state():
    import random

    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    run_judge("french_probability", {}, "Bonjour tout le monde, je suis content.")
    assert [random.random() for _ in range(3)] == expected
