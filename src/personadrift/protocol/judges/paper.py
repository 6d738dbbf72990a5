"""Judges with the semantics of the paper's released helpers (``upstream_*``).

The paper's code (github likenneth/persona_drift, ``hundred_system_prompts.py``; no license,
so none of it is copied here) scores each probe answer with a lambda over module-level
helpers. Each helper has a judge here, named ``upstream_<helper>``, written for this project
from a reading of the helper's definition: the same tokenisation (``str.split``, the
sentence splitter, ``\\b\\w+\\b``), the same case rules, the same graded value and the same
value on empty text. Where upstream's expression raises (``words[0]`` of an empty reply, a
division by zero, ``None - 9``), the judge raises :class:`UpstreamExpressionError`; scoring
records the error with a NaN score instead of dropping the row.

Deliberate differences are listed in :data:`DIFFERENCES` (judge name -> reason); the
importer copies them into each affected persona's ``notes`` and its report.

Besides the helpers, three judges express the plain Python tests the lambdas use directly:
``substring_any`` (``'s' in x`` / ``'s' in x.lower()``, ``any(...)`` of such tests),
``token_any`` (``any(w in x.lower().split() for w in [...])``) and ``first_token_is``
(``x.split()[0] == 'Yes'``).
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Sequence

from personadrift.protocol.judges.registry import (
    Arg,
    non_empty,
    one_of,
    positive,
    register,
)
from personadrift.protocol.judges.sentiment import VADER_MAX_CHARS, vader_scores

_PUNCT = str.maketrans("", "", string.punctuation)  # upstream removes ASCII punctuation this way
_PUNCT_BUT_APOSTROPHE = str.maketrans("", "", string.punctuation.replace("'", ""))


class UpstreamExpressionError(ValueError):
    """Upstream's judge expression raises on this reply (scored NaN, the error recorded)."""


def _strip_punct_lower_split(text: str) -> list[str]:
    return text.translate(_PUNCT).lower().split()


def _fraction(hits: float, total: int) -> float:
    return hits / total if total else 0.0


# ---- sentence splitting ------------------------------------------------------------------------
# Upstream splits sentences with the regex recipe of StackOverflow answer 4576077 ("How can I
# split a text into sentences?"). This is the same sequence of rewrites, step by step: protect
# periods that do not end a sentence with a <prd> marker, mark sentence ends with <stop>, then
# split at the markers.
_A = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s"
             r"|This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"


def upstream_sentences(text: str) -> list[str]:
    """Sentences as upstream's ``split_into_sentences`` gives them (stripped; [] for blank text)."""
    t = " " + text + "  "
    t = t.replace("\n", " ")
    t = re.sub(_PREFIXES, r"\1<prd>", t)
    t = re.sub(_WEBSITES, r"<prd>\1", t)
    t = re.sub(_DIGITS + "[.]" + _DIGITS, r"\1<prd>\2", t)
    t = re.sub(r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>", t)
    if "Ph.D" in t:
        t = t.replace("Ph.D.", "Ph<prd>D<prd>")
    t = re.sub(r"\s" + _A + "[.] ", r" \1<prd> ", t)
    t = re.sub(_ACRONYMS + " " + _STARTERS, r"\1<stop> \2", t)
    t = re.sub(_A + "[.]" + _A + "[.]" + _A + "[.]", r"\1<prd>\2<prd>\3<prd>", t)
    t = re.sub(_A + "[.]" + _A + "[.]", r"\1<prd>\2<prd>", t)
    t = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, r" \1<stop> \2", t)
    t = re.sub(" " + _SUFFIXES + "[.]", r" \1<prd>", t)
    t = re.sub(" " + _A + "[.]", r" \1<prd>", t)
    # a closing quote after the end mark moves before it, so the quote stays in its sentence
    for mark in ".!?":
        if ('"' if mark == "." else mark) in t:
            t = t.replace(mark + '"', '"' + mark)
    for mark in ".?!":
        t = t.replace(mark, mark + "<stop>")
    t = t.replace("<prd>", ".")
    out = [s.strip() for s in t.split("<stop>")]
    if out and not out[-1]:
        out.pop()
    return out


# ---- offline resources -------------------------------------------------------------------------
#: The gloss judge (langdetect runs once per gloss pair) looks at no more than this many
#: characters, as VADER does (sentiment.py); probe answers are far shorter.
SLOW_JUDGE_MAX_CHARS = VADER_MAX_CHARS


@functools.cache
def frequent_words() -> frozenset:
    """Offline stand-in for upstream's downloaded google-10000-english-usa list: wordfreq's
    10,000 most frequent English words, lower case, ASCII punctuation removed."""
    from wordfreq import top_n_list

    return frozenset(w.translate(_PUNCT) for w in top_n_list("en", 10_000))


@functools.cache
def one_syllable_words() -> frozenset:
    """Offline stand-in for upstream's downloaded one-syllable word list: every word of the
    CMU pronouncing dictionary whose first pronunciation has exactly one vowel."""
    import pronouncing

    pronouncing.init_cmu()
    return frozenset(w for w, ph in pronouncing.pronunciations
                     if w.isalpha() and sum(ch.isdigit() for ch in ph) == 1)


WORDLISTS = {"frequent_words": frequent_words, "one_syllable_words": one_syllable_words}


def _langs(text: str) -> list[tuple[str, float]]:
    """langdetect's (language, probability) list, most probable first; raises like detect_langs."""
    from personadrift.protocol.judges.language import _langdetect_factory

    det = _langdetect_factory().create()
    det.append(text)
    return [(p.lang, float(p.prob)) for p in det.get_probabilities()]


# ---- the helpers -------------------------------------------------------------------------------
@register("upstream_fraction_starts_with", scores_empty=True, prefix=Arg(str, non_empty))
def upstream_fraction_starts_with(text: str, prefix: str) -> float:
    """upstream fraction_starts_with: 1.0 if the lower-cased reply begins with `prefix` (no whitespace skipped)."""
    return float(text.lower().startswith(prefix))


@register("upstream_fraction_of_case_letters", scores_empty=True, upper=bool)
def upstream_fraction_of_case_letters(text: str, upper: bool) -> float:
    """upstream fraction_of_case_letters: upper- (or lower-) case letters / letters (str.isalpha), 1.0 = all in that
    case; 0.0 without letters.
    """
    letters = [c for c in text if c.isalpha()]
    return _fraction(sum(c.isupper() if upper else c.islower() for c in letters), len(letters))


@register("upstream_count_num_words_one", scores_empty=True)
def upstream_count_num_words_one(text: str) -> float:
    """upstream count_num_words_one: 1 / number of whitespace-separated words (1.0 = one word); 0.0 for none."""
    n = len(text.split())
    return 1 / n if n else 0.0


@register("upstream_fraction_non_letter", scores_empty=True)
def upstream_fraction_non_letter(text: str) -> float:
    """upstream fraction_non_letter: characters that are not letters (spaces count) / all characters; 1.0 = no letter.
    """
    return _fraction(sum(not c.isalpha() for c in text), len(text))


@register("upstream_fraction_digit", scores_empty=True)
def upstream_fraction_digit(text: str) -> float:
    """upstream fraction_digit: digit characters / all characters (spaces count); 1.0 = digits only."""
    return _fraction(sum(c.isdigit() for c in text), len(text))


@register("upstream_are_first_and_last_words_same", scores_empty=True)
def upstream_are_first_and_last_words_same(text: str) -> float:
    """upstream are_first_and_last_words_same: 1.0 if the first and last words (punctuation removed, lower case) are
    equal; also for one word or none.
    """
    ws = _strip_punct_lower_split(text)
    return float((ws[0] if ws else "") == (ws[-1] if ws else ""))


@register("upstream_count_num_words", scores_empty=True, n=Arg(int, positive))
def upstream_count_num_words(text: str, n: int = 10) -> float:
    """upstream count_num_words: 1.0 for exactly `n` (10) whitespace-separated words, falling linearly to 0 at `n` words
    off.
    """
    diff = abs(len(text.split()) - n)
    return abs(1 - max(0, min(diff / n, 1)))


@register("upstream_get_sentiment", scores_empty=True, component=Arg(str, one_of("pos", "neg", "neu", "compound")))
def upstream_get_sentiment(text: str, component: str) -> float:
    """upstream get_sentiment: VADER's `component` score of the reply (pos/neg/neu in [0, 1], 1.0 = all such wording;
    compound, in [-1, 1], is clipped at 0 as a score).
    """
    return float(vader_scores(text)[component])


# Tokens as NLTK's word_tokenize splits them, closely enough for counting: words (with
# inner apostrophes split off as clitics), numbers, and each punctuation mark.
_TREEBANK = re.compile(r"[A-Za-z]+(?=n't)|n't|'[A-Za-z]+|[^\W_]+(?:[-.][^\W_]+)*|\.\.\.|[^\w\s]", re.UNICODE)
_NOT_PLURAL = frozenset("""
is was has does this its his hers yours ours theirs always perhaps plus thus us yes gas bus news
series species means whereas besides towards afterwards sometimes nevertheless lens bias chaos
physics mathematics economics politics ethics gymnastics athletics billiards measles
""".split())


def _looks_plural_noun(tok: str) -> bool:
    from personadrift.protocol.judges.lexical import _zipf_en

    w = tok.lower()
    if not w.isalpha() or len(w) < 4 or not w.endswith("s") or w.endswith(("ss", "us", "is")) or w in _NOT_PLURAL:
        return False
    stems = [w[:-1]] + ([w[:-2]] if w.endswith("es") else []) + ([w[:-3] + "y"] if w.endswith("ies") else [])
    return any(len(s) >= 3 and _zipf_en(s) >= 3.0 for s in stems)


@register("upstream_count_plural_nouns", scores_empty=True)
def upstream_count_plural_nouns(text: str) -> float:
    """upstream count_plural_nouns (approximated): plural nouns / tokens (punctuation tokens count), by a
    suffix-and-stem heuristic instead of NLTK's POS tagger; 1.0 = only plural nouns.
    """
    toks = _TREEBANK.findall(text)
    return _fraction(sum(_looks_plural_noun(t) for t in toks), len(toks))


_JSON_SHAPE = re.compile(r'\{"thought":.*, "response":.*\}')


@register("upstream_is_valid_json_format", scores_empty=True)
def upstream_is_valid_json_format(text: str) -> float:
    """upstream is_valid_json_format: 1.0 if one line holds '{"thought":' ... ', "response":' ... '}' (a textual test,
    not a JSON parse).
    """
    return float(_JSON_SHAPE.search(text) is not None)


@register("upstream_is_valid_list_format", scores_empty=True)
def upstream_is_valid_list_format(text: str) -> float:
    """upstream is_valid_list_format: items without a space / items, between the first '[' and the first ']' split at ',
    ' (1.0 = all single words); 0.0 without both brackets.
    """
    start, end = text.find("["), text.find("]")
    if start == -1 or end == -1:
        return 0.0
    items = text[start + 1 : end].split(", ")  # a ']' before the '[' gives one empty item, as upstream
    return _fraction(sum(" " not in v for v in items), len(items))


@register("upstream_is_valid_dash_format", scores_empty=True)
def upstream_is_valid_dash_format(text: str) -> float:
    """upstream is_valid_dash_format: chunks of exactly one character / chunks, splitting at '-' (1.0 = 'l-i-k-e-s-o').
    """
    chunks = text.split("-")
    return _fraction(sum(len(c) == 1 for c in chunks), len(chunks))


@register("upstream_does_not_contain", scores_empty=True, words=Arg(list[str], non_empty))
def upstream_does_not_contain(text: str, words: list) -> float:  # noqa: A002
    """upstream does_not_contain: 0.0 if any of `words` (compared as given) is a word of the reply (punctuation removed,
    lower case, whitespace split); else 1.0, also for an empty reply.
    """
    ws = set(_strip_punct_lower_split(text))
    return 0.0 if any(w in ws for w in words) else 1.0


def _targets(words, wordlist: str):
    if bool(words) == bool(wordlist):
        raise ValueError("give exactly one of words and wordlist")
    return WORDLISTS[wordlist]() if wordlist else frozenset(words)


@register("upstream_fraction_of_text_that_is_a_target", scores_empty=True,
          words=list[str], wordlist=Arg(str, one_of("", *WORDLISTS)))
def upstream_fraction_of_text_that_is_a_target(text: str, words: Sequence = (), wordlist: str = "") -> float:  # noqa: A002
    """upstream fraction_of_text_that_is_a_target: words of the reply (punctuation removed, lower case) that are in
    `words` (as given) or `wordlist` / words (1.0 = only such words); raises on a reply without words, as upstream.
    """
    targets = _targets(words, wordlist)
    ws = _strip_punct_lower_split(text)
    if not ws:
        raise UpstreamExpressionError("fraction_of_text_that_is_a_target divides by zero on a reply without words")
    return sum(w in targets for w in ws) / len(ws)


@register("upstream_fraction_of_target_words_hit", scores_empty=True, words=Arg(list[str], non_empty))
def upstream_fraction_of_target_words_hit(text: str, words: list) -> float:  # noqa: A002
    """upstream fraction_of_target_words_hit: `words` (compared as given) that are words of the reply (punctuation
    removed, lower case) / len(words); 1.0 = all of them.
    """
    ws = set(_strip_punct_lower_split(text))
    return sum(w in ws for w in words) / len(words)


def _first_word_of(sentence: str) -> str:
    parts = sentence.split()
    if not parts:
        raise UpstreamExpressionError("sentences_start_with: a sentence without words (upstream's split()[0] raises)")
    return parts[0].translate(_PUNCT).lower()


@register("upstream_sentences_start_with", scores_empty=True, word=Arg(str, non_empty))
def upstream_sentences_start_with(text: str, word: str) -> float:
    """upstream sentences_start_with over split_into_sentences: sentences whose first word (punctuation removed) is
    `word` / sentences, compared in lower case on both sides (upstream lower-cases only the sentence's word, see
    DIFFERENCES); 1.0 = every sentence.
    """
    ss = upstream_sentences(text)
    target = word.lower()
    return _fraction(sum(_first_word_of(s) == target for s in ss), len(ss))


@register("upstream_is_alliteration", scores_empty=True)
def upstream_is_alliteration(text: str) -> float:
    """upstream is_alliteration: words (\\b\\w+\\b, lower case) starting with the most common initial / words; 1.0 = one
    initial for all.
    """
    ws = re.findall(r"\b\w+\b", text.lower())
    if not ws:
        return 0.0
    return Counter(w[0] for w in ws).most_common(1)[0][1] / len(ws)


@register("upstream_is_valid_sentence_word_count", scores_empty=True,
          pattern=Arg(list[int], lambda v: None if v and all(x > 0 for x in v)
                      else "must be a non-empty list of positive integers"))
def upstream_is_valid_sentence_word_count(text: str, pattern: list) -> float:
    """upstream is_valid_sentence_word_count: 0.0 unless there are exactly len(`pattern`) sentences; then per sentence 1
    for the pattern's word count, 0.5 for one off, averaged (1.0 = the exact pattern).
    """
    ss = upstream_sentences(text)
    if len(ss) != len(pattern):
        return 0.0
    got = 0.0
    for s, n in zip(ss, pattern):
        k = len(s.split())
        got += 1.0 if k == n else 0.5 if abs(k - n) == 1 else 0.0
    return got / len(ss)


@register("upstream_is_increasing_sentence_word_count", scores_empty=True)
def upstream_is_increasing_sentence_word_count(text: str) -> float:
    """upstream is_increasing_sentence_word_count: sentences with one word more than the previous one (the first needs
    one word) / sentences; 1.0 = 1, 2, 3, ... words.
    """
    ss = upstream_sentences(text)
    prev, hits = 0, 0
    for s in ss:
        k = len(s.split())
        hits += k == prev + 1
        prev = k
    return _fraction(hits, len(ss))


def _is_language(text: str, code: str) -> bool:
    try:
        langs = _langs(text)
        return bool(langs) and langs[0][0] == code
    except Exception:  # upstream counts a detection error as "not this language"
        return False


@register("upstream_is_valid_alternating_french_english", scores_empty=True)
def upstream_is_valid_alternating_french_english(text: str) -> float:
    """upstream is_valid_alternating_french_english: over the parts split at ') ' that contain '(', split at ' (': 0.5
    per part whose first half is detected French and 0.5 if its second is English, averaged (1.0 = perfect
    alternation).
    """
    pairs = [part.split(" (") for part in text[:SLOW_JUDGE_MAX_CHARS].split(") ") if "(" in part]
    got = 0.0
    for pair in pairs:
        if len(pair) == 2:
            got += 0.5 * _is_language(pair[0].strip(), "fr") + 0.5 * _is_language(pair[1].strip(), "en")
    return _fraction(got, len(pairs))


@register("upstream_close_to_num", scores_empty=True, target=Arg(int, positive))
def upstream_close_to_num(text: str, target: int) -> float:
    """upstream close_to_num: 1.0 if the first run of digits equals `target`, falling linearly to 0 at `target` away;
    raises without digits, as upstream.
    """
    m = re.search(r"[0-9]+", text)
    if m is None:
        raise UpstreamExpressionError("close_to_num: no number in the reply (upstream subtracts from None)")
    diff = abs(int(m.group(0)) - target)
    return abs(1 - max(0, min(diff / target, 1)))


def _first_word_or_raise(ws: list[str], helper: str) -> str:
    if not ws:
        raise UpstreamExpressionError(f"{helper}: a reply without words (upstream's words[0] raises)")
    return ws[0]


def _case_kind(word: str) -> tuple[bool, bool]:
    letters = [c for c in word if c.isalpha()]
    return all(c.isupper() for c in letters), all(c.islower() for c in letters)  # both True without letters


@register("upstream_fraction_alter_upper_lower", scores_empty=True)
def upstream_fraction_alter_upper_lower(text: str) -> float:
    """upstream fraction_alter_upper_lower: words whose case (ALL UPPER / all lower) flips from the previous word, the
    first counting if it is either / words (1.0 = strict alternation).
    """
    ws = text.split()
    up, low = _case_kind(_first_word_or_raise(ws, "fraction_alter_upper_lower"))
    hits = int(up or low)
    for w in ws[1:]:
        cu, cl = _case_kind(w)
        hits += (cu and low) or (cl and up)
        up, low = cu, cl
    return hits / len(ws)


@register("upstream_teenager_score", scores_empty=True)
def upstream_teenager_score(text: str) -> float:
    """upstream teenager_score (with this project's slang list): words (punctuation but apostrophes removed, lower case)
    that are teen slang / words; 1.0 = only slang.
    """
    from personadrift.protocol.judges.wordlists import TEEN_SLANG

    ws = text.translate(_PUNCT_BUT_APOSTROPHE).lower().split()
    return _fraction(sum(w in TEEN_SLANG for w in ws), len(ws))


# Verb classification for fraction_past_tense_verbs without a POS tagger.
def _verb_kind(word: str, prev: str) -> str:
    from personadrift.protocol.judges.lexical import is_regular_past
    from personadrift.protocol.judges.wordlists import (
        IRREGULAR_PAST,
        PRESENT_BASE,
        PRESENT_FINITE,
        SUBJECT_PRONOUNS,
    )

    if word in IRREGULAR_PAST or is_regular_past(word):
        return "past"
    if word in PRESENT_FINITE or (word in PRESENT_BASE and prev in SUBJECT_PRONOUNS) or (
            len(word) > 4 and word.endswith("ing")
            and word not in ("thing", "nothing", "something", "anything", "everything", "morning", "evening",
                             "during")):
        return "other"
    return ""


@register("upstream_fraction_past_tense_verbs", scores_empty=True)
def upstream_fraction_past_tense_verbs(text: str) -> float:
    """upstream fraction_past_tense_verbs (approximated): past verbs / verbs, 1.0 when no verb is found (as upstream);
    verbs found by word lists and suffixes instead of NLTK's POS tagger.
    """
    ws = [t.lower() for t in _TREEBANK.findall(text)]
    kinds = [_verb_kind(w, ws[i - 1] if i else "") for i, w in enumerate(ws)]
    verbs = [k for k in kinds if k]
    return sum(k == "past" for k in verbs) / len(verbs) if verbs else 1.0


@register("upstream_fraction_unique_words", scores_empty=True)
def upstream_fraction_unique_words(text: str) -> float:
    """upstream fraction_unique_words: words (\\b\\w+\\b, lower case) occurring exactly once / words; 1.0 = no word
    repeated.
    """
    ws = re.findall(r"\b\w+\b", text.lower())
    return _fraction(sum(c == 1 for c in Counter(ws).values()), len(ws))


@register("upstream_fraction_repeated_words", scores_empty=True)
def upstream_fraction_repeated_words(text: str) -> float:
    """upstream fraction_repeated_words: distinct words (\\b\\w+\\b, lower case) occurring twice or more / words (so at
    most 0.5, never 1.0).
    """
    ws = re.findall(r"\b\w+\b", text.lower())
    return _fraction(sum(c >= 2 for c in Counter(ws).values()), len(ws))


# This project's colour list (upstream's is not copied): substrings of the lower-cased reply.
COLOURS = frozenset("""
red blue green yellow orange purple pink brown black white grey gray violet indigo magenta cyan
teal turquoise maroon navy olive beige tan coral lavender lilac gold golden silver bronze peach
mint emerald ruby amber ivory cream charcoal crimson scarlet burgundy plum salmon khaki mauve
ochre sepia azure cobalt vermilion chartreuse fuchsia aquamarine periwinkle copper rust sapphire
""".split())
_NUMBER = re.compile(
    r"\b\d+\b|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    r"fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|"
    r"hundred|thousand)\b", re.IGNORECASE)


@register("upstream_contains_color_and_number", scores_empty=True)
def upstream_contains_color_and_number(text: str) -> float:
    """upstream contains_color_and_number (with this project's colour list): 1.0 if a colour occurs as a substring of
    the lower-cased reply and a number (digits or an English number word) as a word.
    """
    low = text.lower()
    return float(any(c in low for c in COLOURS) and _NUMBER.search(low) is not None)


@register("upstream_fraction_alter_short_long", scores_empty=True)
def upstream_fraction_alter_short_long(text: str) -> float:
    """upstream fraction_alter_short_long: words whose length class (long = more than 4 characters; the first word
    counts letters only) flips from the previous word, the first always counting / words (1.0 = strict alternation).
    """
    ws = text.split()
    first = _first_word_or_raise(ws, "fraction_alter_short_long")
    prev = sum(c.isalpha() for c in first) > 4
    hits = 1
    for w in ws[1:]:
        cur = len(w) > 4
        hits += cur != prev
        prev = cur
    return hits / len(ws)


@register("upstream_fraction_alter_banana", scores_empty=True, word=Arg(str, non_empty))
def upstream_fraction_alter_banana(text: str, word: str = "banana") -> float:
    """upstream fraction_alter_banana: words (punctuation removed, lower case) whose being `word` flips from the
    previous word, the first always counting / words (1.0 = strict alternation).
    """
    ws = text.split()
    _first_word_or_raise(ws, "fraction_alter_banana")
    flags = [w.translate(_PUNCT).lower() == word for w in ws]
    return (1 + sum(a != b for a, b in zip(flags, flags[1:]))) / len(ws)


@register("upstream_fraction_sentences_that_are_questions", scores_empty=True)
def upstream_fraction_sentences_that_are_questions(text: str) -> float:
    """upstream fraction_sentences_that_are_questions: sentences with '?' among their last two characters / sentences;
    1.0 = only questions.
    """
    ss = upstream_sentences(text)
    return _fraction(sum("?" in s[-2:] for s in ss), len(ss))


@register("upstream_is_valid_repeat", scores_empty=True)
def upstream_is_valid_repeat(text: str) -> float:
    """upstream is_valid_repeat, bug fixed: word pairs (1st+2nd, 3rd+4th, ...; punctuation removed, lower case) of the
    same word / words (so at most 0.5, never 1.0).
    """
    ws = _strip_punct_lower_split(text)
    hits = sum(ws[i] == ws[i + 1] for i in range(0, len(ws) - 1, 2))
    return _fraction(hits, len(ws))


@register("upstream_get_french_percentage", scores_empty=True)
def upstream_get_french_percentage(text: str) -> float:
    """upstream get_french_percentage: langdetect's probability of French (seeded; 1.0 = surely French); raises where
    langdetect finds no features, as upstream.
    """
    from langdetect.lang_detect_exception import LangDetectException

    try:
        langs = _langs(text)
    except LangDetectException as e:
        raise UpstreamExpressionError(f"get_french_percentage: langdetect raises ({e})") from None
    return next((p for lang, p in langs if lang == "fr"), 0.0)


# ---- the plain Python tests of the lambdas --------------------------------------------------------
@register("substring_any", scores_empty=True, substrings=Arg(list[str], non_empty), lowercase=bool)
def substring_any(text: str, substrings: list, lowercase: bool = False) -> float:
    """1.0 if any of `substrings` occurs in the reply (in its str.lower() form if `lowercase`): Python's `s in x`,
    exactly.
    """
    t = text.lower() if lowercase else text
    return float(any(s in t for s in substrings))


@register("token_any", scores_empty=True, tokens=Arg(list[str], non_empty), lowercase=bool)
def token_any(text: str, tokens: list, lowercase: bool = False) -> float:
    """1.0 if any of `tokens` is one of the reply's whitespace-separated tokens (after str.lower() if `lowercase`): `w
    in x.lower().split()`.
    """
    ws = set((text.lower() if lowercase else text).split())
    return float(any(w in ws for w in tokens))


@register("first_token_is", scores_empty=True, token=Arg(str, non_empty))
def first_token_is(text: str, token: str) -> float:
    """1.0 if the reply's first whitespace-separated token is exactly `token` (`x.split()[0] == token`); raises on an
    empty reply, as that expression does.
    """
    ws = text.split()
    if not ws:
        raise UpstreamExpressionError("x.split()[0] of a reply without words raises IndexError")
    return float(ws[0] == token)


#: Deliberate differences from upstream, per judge: the importer copies them into the notes
#: of every persona whose judge uses one of these (and into its report).
DIFFERENCES = {
    "upstream_get_sentiment":
        "VADER from the vaderSentiment package (3.3.2; the lexicon ships in the wheel) instead of "
        "NLTK's port with its downloaded vader_lexicon: same lexicon and rules, but scores can differ "
        "on some texts (emoji, some negations); NLTK data is not installable offline. Only the first "
        "10,000 characters are scored (VADER's time grows quadratically; probe answers are shorter)",
    "upstream_count_plural_nouns":
        "no POS tagger offline (NLTK's tagger data is not on PyPI): plural nouns are found by a "
        "suffix-and-stem heuristic (wordfreq), so verbs such as 'visits' count and irregular "
        "plurals ('children') do not",
    "upstream_fraction_past_tense_verbs":
        "no POS tagger offline: verbs are found by this project's word lists and "
        "suffixes (irregular pasts, -ed stems, present forms, -ing), not NLTK's tagger",
    "upstream_fraction_of_text_that_is_a_target:frequent_words":
        "upstream downloads google-10000-english-usa at import time; here wordfreq's 10,000 most frequent English "
        "words stand in (a different list: scores differ on words in one list only)",
    "upstream_fraction_of_text_that_is_a_target:one_syllable_words":
        "upstream downloads a 25,000-word one-syllable list at import time; here the one-syllable words of the CMU "
        "pronouncing dictionary stand in (a larger list: some scores are higher)",
    "upstream_get_french_percentage":
        "langdetect is seeded here (a private, deterministic detector); upstream's is not "
        "seeded, so its value on the same text varies from run to run",
    "upstream_is_valid_alternating_french_english":
        "langdetect is seeded here (deterministic); upstream's is not. Only "
        "the first 10,000 characters are scored (one detection per pair)",
    "upstream_teenager_score":
        "this project's slang list replaces upstream's (the upstream repository has no license, "
        "so its word list is not copied): scores differ on words in one list only",
    "upstream_contains_color_and_number":
        "this project's colour list replaces upstream's (not copied): replies naming "
        "only a colour outside this list score 0",
    "upstream_sentences_start_with":
        "upstream bug fixed: upstream compares the lower-cased first word with the word as "
        "written, so a capitalised word ('Yes') never matches and the score is always 0; "
        "here both sides are lower-cased",
    "upstream_is_valid_repeat":
        "upstream bug fixed: upstream compares each word with the next word written twice "
        "('so' == 'soso'), which never holds, so its score is always 0; here a pair counts when "
        "both words are equal (upstream's denominator, all words, is kept: at most 0.5)",
}
