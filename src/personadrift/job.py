"""What the scheduler gave this job, as the model rules pass it (``resources`` in
rules/common.smk): the GPUs the model must run on, each card's memory, the host memory; and what
an earlier attempt of the job learned about its device memory (:class:`MemoryNote`).

A model job that asked for GPUs refuses to run its model anywhere else
(``generation/models.py``: ``check_gpus_present``, ``check_placement``), sizes its model
against the cards before loading it (``generation/memory.py``: ``fit_problem``), and keeps
the prefixes it spills to host memory within its ``mem_mb`` (``generation/kv_buffers.py``).
Outside a workflow job (the command line, ``personadrift serve``, tests) nothing is required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# the share of the job's host memory that spilled prefixes may take: the rest holds the
# process, the loaded weights' host copies while loading, the outputs
HOST_SPILL_FRACTION = 0.25


@dataclass(frozen=True)
class JobResources:
    gpus: int = 0  # GPUs the model must run on (0: none required)
    gpu_memory_gb: float = 0.0  # memory of one card (0: not stated)
    mem_mb: int = 0  # the job's host memory (0: not stated)

    def host_spill_bytes(self) -> int | None:
        """Bytes of host memory spilled prefixes may take (None: no limit stated)."""
        return int(self.mem_mb * 2**20 * HOST_SPILL_FRACTION) if self.mem_mb else None


_current = JobResources()


def set_current(resources: JobResources) -> None:
    global _current
    _current = resources


def current() -> JobResources:
    return _current


@dataclass
class MemoryNote:
    """What running out of device memory taught one job, kept for its next attempt: the positions
    (rows x context) a forward failed at, halved (``generation/memory.py``). Snakemake's retry of
    a job that ran out of memory then starts below that size instead of failing the same way
    after loading the weights again. A first attempt (a new run) starts afresh."""

    path: Path
    attempt: int

    def __post_init__(self):
        if self.attempt <= 1:
            self.path.unlink(missing_ok=True)

    def load(self) -> int | None:
        try:
            return int(json.loads(self.path.read_text())["oom_positions"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, positions: int) -> None:
        known = self.load()
        if known is not None and known <= positions:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"attempt": self.attempt, "oom_positions": int(positions)}) + "\n")
        tmp.replace(self.path)


_memory_note: MemoryNote | None = None


def keep_memory_note(note: MemoryNote) -> MemoryNote:
    global _memory_note
    _memory_note = note
    return note


def memory_note() -> MemoryNote | None:
    """This job's memory note, if the command line named a note file (a workflow job)."""
    return _memory_note
