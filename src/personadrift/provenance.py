"""Provenance: what produced a file, recorded beside it or inside it."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

PACKAGES = (
    "personadrift", "torch", "transformers", "accelerate", "tokenizers", "gguf",
    "numpy", "pandas", "scipy", "langdetect", "vaderSentiment", "wordfreq", "openai", "snakemake",
)


@functools.cache
def package_versions() -> dict:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with '+dirty' if it has changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) if commit else None


SCHEDULER_VARS = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")


def hardware() -> dict:
    info: dict[str, object] = {"machine": platform.machine(), "python": platform.python_version(),
                               "host": platform.node()}
    # which scheduler job and which GPUs it was given, when there is one
    info.update({k: os.environ[k] for k in SCHEDULER_VARS if k in os.environ})
    # Only a job that loaded torch has threads and devices worth recording; importing it here
    # would add seconds to every table and figure job (its version is in package_versions).
    torch = sys.modules.get("torch")
    if torch is not None:
        from personadrift.numerics import record

        info["torch_threads"] = torch.get_num_threads()
        info["cpu_numerics"] = record()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def provenance(**extra) -> dict:
    """A provenance record: package versions, git commit, hardware, time, and ``extra``."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "hardware": hardware(),
        **extra,
    }
