"""Shared test helpers: the repository's paths and a Snakemake runner on a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv the tests run in (snakemake, personadrift)
SMOKE = REPO / "configs" / "smoke.yaml"


def snakemake(workdir, *args, check: bool = True, timeout: float | None = None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """``snakemake -s REPO/Snakefile --directory workdir ARGS`` with the venv's tools on PATH
    (and ``env``'s variables on top of this process's)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
