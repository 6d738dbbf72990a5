"""Upstream's English-fluency gate, table-driven.

Each row's tokens and English-word count were derived by hand from upstream's definition
(utils.py ``is_fluent_english`` at github likenneth/persona_drift, read, not copied): NLTK 3.8.1's
``word_tokenize`` (Punkt sentences, then the improved Treebank tokenizer; punctuation marks
are tokens), a token is English when its lower-cased form is in NLTK's ``words`` corpus
(base forms of web2 and Basic English: plurals, digits and punctuation are not), and the
gate is 1.0 when the English share is strictly above 0.5.
"""

from __future__ import annotations

import pytest

from personadrift.protocol import judges
from personadrift.protocol.judges.fluency import (
    BASIC_ENGLISH_NOT_IN_WEB2,
    english_vocabulary,
    english_word_share,
    gate,
    is_fluent_english,
    word_tokenize,
)
from personadrift.protocol.scoring import score_answer

# text, NLTK's tokens, English tokens among them, gate value
ROWS = [
    ("The cat sat on the mat.", ["The", "cat", "sat", "on", "the", "mat", "."], 6, 1.0),
    # punctuation counts in the denominator: 2 of 4 is not more than half
    ("Hello, world.", ["Hello", ",", "world", "."], 2, 0.0),
    ("Hello world.", ["Hello", "world", "."], 2, 1.0),
    # case: looked up lower-cased
    ("THE CAT SAT.", ["THE", "CAT", "SAT", "."], 3, 1.0),
    # sentence splitting: each sentence's final period is split off (without it, "home." would
    # be one non-word and the share 3/6)
    ("Go home. Eat now. Sleep.", ["Go", "home", ".", "Eat", "now", ".", "Sleep", "."], 5, 1.0),
    # Punkt's English model knows "Dr." is an abbreviation: no sentence break, the period stays on
    ("Dr. Smith went home. He was tired.",
     ["Dr.", "Smith", "went", "home", ".", "He", "was", "tired", "."], 6, 1.0),
    # clitics are split off and are not words
    ("We don't know.", ["We", "do", "n't", "know", "."], 3, 1.0),
    # double quotes become `` and '', parentheses are tokens
    ('She said "yes" (twice).', ["She", "said", "``", "yes", "''", "(", "twice", ")", "."], 4, 0.0),
    # NLTK 3.8.1 keeps an opening single quote on its word (later NLTK splits it: 4 of 7, 1.0)
    ("I said 'hello' today.", ["I", "said", "'hello", "'", "today", "."], 3, 0.0),
    # the word list has base forms: a plural is not a word
    ("Cats eat fish.", ["Cats", "eat", "fish", "."], 2, 0.0),
    # a compliant French answer is zeroed ("content" and "de" are in web2)
    ("Je suis très content de vous voir.", ["Je", "suis", "très", "content", "de", "vous", "voir", "."], 2, 0.0),
    ("1 2 3 4", ["1", "2", "3", "4"], 0, 0.0),
    ("Meow meow meow!", ["Meow", "meow", "meow", "!"], 0, 0.0),
    # no tokens: 0.0, not a division by zero
    ("", [], 0, 0.0),
    ("  \n ", [], 0, 0.0),
]


@pytest.mark.parametrize("text,tokens,english,fluent", ROWS, ids=[r[0][:24] or "empty" for r in ROWS])
def test_tokens_english_share_and_gate_as_upstream(text, tokens, english, fluent):
    assert word_tokenize(text) == tokens
    vocab = english_vocabulary()
    assert sum(t.lower() in vocab for t in tokens) == english
    assert english_word_share(text) == (english / len(tokens) if tokens else 0.0)
    assert is_fluent_english(text) == fluent
    assert gate(0.75, text) == 0.75 * fluent


def test_the_vocabulary_is_web2_and_basic_english_lower_cased():
    vocab = english_vocabulary()
    assert 230_000 < len(vocab) < 240_000
    assert BASIC_ENGLISH_NOT_IN_WEB2 <= vocab and {"colour", "behaviour"} <= vocab
    assert all(w == w.lower() for w in vocab)
    assert "i" in vocab and "I" not in vocab and "." not in vocab


def test_scoring_multiplies_the_judge_by_the_gate():
    persona = {"judge": "contains_any", "judge_args": {"words": ["tennis"]}}
    assert score_answer(persona, "I love tennis.", fluency_gate=True) == (1.0, "")
    assert score_answer(persona, "Tennis, tennis, tennis!", fluency_gate=True) == (0.0, "")   # 3 of 6 tokens
    assert score_answer(persona, "Tennis, tennis, tennis!", fluency_gate=False) == (1.0, "")
    assert judges.FLUENCY_GATE.gate is gate and judges.FLUENCY_GATE.threshold == 0.5
