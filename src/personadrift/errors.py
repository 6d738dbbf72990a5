"""Errors a user can act on: each names the file, the field and the problem.

The command line prints these as one line, without a traceback, and exits 2.
"""

from __future__ import annotations


class PersonaDriftError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""

    # whether running the same job again (a Snakemake retry) could succeed: input errors
    # fail the same way every time (runtime/attempts.py)
    retryable = False


class InputError(PersonaDriftError):
    """A config, persona or data file is wrong.

    ``path`` is the file, ``field`` a dotted path inside it (``sampling.top_p``,
    ``personas[3].judge.args.letter``), ``problem`` says what is wrong.
    """

    def __init__(self, path: object, field: str | None, problem: str):
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = self.path if not field else f"{self.path}: {field}"
        super().__init__(f"{where}: {problem}")


class ChecksumError(PersonaDriftError):
    """A fetched or cached file does not have its pinned sha256."""

    def __init__(self, path: object, expected: str, actual: str, hint: str = ""):
        self.path, self.expected, self.actual = str(path), expected, actual
        msg = f"{path}: sha256 is {actual}, expected {expected}"
        super().__init__(msg + (f" ({hint})" if hint else ""))
