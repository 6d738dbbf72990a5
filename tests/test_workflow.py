"""The real Snakemake DAG on the smoke config, in a temporary directory."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    snakemake(work, "--configfile", str(REPO / "configs/smoke.yaml"), "--cores", "2", "figures/all")
    return work


def test_smoke_workflow_builds_figures_all_and_tables(smoke):
    manifest = json.loads((smoke / "figures/all").read_text())
    figs = {e["figure"]: e for e in manifest["figures"]}
    assert "figures/drift_over_rounds.pdf" in figs and "figures/drift_over_rounds.png" in figs
    for name, entry in figs.items():
        assert hashlib.sha256((smoke / name).read_bytes()).hexdigest() == entry["sha256"]
        assert entry["tables"] and all((smoke / t).exists() for t in entry["tables"])
    scores = (smoke / "results/smoke/scores/none.csv").read_text().splitlines()
    # 3 conversations x 3 rounds (round 0 included) x 2 kinds x 2 samples, plus the header
    assert len(scores) == 1 + 3 * 3 * 2 * 2
    assert (smoke / "results/smoke/calibration.csv").exists()
    assert len(list((smoke / "results/smoke/transcripts/none").glob("shard-*/conv-*.json"))) == 3


def test_rerun_has_nothing_to_do(smoke):
    out = snakemake(smoke, "--configfile", str(REPO / "configs/smoke.yaml"), "-n", "figures/all")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_one_figure_rebuilds_from_cached_tables_without_the_model(smoke):
    (smoke / "figures/drift_over_rounds.pdf").unlink()
    out = snakemake(smoke, "--configfile", str(REPO / "configs/smoke.yaml"), "-n", "figures/drift_over_rounds.pdf")
    plan = out.stdout + out.stderr
    assert "figure" in plan
    for rule in ("selfchat", "calibrate", "fetch_model", "score"):
        assert f"rule {rule}:" not in plan and f"localrule {rule}:" not in plan
    snakemake(smoke, "--configfile", str(REPO / "configs/smoke.yaml"), "--cores", "1", "figures/drift_over_rounds.pdf")
    assert (smoke / "figures/drift_over_rounds.pdf").exists()


def test_transcripts_are_protected(smoke):
    conv = next((smoke / "results/smoke/transcripts/none").glob("shard-*/conv-*.json"))
    assert not os.access(conv, os.W_OK) or os.geteuid() == 0  # root ignores permissions
    assert (conv.stat().st_mode & 0o222) == 0


def test_lint_and_format():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    lint = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, env=env)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"], cwd=REPO,
                         capture_output=True, text=True, env=env)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_report_has_every_figure_with_its_caption(smoke, tmp_path):
    import zipfile

    snakemake(smoke, "--configfile", str(REPO / "configs/smoke.yaml"), "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        names = z.namelist()
        html = "".join(z.read(n).decode("utf-8", "replace") for n in names if n.endswith(".html"))
    assert any(n.endswith("drift_over_rounds.png") for n in names)
    assert any(n.endswith("tradeoff_stability_mmlu.png") for n in names)
    assert "Persona drift (paper Fig. 2)" in html and "softmax-dilution" in html
