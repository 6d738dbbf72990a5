"""Failures a retry cannot fix, remembered from one Snakemake attempt of a job to the next.

Snakemake (9.27) retries every failed job alike (``retries:`` in the SLURM profile), with more
host memory and time: right for a job killed for memory, useless for a wrong config key or a
conversation that outgrew the context under ``context_policy: error``, and costly, since each
attempt of a model job loads the weights again (140 GB for Llama-2-70B) only to fail the same
way. Snakemake has no hook to decide per failure whether to retry, so the step decides for
itself: the model rules pass their attempt number and a note file beside their log; an attempt
that fails with an error a retry cannot fix writes the note, and the next attempt of the same
run finds it and fails at once with the same message, before importing torch. A first attempt
(a new ``snakemake`` run, after the user fixed the cause) removes a stale note and starts
afresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from personadrift.errors import PersonaDriftError

# CUDA errors no retry on the same software can fix: the driver is older than the torch wheel's
# CUDA, the wheel has no kernels for this GPU, a kernel asserted on its input (the same input
# asserts again), an operation the library does not support here. An illegal memory access, an
# ECC error or a lost device may be the node's: those are retried (perhaps elsewhere).
FATAL_CUDA_ERRORS = (
    "cuda driver version is insufficient",
    "no kernel image is available",
    "device-side assert triggered",
    "cublas_status_not_supported",
    "cudnn_status_not_supported",
    "operation not supported on this os",
    "found no nvidia driver",
)


def retryable(exc: BaseException) -> bool:
    """Whether another attempt of the same job could succeed: errors of the user's input are
    not (``PersonaDriftError.retryable``), nor the CUDA errors of :data:`FATAL_CUDA_ERRORS`;
    anything else (a crash, running out of memory, another device error) may be."""
    if isinstance(exc, PersonaDriftError):
        return exc.retryable
    message = str(exc).lower()
    return not any(m in message for m in FATAL_CUDA_ERRORS)


@dataclass
class NoRetryNote:
    """The note file of one job (``path``) as seen by its attempt number ``attempt``."""

    path: Path
    attempt: int

    def earlier_failure(self) -> dict | None:
        """An earlier attempt's unfixable failure (attempt, error, message), on a retry; on a
        first attempt the stale note of an earlier run is removed and None returned."""
        if self.attempt <= 1:
            self.path.unlink(missing_ok=True)
            return None
        try:
            note = json.loads(self.path.read_text())
            return {"attempt": int(note["attempt"]), "error": str(note["error"]), "message": str(note["message"])}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # a note cut short or foreign: retry rather than trust it
            return None

    def record(self, exc: BaseException) -> None:
        """Write the note when ``exc`` is an error a retry cannot fix."""
        if retryable(exc) or isinstance(exc, RepeatedFailure):  # the first attempt's note stays
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"attempt": self.attempt, "error": type(exc).__name__,
                                   "message": str(exc)}, indent=2) + "\n")
        tmp.replace(self.path)


class RepeatedFailure(PersonaDriftError):
    """An earlier attempt of this job failed with an error a retry cannot fix."""

    def __init__(self, earlier: dict, note: NoRetryNote):
        super().__init__(f"{earlier['message']} (attempt {note.attempt} not run: attempt {earlier['attempt']} failed "
                         f"with this error, which a retry cannot fix; see {note.path})")


def keep_memory_notes(note: NoRetryNote):
    """Keep this job's memory note (``personadrift.job.MemoryNote``) beside its no-retry note
    (``<log>.oom``) for the process."""
    from personadrift import job

    return job.keep_memory_note(job.MemoryNote(note.path.with_suffix(".oom"), note.attempt))
