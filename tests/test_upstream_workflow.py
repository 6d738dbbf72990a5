"""personas.upstream_file in a real Snakemake run: the import rule, its sha256 check, and the
planning-time errors (file missing, different file) -- without running any model."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from personadrift.protocol.upstream import UPSTREAM_SHA256
from support.workflow import REPO

BIN = Path(sys.executable).parent
FIXTURE = REPO / "tests" / "fixtures" / "upstream" / "hundred_system_prompts.py"
FIXTURE_SHA = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=600)


def _config(work: Path, **personas) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text(encoding="utf-8"))
    cfg["personas"].update(personas)
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _imported(sha: str) -> str:
    return f"resources/personas/upstream-{sha[:12]}/personas.yaml"


@pytest.mark.slow
def test_the_import_rule_runs_before_calibration_and_writes_the_personas(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "hundred_system_prompts.py")
    cfg = _config(tmp_path, upstream_file="hundred_system_prompts.py", upstream_sha256=FIXTURE_SHA)
    plan = snakemake(tmp_path, "--configfile", str(cfg), "-n", "results/smoke/calibration.csv")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "import_upstream" in plan.stdout and "calibrate" in plan.stdout
    run = snakemake(tmp_path, "--configfile", str(cfg), "--cores", "1", _imported(FIXTURE_SHA))
    assert run.returncode == 0, run.stderr[-3000:]
    data = yaml.safe_load((tmp_path / _imported(FIXTURE_SHA)).read_text(encoding="utf-8"))
    assert len(data["personas"]) == 25 and data["personas"][1]["category"] == "multiple_choice"
    report = yaml.safe_load((tmp_path / _imported(FIXTURE_SHA)).with_name("report.yaml").read_text(encoding="utf-8"))
    assert report["sha256"] == FIXTURE_SHA and report["unmapped"] == []


def test_the_topics_import_rule_runs_before_calibration_and_writes_the_topics(tmp_path):
    utils = REPO / "tests" / "fixtures" / "upstream" / "utils.py"
    sha = hashlib.sha256(utils.read_bytes()).hexdigest()
    shutil.copy(utils, tmp_path / "utils.py")
    cfg = _config(tmp_path, upstream_topics_file="utils.py", upstream_topics_sha256=sha)
    plan = snakemake(tmp_path, "--configfile", str(cfg), "-n", "results/smoke/calibration.csv")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "import_upstream_topics" in plan.stdout and "calibrate" in plan.stdout
    out = f"resources/personas/upstream-topics-{sha[:12]}/topics.yaml"
    run = snakemake(tmp_path, "--configfile", str(cfg), "--cores", "1", out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(yaml.safe_load((tmp_path / out).read_text(encoding="utf-8"))["topics"]) == 7
    unstated = snakemake(tmp_path, "--configfile", str(_config(tmp_path, upstream_topics_file="utils.py")),
                         "-n", "results/smoke/calibration.csv")
    assert unstated.returncode != 0 and "personas.upstream_topics_sha256" in unstated.stdout + unstated.stderr


def test_a_missing_file_fails_at_planning_saying_where_to_get_it(tmp_path):
    cfg = _config(tmp_path, upstream_file="hundred_system_prompts.py")
    out = snakemake(tmp_path, "--configfile", str(cfg), "-n", "results/smoke/calibration.csv")
    assert out.returncode != 0
    msg = out.stdout + out.stderr
    assert "personas.upstream_file" in msg and "file not found" in msg
    assert "raw.githubusercontent.com/likenneth/persona_drift/e5b57b0/hundred_system_prompts.py" in msg


def test_a_different_file_is_refused_naming_both_sums_unless_overridden(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "hundred_system_prompts.py")
    cfg = _config(tmp_path, upstream_file="hundred_system_prompts.py")   # default: the released file's sum
    out = snakemake(tmp_path, "--configfile", str(cfg), "-n", "results/smoke/calibration.csv")
    msg = out.stdout + out.stderr
    assert out.returncode != 0 and FIXTURE_SHA in msg and UPSTREAM_SHA256 in msg and "upstream_sha256" in msg


def test_the_default_keeps_this_projects_personas(tmp_path):
    out = snakemake(tmp_path, "--configfile", str(REPO / "configs" / "smoke.yaml"), "-n", "results/smoke/calibration.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "import_upstream" not in out.stdout


@pytest.mark.parametrize("key,value,problem", [
    ("upstream_sha256", "abc", "does not match"),
    ("upstream_file", 3, "got int 3"),
])
def test_bad_upstream_keys_are_named(tmp_path, key, value, problem):
    cfg = _config(tmp_path, **{key: value})
    out = snakemake(tmp_path, "--configfile", str(cfg), "-n", "results/smoke/calibration.csv")
    msg = out.stdout + out.stderr
    assert out.returncode != 0 and f"personas.{key}" in msg and problem in msg
