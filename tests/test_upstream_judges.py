"""Equivalence of the ``upstream_*`` judges with the paper's helpers, and the composition judges.

Every expected value below was derived by hand from a reading of the helper's definition in
upstream's hundred_system_prompts.py (tokenisation, case rules, edge cases), not by running
this project's code. ``RAISES`` marks texts on which upstream's expression raises; the judge
raises too and scoring records NaN with the error.
"""

from __future__ import annotations

import math

import pytest

from personadrift.protocol.judges import (
    JudgeSpecError,
    check_judge_args,
    judge_names,
    run_judge,
)
from personadrift.protocol.judges.paper import (
    DIFFERENCES,
    UpstreamExpressionError,
    upstream_sentences,
)
from personadrift.protocol.scoring import score_answer

RAISES = "raises"
A = pytest.approx

CASES = [
    # fraction_starts_with: lower-cased text, no whitespace skipped
    ("upstream_fraction_starts_with", {"prefix": "a"}, "A trip to the Tower.", 1.0),
    ("upstream_fraction_starts_with", {"prefix": "a"}, "Visit the Tower.", 0.0),
    ("upstream_fraction_starts_with", {"prefix": "a"}, "   A walk", 0.0),
    ("upstream_fraction_starts_with", {"prefix": "a"}, "Ápres tout", 0.0),
    ("upstream_fraction_starts_with", {"prefix": "a"}, "", 0.0),
    # fraction_of_case_letters: over str.isalpha characters
    ("upstream_fraction_of_case_letters", {"upper": True}, "HELLO THERE!", 1.0),
    ("upstream_fraction_of_case_letters", {"upper": True}, "HEllo", 0.4),
    ("upstream_fraction_of_case_letters", {"upper": True}, "123 !!", 0.0),
    ("upstream_fraction_of_case_letters", {"upper": True}, "ÉTÉ", 1.0),
    ("upstream_fraction_of_case_letters", {"upper": False}, "été 2024", 1.0),
    ("upstream_fraction_of_case_letters", {"upper": False}, "", 0.0),
    # count_num_words_one: 1 / len(text.split())
    ("upstream_count_num_words_one", {}, "Museums.", 1.0),
    ("upstream_count_num_words_one", {}, "Visit the museums", A(1 / 3)),
    ("upstream_count_num_words_one", {}, "   ", 0.0),
    ("upstream_count_num_words_one", {}, "", 0.0),
    # fraction_non_letter / fraction_digit: over all characters, spaces included
    ("upstream_fraction_non_letter", {}, "123 456", 1.0),
    ("upstream_fraction_non_letter", {}, "ab 1", 0.5),
    ("upstream_fraction_non_letter", {}, "  ", 1.0),
    ("upstream_fraction_non_letter", {}, "", 0.0),
    ("upstream_fraction_digit", {}, "2024", 1.0),
    ("upstream_fraction_digit", {}, "20 24", 0.8),
    ("upstream_fraction_digit", {}, "two", 0.0),
    ("upstream_fraction_digit", {}, "", 0.0),
    # are_first_and_last_words_same: punctuation removed, lower case; empty and one word are "same"
    ("upstream_are_first_and_last_words_same", {}, "London is lovely, London!", 1.0),
    ("upstream_are_first_and_last_words_same", {}, "London is lovely", 0.0),
    ("upstream_are_first_and_last_words_same", {}, "Go-go to go", 0.0),
    ("upstream_are_first_and_last_words_same", {}, "Hello.", 1.0),
    ("upstream_are_first_and_last_words_same", {}, "", 1.0),
    # count_num_words: 1 - min(|n - 10| / 10, 1)
    ("upstream_count_num_words", {}, "one two three four five six seven eight nine ten", 1.0),
    ("upstream_count_num_words", {}, "one two three four five", 0.5),
    ("upstream_count_num_words", {}, " ".join(["w"] * 12), A(0.8)),
    ("upstream_count_num_words", {}, " ".join(["w"] * 25), 0.0),
    ("upstream_count_num_words", {}, "", 0.0),
    # get_sentiment: VADER's raw component (the issue's example: pos 0.318, compound 0.6369)
    ("upstream_get_sentiment", {"component": "pos"}, "I love London. It is big. I walk a lot.", A(0.318, abs=1e-3)),
    ("upstream_get_sentiment", {"component": "neg"}, "I love London. It is big. I walk a lot.", 0.0),
    ("upstream_get_sentiment", {"component": "pos"}, "", 0.0),
    # count_plural_nouns: NNS/NNPS tokens / all tokens (the '.' is a token)
    ("upstream_count_plural_nouns", {}, "Museums and parks.", 0.5),
    ("upstream_count_plural_nouns", {}, "The museum is open.", 0.0),
    ("upstream_count_plural_nouns", {}, "", 0.0),
    # is_valid_json_format: a textual pattern on one line
    ("upstream_is_valid_json_format", {}, '{"thought": "easy", "response": "visit"}', 1.0),
    ("upstream_is_valid_json_format", {}, 'Sure! {"thought":"x", "response":"y"} done', 1.0),
    ("upstream_is_valid_json_format", {}, '{"response": "y", "thought": "x"}', 0.0),
    ("upstream_is_valid_json_format", {}, '{"thought": "x",\n"response": "y"}', 0.0),
    ("upstream_is_valid_json_format", {}, "", 0.0),
    # is_valid_list_format: first '[' to first ']', items split at ', '
    ("upstream_is_valid_list_format", {}, "[museums, parks, pubs]", 1.0),
    ("upstream_is_valid_list_format", {}, "[Big Ben, parks]", 0.5),
    ("upstream_is_valid_list_format", {}, "no brackets", 0.0),
    ("upstream_is_valid_list_format", {}, "] then [", 1.0),     # an empty slice is one item without a space
    ("upstream_is_valid_list_format", {}, "", 0.0),
    # is_valid_dash_format: one-character chunks / chunks, split at '-'
    ("upstream_is_valid_dash_format", {}, "H-e-l-l-o", 1.0),
    ("upstream_is_valid_dash_format", {}, "a-bc", 0.5),
    ("upstream_is_valid_dash_format", {}, "a--b", A(2 / 3)),
    ("upstream_is_valid_dash_format", {}, "Hello", 0.0),
    ("upstream_is_valid_dash_format", {}, "", 0.0),
    # does_not_contain: whole lower-case words, punctuation removed; the word list compared as given
    ("upstream_does_not_contain", {"words": ["we", "us"]}, "Visit the museum.", 1.0),
    ("upstream_does_not_contain", {"words": ["we", "us"]}, "We love it.", 0.0),
    ("upstream_does_not_contain", {"words": ["we", "us"]}, "Tell us!", 0.0),
    ("upstream_does_not_contain", {"words": ["we", "us"]}, "Bus rides", 1.0),
    ("upstream_does_not_contain", {"words": ["we", "us"]}, "We're here", 1.0),   # "were"
    ("upstream_does_not_contain", {"words": ["I"]}, "I am here", 1.0),          # "I" never matches
    ("upstream_does_not_contain", {"words": ["2", "two"]}, "It is 2.", 0.0),
    ("upstream_does_not_contain", {"words": ["we", "us"]}, "", 1.0),
    # fraction_of_text_that_is_a_target: raises on a reply without words
    ("upstream_fraction_of_text_that_is_a_target", {"words": ["meow", "purr"]}, "Meow meow purr.", 1.0),
    ("upstream_fraction_of_text_that_is_a_target", {"words": ["meow", "purr"]}, "Meow, I like fish", 0.25),
    ("upstream_fraction_of_text_that_is_a_target", {"words": ["meow", "purr"]}, "...", RAISES),
    ("upstream_fraction_of_text_that_is_a_target", {"words": ["meow", "purr"]}, "", RAISES),
    ("upstream_fraction_of_text_that_is_a_target", {"wordlist": "one_syllable_words"}, "The cat sat.", 1.0),
    ("upstream_fraction_of_text_that_is_a_target", {"wordlist": "one_syllable_words"}, "Beautiful city", 0.0),
    ("upstream_fraction_of_text_that_is_a_target", {"wordlist": "frequent_words"}, "The museum is open", 1.0),
    ("upstream_fraction_of_text_that_is_a_target", {"wordlist": "frequent_words"}, "xylograph", 0.0),
    # fraction_of_target_words_hit: targets compared as given against lower-case words
    ("upstream_fraction_of_target_words_hit", {"words": ["lamp"]}, "A lamp, a lamp!", 1.0),
    ("upstream_fraction_of_target_words_hit", {"words": ["lamp"]}, "Lamps are nice", 0.0),
    ("upstream_fraction_of_target_words_hit", {"words": ["Adam Li", "57"]}, "I am Adam Li, 57.", 0.5),
    ("upstream_fraction_of_target_words_hit", {"words": ["lamp"]}, "", 0.0),
    # sentences_start_with (case bug fixed: both sides lower-cased)
    ("upstream_sentences_start_with", {"word": "Yes"}, "Yes, go. Yes! see it.", A(2 / 3)),
    ("upstream_sentences_start_with", {"word": "Yes"}, "Yes", 1.0),
    ("upstream_sentences_start_with", {"word": "Yes"}, "No. Never.", 0.0),
    ("upstream_sentences_start_with", {"word": "Yes"}, "Yes. !", 0.5),
    ("upstream_sentences_start_with", {"word": "Yes"}, "Yes <stop> <stop> yes", RAISES),   # an empty sentence
    ("upstream_sentences_start_with", {"word": "Yes"}, "", 0.0),
    # is_alliteration: \b\w+\b words, most common initial
    ("upstream_is_alliteration", {}, "Peter picked purple plums", 1.0),
    ("upstream_is_alliteration", {}, "Big red bus", A(2 / 3)),
    ("upstream_is_alliteration", {}, "123 456", 0.5),
    ("upstream_is_alliteration", {}, "Élan élève", 1.0),
    ("upstream_is_alliteration", {}, "", 0.0),
    # is_valid_sentence_word_count: exactly len(pattern) sentences; 0.5 for one word off
    ("upstream_is_valid_sentence_word_count", {"pattern": [5, 5, 5]},
     "I love the red buses. Big Ben is very tall. Tea is served at four.", 1.0),
    ("upstream_is_valid_sentence_word_count", {"pattern": [5, 5, 5]},
     "I love red buses. Big Ben is very tall. Tea is served at four.", A(2.5 / 3)),
    ("upstream_is_valid_sentence_word_count", {"pattern": [5, 5, 5]},
     "one two three four five. one two three four five. one two three four five", 1.0),
    ("upstream_is_valid_sentence_word_count", {"pattern": [5, 5, 5]}, "I love the red buses. Big Ben is tall.", 0.0),
    ("upstream_is_valid_sentence_word_count", {"pattern": [5, 5, 5]}, "", 0.0),
    # is_increasing_sentence_word_count: sentence i has one word more than sentence i-1 (first: 1)
    ("upstream_is_increasing_sentence_word_count", {}, "Go. Go now. Go now please.", 1.0),
    ("upstream_is_increasing_sentence_word_count", {}, "Go. Go now. Stop.", A(2 / 3)),
    ("upstream_is_increasing_sentence_word_count", {}, "Go now. Go.", 0.0),
    ("upstream_is_increasing_sentence_word_count", {}, "", 0.0),
    # is_valid_alternating_french_english: parts split at ') ', pairs at ' ('
    ("upstream_is_valid_alternating_french_english", {},
     "Bonjour mes amis, je suis très content de vous voir. (Hello my friends, I am very happy to see you.) "
     "Nous allons visiter le musée ensemble. (We are going to visit the museum together.)", 1.0),
    ("upstream_is_valid_alternating_french_english", {}, "Hello there, no glosses at all.", 0.0),
    ("upstream_is_valid_alternating_french_english", {}, "", 0.0),
    # close_to_num: the first run of digits; raises without one
    ("upstream_close_to_num", {"target": 9}, "9", 1.0),
    ("upstream_close_to_num", {"target": 9}, "There are 12 words", A(2 / 3)),
    ("upstream_close_to_num", {"target": 9}, "3.5", A(1 / 3)),
    ("upstream_close_to_num", {"target": 9}, "I count 30", 0.0),
    ("upstream_close_to_num", {"target": 9}, "nine", RAISES),
    ("upstream_close_to_num", {"target": 9}, "", RAISES),
    # fraction_alter_upper_lower: a word without letters is both all-upper and all-lower
    ("upstream_fraction_alter_upper_lower", {}, "HELLO there BIG city", 1.0),
    ("upstream_fraction_alter_upper_lower", {}, "Hello there", 0.0),
    ("upstream_fraction_alter_upper_lower", {}, "HI 123 there", 1.0),
    ("upstream_fraction_alter_upper_lower", {}, "HI", 1.0),
    ("upstream_fraction_alter_upper_lower", {}, "", RAISES),
    # teenager_score (this project's list): punctuation but apostrophes removed
    ("upstream_teenager_score", {}, "lol that is lit fam", 0.6),
    ("upstream_teenager_score", {}, "LOL!!", 1.0),
    ("upstream_teenager_score", {}, "y'all", 1.0),
    ("upstream_teenager_score", {}, "Good morning, sir.", 0.0),
    ("upstream_teenager_score", {}, "", 0.0),
    # fraction_past_tense_verbs: 1.0 when there is no verb
    ("upstream_fraction_past_tense_verbs", {}, "I walked to the park and saw a dog.", 1.0),
    ("upstream_fraction_past_tense_verbs", {}, "I walk to the park.", 0.0),
    ("upstream_fraction_past_tense_verbs", {}, "The museum.", 1.0),
    ("upstream_fraction_past_tense_verbs", {}, "", 1.0),
    # fraction_unique_words / fraction_repeated_words: \b\w+\b words, lower case
    ("upstream_fraction_unique_words", {}, "Visit every museum", 1.0),
    ("upstream_fraction_unique_words", {}, "The cat and the dog", 0.6),
    ("upstream_fraction_unique_words", {}, "Don't stop", 1.0),
    ("upstream_fraction_unique_words", {}, "", 0.0),
    ("upstream_fraction_repeated_words", {}, "go go see see", 0.5),
    ("upstream_fraction_repeated_words", {}, "The cat and the dog", 0.2),
    ("upstream_fraction_repeated_words", {}, "go see", 0.0),
    ("upstream_fraction_repeated_words", {}, "", 0.0),
    # contains_color_and_number: colour as a substring, number as a word
    ("upstream_contains_color_and_number", {}, "Take the red bus number 11.", 1.0),
    ("upstream_contains_color_and_number", {}, "Three green parks", 1.0),
    ("upstream_contains_color_and_number", {}, "Take the red bus.", 0.0),
    ("upstream_contains_color_and_number", {}, "I was bored at 5", 1.0),     # 'red' inside 'bored'
    ("upstream_contains_color_and_number", {}, "", 0.0),
    # fraction_alter_short_long: long = len > 4 (the first word counts letters only)
    ("upstream_fraction_alter_short_long", {}, "Gorgeous day, wonderful city", 1.0),
    ("upstream_fraction_alter_short_long", {}, "big red bus", A(1 / 3)),
    ("upstream_fraction_alter_short_long", {}, "abcd!! hello", 1.0),
    ("upstream_fraction_alter_short_long", {}, "Hello", 1.0),
    ("upstream_fraction_alter_short_long", {}, "", RAISES),
    # fraction_alter_banana
    ("upstream_fraction_alter_banana", {}, "banana I banana love banana it", 1.0),
    ("upstream_fraction_alter_banana", {}, "I love it", A(1 / 3)),
    ("upstream_fraction_alter_banana", {}, "Banana! cake", 1.0),
    ("upstream_fraction_alter_banana", {}, "", RAISES),
    # fraction_sentences_that_are_questions: '?' among a sentence's last two characters
    ("upstream_fraction_sentences_that_are_questions", {}, "Is it big? Do you like it?", 1.0),
    ("upstream_fraction_sentences_that_are_questions", {}, "It is big. Do you like it?", 0.5),
    ("upstream_fraction_sentences_that_are_questions", {}, "Really?!", 0.5),
    ("upstream_fraction_sentences_that_are_questions", {}, '"Why?" she asked.', 0.5),
    ("upstream_fraction_sentences_that_are_questions", {}, "", 0.0),
    # is_valid_repeat (bug fixed): equal word pairs / all words
    ("upstream_is_valid_repeat", {}, "the the cat cat", 0.5),
    ("upstream_is_valid_repeat", {}, "the cat the cat", 0.0),
    ("upstream_is_valid_repeat", {}, "go go now", A(1 / 3)),
    ("upstream_is_valid_repeat", {}, "", 0.0),
    # get_french_percentage: raises where langdetect finds no features
    ("upstream_get_french_percentage", {}, "Je voudrais visiter le musée du Louvre avec mes amis demain matin.", A(1.0, abs=1e-3)),
    ("upstream_get_french_percentage", {}, "I would like to visit the museum with my friends tomorrow morning.", 0.0),
    ("upstream_get_french_percentage", {}, "12345", RAISES),
    ("upstream_get_french_percentage", {}, "", RAISES),
    # plain Python tests
    ("substring_any", {"substrings": ["B"]}, "But I say A", 1.0),
    ("substring_any", {"substrings": ["tennis"], "lowercase": True}, "TENNIS!", 1.0),
    ("substring_any", {"substrings": ["tennis"]}, "TENNIS!", 0.0),
    ("substring_any", {"substrings": ["three", "3"]}, "I have 3 kids", 1.0),
    ("substring_any", {"substrings": ["tennis"]}, "", 0.0),
    ("token_any", {"tokens": ["i", "me"], "lowercase": True}, "I love it", 1.0),
    ("token_any", {"tokens": ["i", "me"], "lowercase": True}, "It is big", 0.0),
    ("token_any", {"tokens": ["i'm"], "lowercase": True}, "I'm here", 1.0),
    ("first_token_is", {"token": "Yes"}, "Yes sure", 1.0),
    ("first_token_is", {"token": "Yes"}, "Yes, sure", 0.0),
    ("first_token_is", {"token": "Yes"}, "", RAISES),
]

_WC = {"name": "word_count"}
COMPOSED = [
    # 1 / (1 + x.count('e')): 1.0 on an empty reply, as upstream
    ("reciprocal", {"measure": {"name": "occurrences", "args": {"substring": "e"}}}, "eee", 0.25),
    ("reciprocal", {"measure": {"name": "occurrences", "args": {"substring": "e"}}}, "Go to a pub", 1.0),
    ("reciprocal", {"measure": {"name": "occurrences", "args": {"substring": "e"}}}, "", 1.0),
    # 1 - 1 / (1 + len(x.split()) ** (1/3)): 8 words -> 1 - 1/3
    ("one_minus", {"judge": {"name": "reciprocal", "args": {"measure": _WC, "power": 1 / 3}}}, " ".join(["w"] * 8), A(2 / 3)),
    ("one_minus", {"judge": {"name": "reciprocal", "args": {"measure": _WC, "power": 1 / 3}}}, "", 0.0),
    # (1 - compound) / 2: a neutral text (compound 0) scores 0.5
    ("affine", {"measure": {"name": "vader", "args": {"component": "compound"}}, "scale": -0.5, "offset": 0.5},
     "The table is brown.", 0.5),
    # len(split_into_sentences(x)) == 1
    ("compare", {"measure": {"name": "sentence_count"}, "op": "==", "value": 1}, "One sentence only", 1.0),
    ("compare", {"measure": {"name": "sentence_count"}, "op": "==", "value": 1}, "One. Two.", 0.0),
    ("compare", {"measure": {"name": "sentence_count"}, "op": "==", "value": 1}, "", 0.0),
    # 'Londres' in x and len(x.split()) < 20
    ("all_of", {"judges": [{"name": "substring_any", "args": {"substrings": ["Londres"]}},
                           {"name": "compare", "args": {"measure": _WC, "op": "<", "value": 20}}]},
     "Que faites-vous à Londres en tant que touriste ?", 1.0),
    ("all_of", {"judges": [{"name": "substring_any", "args": {"substrings": ["Londres"]}},
                           {"name": "compare", "args": {"measure": _WC, "op": "<", "value": 20}}]},
     "Londres " + "mot " * 20, 0.0),
    # 1 - fraction_of_target_words_hit(x, ['and']): 1.0 on an empty reply, as upstream
    ("one_minus", {"judge": {"name": "upstream_fraction_of_target_words_hit", "args": {"words": ["and"]}}}, "", 1.0),
    ("one_minus", {"judge": {"name": "upstream_fraction_of_target_words_hit", "args": {"words": ["and"]}}}, "Tea and cake", 0.0),
    # 'a' in x or 'b' in x
    ("any_of", {"judges": [{"name": "substring_any", "args": {"substrings": ["x"]}},
                           {"name": "upstream_fraction_digit"}]}, "a1", 0.5),
]


def _check(judge, args, text, expected):
    check_judge_args(judge, args)
    if expected == RAISES:
        with pytest.raises(UpstreamExpressionError):
            run_judge(judge, args, text)
        score, error = score_answer({"judge": judge, "judge_args": args}, text, False)
        assert math.isnan(score) and error.startswith("UpstreamExpressionError")
    else:
        assert run_judge(judge, args, text) == expected


@pytest.mark.parametrize("judge,args,text,expected", CASES)
def test_upstream_helper_equivalence(judge, args, text, expected):
    _check(judge, args, text, expected)


@pytest.mark.parametrize("judge,args,text,expected", COMPOSED)
def test_composition(judge, args, text, expected):
    _check(judge, args, text, expected)


def test_every_upstream_judge_has_cases_with_an_empty_reply():
    names = {n for n in judge_names() if n.startswith("upstream_")} | {"substring_any", "token_any", "first_token_is"}
    covered = {c[0] for c in CASES}
    assert names == covered
    assert names - {"token_any"} <= {c[0] for c in CASES if c[2] == ""}
    assert all(k.split(":")[0] in names for k in DIFFERENCES)


@pytest.mark.parametrize("text,sentences", [
    ("Hello Mr. Smith. How are you? I am fine!", ["Hello Mr. Smith.", "How are you?", "I am fine!"]),
    ("no end mark", ["no end mark"]),
    ("", []),
    ("   ", []),
    ('He said "hi." Then left.', ['He said "hi".', "Then left."]),
    ("Wait... what?", ["Wait...", "what?"]),
    ("It costs 3.5 pounds. Cheap!", ["It costs 3.5 pounds.", "Cheap!"]),
    ("See www.example.com today. Bye.", ["See www.", "example.com today.", "Bye."]),   # only ".com" is protected
    ("The U.S. He left.", ["The U.S.", "He left."]),
    ("Line one\nline two. End.", ["Line one line two.", "End."]),
])
def test_upstream_sentence_splitter(text, sentences):
    assert upstream_sentences(text) == sentences


@pytest.mark.parametrize("args,field", [
    ({"judge": {"name": "nope"}}, "args.judge.name"),
    ({"judge": {"name": "upstream_close_to_num", "args": {"target": "9"}}}, "args.judge.args.target"),
    ({"judge": {"name": "substring_any", "extra": 1}}, "args.judge.extra"),
])
def test_nested_spec_errors_keep_their_path(args, field):
    with pytest.raises(JudgeSpecError) as e:
        check_judge_args("one_minus", args)
    assert e.value.field == field


@pytest.mark.parametrize("judge,args,field", [
    ("compare", {"measure": {"name": "words"}, "op": "<", "value": 3}, "args.measure.name"),
    ("compare", {"measure": {"name": "word_count"}, "op": "=<", "value": 3}, "args.op"),
    ("affine", {"measure": {"name": "vader", "args": {"component": "joy"}}}, "args.measure.args.component"),
    ("reciprocal", {"measure": {"name": "occurrences"}}, "args.measure.args.substring"),
    ("all_of", {"judges": [{"name": "one_word"}]}, "args.judges"),
    ("all_of", {"judges": [{"name": "one_word"}, {"name": "x"}]}, "args.judges.1.name"),
])
def test_composite_argument_errors(judge, args, field):
    with pytest.raises(JudgeSpecError) as e:
        check_judge_args(judge, args)
    assert e.value.field == field


def test_empty_replies_this_projects_judges_versus_upstream_semantics():
    # Decision: this project's judges give an empty reply 0.0 (it shows no adherence), even
    # for "never say X"; the upstream-semantics judges give upstream's value.
    assert run_judge("not_contains", {"substring": "apple"}, "") == 0.0
    assert run_judge("forbidden_words", {"words": ["apple"]}, "  ") == 0.0
    assert run_judge("upstream_does_not_contain", {"words": ["apple"]}, "") == 1.0
    assert run_judge("one_minus", {"judge": {"name": "not_contains", "args": {"substring": "a"}}}, "") == 0.0
    assert run_judge("one_minus", {"judge": {"name": "substring_any", "args": {"substrings": ["a"]}}}, "") == 1.0
