"""The package works when installed as a wheel (not only from this checkout): the schemas ship as
package data, and a config is validated with them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.workflow import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built into a wheel and installed into a private folder (no editable link)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # built from a copy: the build writes build/ and *.egg-info next to it
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp / "dist"),
         str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / "dist").glob("personadrift-*.whl"))
    site = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]
    return site


def run_installed(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the venv's editable link on sys.path
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_wheel_ships_the_schemas_and_validates_a_config(installed, tmp_path):
    code = (
        "import personadrift, personadrift.config as c;"
        "print(personadrift.__file__);"
        "print(c.SCHEMA_PATH.exists());"
        f"c.load_config({str(REPO / 'config.yaml')!r});"
        "print('valid')"
    )
    proc = run_installed(installed, code, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, schema_exists, verdict = proc.stdout.split()
    assert Path(where).is_relative_to(installed), f"imported {where}, not the installed wheel"
    assert schema_exists == "True"
    assert verdict == "valid"
    assert (installed / "personadrift" / "schemas" / "persona.schema.yaml").exists()


def test_wheel_refuses_a_bad_config_with_the_key_named(installed, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "config.yaml").read_text().replace("seed: 0", "seed: minus-one"))
    proc = run_installed(installed, f"import personadrift.config as c; c.load_config({str(bad)!r})", cwd=REPO)
    assert proc.returncode != 0
    assert "seed" in proc.stderr and str(bad) in proc.stderr
