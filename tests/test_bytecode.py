"""Cached bytecode for the workflow's jobs: ``make setup`` runs personadrift.bytecode, which caches
what the jobs import even where PYTHONDONTWRITEBYTECODE forbids writing it, and the Makefile's
recipes run without that variable, so every process they start caches what it compiles."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from personadrift.bytecode import LAZY_MODULES
from support.workflow import REPO

SRC = REPO / "src" / "personadrift"


def _prefixed(prefix: Path, source: Path) -> Path:
    """Where PYTHONPYCACHEPREFIX=prefix puts the bytecode of ``source``."""
    return Path(f"{prefix}{source.parent}") / f"{source.stem}.{sys.implementation.cache_tag}.pyc"


def _run(code: str, prefix: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(prefix)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_warm_caches_bytecode_where_the_environment_forbids_it_and_names_what_it_cannot_import(tmp_path):
    """Bytecode goes to a private prefix here, so the venv's own caches cannot answer for it."""
    plain = _run("import personadrift.names", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    assert not _prefixed(tmp_path / "plain", SRC / "names.py").exists()  # the variable alone: nothing cached

    warmed = _run("from personadrift.bytecode import warm; "
                  "print(warm(['personadrift.names', 'email.mime.text', 'no_such_module_here']))", tmp_path / "warm")
    assert warmed.returncode == 0, warmed.stderr
    assert _prefixed(tmp_path / "warm", SRC / "names.py").exists()
    import email.mime.text

    assert _prefixed(tmp_path / "warm", Path(email.mime.text.__file__)).exists()
    failed = ast.literal_eval(warmed.stdout.strip().splitlines()[-1])
    assert len(failed) == 1 and failed[0].startswith("no_such_module_here:"), failed


@pytest.mark.parametrize("name", LAZY_MODULES)
def test_every_lazily_imported_module_the_setup_caches_exists(name):
    """A rename in a later transformers, gguf or snakemake would leave that module uncached."""
    assert importlib.util.find_spec(name) is not None, f"personadrift.bytecode.LAZY_MODULES: {name} is gone"


def test_the_setup_left_what_model_and_figure_jobs_import_byte_compiled():
    """In the venv as it is. Run where PYTHONDONTWRITEBYTECODE is set, this process caches nothing
    itself, so the bytecode is `make setup`'s; under `make test` every process caches what it
    imports and this holds anyway. Without it, where the variable is set, each job compiled torch
    and transformers anew: about 14 s of CPU per job, and a test suite 2.7x slower."""
    names = ("torch", "transformers", "pandas", "matplotlib.backends.backend_pdf", "fontTools.subset",
             "personadrift.generation.engine", *LAZY_MODULES)
    uncached = []
    for name in names:
        origin = importlib.util.find_spec(name).origin
        if not Path(importlib.util.cache_from_source(origin)).exists():
            uncached.append(name)
    assert not uncached, f"no cached bytecode for {uncached}: was `make setup` (personadrift.bytecode) run?"


def test_the_makefile_recipes_run_without_pythondontwritebytecode():
    probe = "bytecode-probe: ; @$(BIN)/python -c 'import sys; print(sys.flags.dont_write_bytecode)'"
    proc = subprocess.run(["make", "-s", "--no-print-directory", "--eval", probe, "bytecode-probe"], cwd=REPO,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"
