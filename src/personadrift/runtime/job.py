"""What the scheduler gave this job, as the model rules pass it (``resources`` in
rules/common.smk): the GPUs the model must run on, each card's memory, the host memory.

A model job that asked for GPUs refuses to run its model anywhere else
(``generation/models.py``: ``check_gpus_present``, ``check_placement``), sizes its model
against the cards before loading it (``generation/memory.py``: ``fit_problem``), and keeps
the prefixes it spills to host memory within its ``mem_mb`` (``generation/kv_buffers.py``).
Outside a workflow job (the command line, ``personadrift serve``, tests) nothing is required.
"""

from __future__ import annotations

from dataclasses import dataclass

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
