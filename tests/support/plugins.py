"""Method plug-ins installed for real, with pip, without changing the venv the tests run in.

A plug-in package (``tests/plugins/<name>/``, or one a test writes with :func:`write_plugin`) is
copied to a temporary folder (a build writes ``build/`` and ``*.egg-info`` beside its source)
and installed by ``pip install --target``: without dependencies (personadrift is the venv's own)
and without a build environment (the venv's setuptools builds it, offline), into a folder of
its own. A process knows the plug-in when that folder is on its path: a workflow run through
``PYTHONPATH`` (:func:`env_with`), this process through :func:`on_path`. The venv never changes,
so a test session leaves no method installed behind it, and a test can show a method unknown
until its package is there.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.workflow import REPO

TOY_METHOD = REPO / "tests" / "plugins" / "personadrift-toy-method"


def install(package: Path, target: Path) -> Path:
    """``pip install`` the package in folder ``package`` into ``target`` (created); ``target``."""
    with tempfile.TemporaryDirectory(prefix="plugin-source-") as tmp:
        source = Path(tmp) / package.name
        shutil.copytree(package, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
             "--disable-pip-version-check", "--target", str(target), str(source)],
            capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install {package.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return target


def write_plugin(folder: Path, distribution: str, module: str, code: str, entry_points: dict[str, str]) -> Path:
    """A one-module package ``distribution`` with ``entry_points`` (name -> object reference) in
    the group ``personadrift.methods``, written to ``folder``; ``folder``."""
    folder.mkdir(parents=True)
    eps = "\n".join(f'{name} = "{ref}"' for name, ref in entry_points.items())
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{distribution}"
        version = "0.1.0"

        [project.entry-points."personadrift.methods"]
        """) + eps + f'\n\n[tool.setuptools]\npy-modules = ["{module}"]\n')
    (folder / f"{module}.py").write_text(textwrap.dedent(code))
    return folder


def env_with(target: Path) -> dict:
    """The environment variables that put ``target`` on a new process's path (first)."""
    paths = [str(target), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@contextmanager
def on_path(target: Path) -> Iterator[None]:
    """``target`` on this process's path, and the methods discovered again; on exit, the path,
    the modules imported from ``target`` and the methods as they were."""
    from personadrift.interventions import METHODS

    where = str(target)
    sys.path.insert(0, where)
    importlib.invalidate_caches()
    METHODS.rediscover()
    try:
        yield
    finally:
        sys.path.remove(where)
        for name, mod in list(sys.modules.items()):
            if str(getattr(mod, "__file__", None) or "").startswith(where + os.sep):
                del sys.modules[name]
        importlib.invalidate_caches()
        METHODS.rediscover()
