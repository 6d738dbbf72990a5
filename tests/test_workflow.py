"""The real Snakemake DAG on the smoke config, in a temporary directory."""

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from support.workflow import BIN, REPO, snakemake

pytestmark = pytest.mark.slow  # every test here reads (or makes) a real workflow run


def test_smoke_workflow_builds_figures_all_and_tables(smoke):
    manifest = json.loads((smoke / "figures/all").read_text())
    figs = {e["figure"]: e for e in manifest["figures"]}
    assert "figures/smoke/drift_over_rounds.pdf" in figs and "figures/smoke/drift_over_rounds.png" in figs
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
    (smoke / "figures/smoke/drift_over_rounds.pdf").unlink()
    out = snakemake(smoke, "--configfile", str(REPO / "configs/smoke.yaml"), "-n", "figures/smoke/drift_over_rounds.pdf")
    plan = out.stdout + out.stderr
    assert "figure" in plan
    for rule in ("selfchat", "calibrate", "fetch_model", "score"):
        assert f"rule {rule}:" not in plan and f"localrule {rule}:" not in plan
    snakemake(smoke, "--configfile", str(REPO / "configs/smoke.yaml"), "--cores", "1", "figures/smoke/drift_over_rounds.pdf")
    assert (smoke / "figures/smoke/drift_over_rounds.pdf").exists()


def _job_starts(log: Path) -> list[tuple[time.struct_time, str, str]]:
    """(time, rule, wildcards) of every job a Snakemake log shows starting, in log order."""
    starts, stamp, pending = [], None, None
    for line in log.read_text().splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line):
            stamp = time.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"(?:local)?rule (\w+):$", line):
            pending = m.group(1)
            starts.append((stamp, pending, ""))
        elif pending and (m := re.match(r"\s+wildcards: (.*)", line)):
            starts[-1] = (stamp, pending, m.group(1))
            pending = None
    return starts


def test_jobs_start_in_priority_order(smoke):
    """The smoke run's own log (2 cores): calibration starts no later than any MMLU job (the
    persona pool gates every self-chat), and the guided self-chat no later than the others."""
    # log names start with their time: the first one that ran calibration is the smoke run's
    logs = sorted(p for p in (smoke / ".snakemake/log").glob("*.snakemake.log") if "rule calibrate:" in p.read_text())
    assert logs, "the smoke run left no Snakemake log"
    starts = _job_starts(logs[0])
    first = {}
    for stamp, rule, _wildcards in starts:
        first.setdefault(rule, stamp)
    assert first["calibrate"] <= first["mmlu"], starts
    selfchats = [(stamp, wildcards) for stamp, rule, wildcards in starts if rule == "selfchat"]
    guided = min(stamp for stamp, wildcards in selfchats if "setting=cfg" in wildcards)
    assert guided <= min(stamp for stamp, wildcards in selfchats if "setting=cfg" not in wildcards), selfchats


def test_transcripts_are_protected(smoke):
    conv = next((smoke / "results/smoke/transcripts/none").glob("shard-*/conv-*.json"))
    assert not os.access(conv, os.W_OK) or os.geteuid() == 0  # root ignores permissions
    assert (conv.stat().st_mode & 0o222) == 0


def test_every_result_file_is_readable_as_the_umask_allows(smoke):
    from personadrift.storage import umask

    mask = umask()
    if mask & 0o044:
        pytest.skip(f"umask {mask:o} withholds group or other read")
    paths = [p for d in ("results", "resources", "figures") for p in (smoke / d).rglob("*")]
    assert len(paths) > 50

    def wanted(p: Path) -> int:  # read by group and others; folders also searchable
        return 0o055 if p.is_dir() else 0o044

    unreadable = [str(p.relative_to(smoke)) for p in paths if (p.stat().st_mode & wanted(p)) != wanted(p)]
    assert not unreadable, unreadable[:10]


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


def _mutated(work, tmp_path, name, **changes):
    import yaml

    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


NO_MODEL_RERUN = {  # keys that change tables and figures only
    "resamples": {"scoring.resamples": 300}, "confidence": {"scoring.confidence": 0.9},
    "unit": {"scoring.bootstrap_unit": "row"}, "attention": {"attention.conversations": 2},
    "attention-layers": {"attention.layers": [0]}, "chosen": {"interventions.split.chosen": 0.5},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(NO_MODEL_RERUN))
def test_a_scoring_or_attention_key_reruns_no_selfchat_and_no_mmlu(smoke, tmp_path, case):
    cfg = _mutated(smoke, tmp_path, case, **NO_MODEL_RERUN[case])
    plan = snakemake(smoke, "figures/all", "-n", "--configfile", str(cfg))
    text = plan.stdout + plan.stderr
    for rule in ("selfchat", "mmlu", "calibrate", "fetch_model"):
        assert f"rule {rule}:" not in text, f"{case} reruns {rule}:\n{text[-3000:]}"
    assert "Nothing to be done" in text or "rule " in text


@pytest.mark.slow
def test_a_sampling_key_reruns_the_selfchat_but_not_mmlu(smoke, tmp_path):
    cfg = _mutated(smoke, tmp_path, "temp", **{"selfchat.temperature": 0.7})
    text = "".join(snakemake(smoke, "figures/all", "-n", "--configfile", str(cfg)).stdout)
    assert "rule selfchat:" in text and "Params have changed" in text
    assert "rule mmlu:" not in text  # MMLU scores log-probabilities: sampling does not enter it


@pytest.mark.slow
def test_control_setting_runs_without_a_user_persona(smoke):
    conv = json.loads(next((smoke / "results/smoke/transcripts/control").glob("shard-*/conv-*.json")).read_text())
    base = json.loads(next((smoke / "results/smoke/transcripts/none").glob("shard-*/conv-*.json")).read_text())
    assert conv["user_has_system_prompt"] is False and base["user_has_system_prompt"] is True
    assert conv["agent"] == base["agent"] and conv["topic"] == base["topic"]  # same plan, same seeds
    assert (smoke / "results/smoke/tables/control/by_round.csv").exists()
    assert not (smoke / "results/smoke/mmlu/control.csv").exists()


@pytest.mark.slow
def test_readme_single_figure_command_works_without_activating_the_venv(smoke):
    """`.venv/bin/snakemake figures/<study>/X.pdf` with the venv not on PATH: the rules find the CLI
    beside the Python running Snakemake."""
    (smoke / "figures/smoke/example_dialog.pdf").unlink()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(smoke),
                           "figures/smoke/example_dialog.pdf", "--cores", "1", "--configfile", str(REPO / "configs/smoke.yaml")],
                          capture_output=True, text=True, env=env, cwd=smoke)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (smoke / "figures/smoke/example_dialog.pdf").exists()


def test_readme_make_figure_command_rebuilds_one_figure(smoke):
    """The reviewer's map's command, `make figure NAME=...`, as the README writes it (pointed at
    the smoke run's folder with DIR=, and at this test session's venv): one figure, nothing else."""
    venv = BIN.parent
    if not (venv / ".installed").exists():
        pytest.skip(f"{venv} was not made by `make setup` (no .installed marker); make would build a new venv")
    (smoke / "figures/smoke/drift_over_rounds.pdf").unlink()
    # -o: never rebuild the venv from here, whatever the timestamps of requirements.txt say
    proc = subprocess.run(["make", "-C", str(REPO), "-o", str(venv / ".installed"), "figure", "NAME=drift_over_rounds", f"DIR={smoke}",
                           "CONFIG=configs/smoke.yaml", f"VENV={venv}", "CORES=1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (smoke / "figures/smoke/drift_over_rounds.pdf").exists()
    assert "selfchat" not in proc.stdout + proc.stderr  # no model job: the figure is drawn from tables


def test_repetition_takes_the_baselines_mmlu_without_a_model_job(smoke):
    """Repetition leaves a single-turn prompt as the baseline runs it, so its MMLU table is the
    baseline's rows under its own name (rule mmlu_from_baseline), with no model job of its own."""
    import pandas as pd

    res = smoke / "results/smoke/mmlu"
    base, rep = pd.read_csv(res / "none.csv"), pd.read_csv(res / "repeat-every1.csv")
    assert set(rep["setting"]) == {"repeat-every1"}
    pd.testing.assert_frame_equal(base.drop(columns="setting"), rep.drop(columns="setting"))
    prov = json.loads((res / "repeat-every1.csv.provenance.json").read_text())
    assert prov["copied_from"].endswith("mmlu/none.csv") and prov["setting"]["method"] == "repetition"
    assert prov["accuracy"] == json.loads((res / "none.csv.provenance.json").read_text())["accuracy"]
    # the settings that change the prompt were scored by the model (their own timing recorded)
    for name in ("none", "split-k0.5", "cfg-g1.5"):
        assert "scoring_seconds" in json.loads((res / f"{name}.csv.provenance.json").read_text())


def test_table_and_figure_steps_do_not_import_torch(smoke, tmp_path):
    """A table or figure job pays no torch import (seconds per job on 2 cores, #16): the score,
    drift-table, MMLU-copy and figure steps run on the smoke run's files in a fresh interpreter."""
    res = smoke / "results/smoke"
    cfg = str(REPO / "configs/smoke.yaml")
    script = (
        "import sys, json\n"
        "from personadrift.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    assert main(argv) in (0, None), argv\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n"
    )
    runs = [
        ["score", "--config", cfg, "--out", str(tmp_path / "s.csv"),
         *map(str, sorted((res / "transcripts/none").glob("shard-*")))],
        ["mmlu-from-baseline", "--config", cfg, "--setting", "repeat-every1",
         "--baseline", str(res / "mmlu/none.csv"), "--out", str(tmp_path / "m.csv")],
        ["figure", "drift_over_rounds", "--tables", *_figure_tables(smoke, "drift_over_rounds"),
         "--out", str(tmp_path / "f.png")],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([str(BIN / "python"), "-c", script, json.dumps(runs)], capture_output=True, text=True,
                          env=env, cwd=smoke, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "s.csv").exists() and (tmp_path / "m.csv").exists() and (tmp_path / "f.png").exists()


def _figure_tables(smoke, name):
    """The tables figure ``name`` is drawn from, as the smoke run's manifest lists them."""
    manifest = json.loads((smoke / "figures/all").read_text())
    entry = next(e for e in manifest["figures"] if e["figure"] == f"figures/smoke/{name}.pdf")
    return [str(smoke / t) for t in entry["tables"]]


def test_drift_tables_hold_the_claims_judge_errors_and_fit_a_design(smoke):
    """The tables the drift and mitigation figures read carry every claim with its Holm family, the
    judge errors and the other treatment's numbers; the planted-drift fit reads the smoke scores."""
    import pandas as pd

    from personadrift.analysis import simulate as sim
    from personadrift.analysis.stats import judge_error_flags, treat_judge_errors
    from personadrift.tables import read_table

    tables, scores = smoke / "results/smoke/tables", smoke / "results/smoke/scores"
    ch = pd.read_csv(tables / "none/change.csv", keep_default_na=False, na_values=[""])
    pairs = set(zip(ch["claim"], ch["versus"].fillna("")))
    assert pairs == {("shift", ""), ("drift", ""), ("shift", "control"), ("drift", "control")}
    assert (ch["n_comparisons"] == 8).all() and {"change_if_dropped", "p_holm_if_dropped"} <= set(ch.columns)
    both = pd.concat([read_table(scores / f"{s}.csv") for s in ("none", "control")], ignore_index=True)
    errors = pd.read_csv(tables / "none/judge_errors.csv")
    assert set(errors["setting"]) == {"none", "control"}
    assert errors["judge_errors"].sum() == judge_error_flags(both).sum()
    assert json.loads((tables / "none/study.json").read_text())["judge_error_treatment"] == "scored_0"
    trade = pd.read_csv(tables / "tradeoff.csv")
    assert {"drift", "drift_diff", "drift_diff_p_holm", "stability_diff_if_dropped", "judge_errors"} <= set(trade.columns)
    assert (trade["n_comparisons"] == 2 * 3).all()  # split, repeat and cfg: level and change each
    none = read_table(scores / "none.csv")
    fit = sim.fit_design(none)
    assert (fit.conversations, fit.rounds, fit.runs) == (3, 2, 2)
    observed = treat_judge_errors(none).groupby(["kind", "round"])["score"].mean()
    fitted = sim.truth(fit).set_index(["kind", "round"])["true_mean"]
    assert (observed - fitted).abs().max() < 0.02  # the fitted study has the smoke study's round means


def _digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_studies_in_one_folder_keep_both_sets_of_figures(smoke, tmp_path):
    """A second study (the smoke config under another study name) run after the smoke study in
    the same working folder (a copy of the session's): each study's figures and manifest stay in
    figures/<study>/, figures/all follows the configured study, the comparison reads both
    studies' results folders, and going back to the first study redraws no figure."""
    import shutil

    import yaml

    work = tmp_path / "work"
    shutil.copytree(smoke, work, symlinks=True)
    first = _digests(work / "figures/smoke")
    assert (work / "figures/all").read_text() == (work / "figures/smoke/all").read_text()
    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    cfg["study"] = "smoke-b"
    cfg["compare"] = {"studies": ["results/smoke", "results/smoke-b"]}
    other = tmp_path / "smoke-b.yaml"
    other.write_text(yaml.safe_dump(cfg))

    snakemake(work, "--configfile", other, "--cores", "2", "figures/all", "figures/smoke-b/comparison.png")
    assert _digests(work / "figures/smoke") == first  # the first study's figures and manifest, untouched
    manifest = json.loads((work / "figures/smoke-b/all").read_text())
    assert {e["figure"] for e in manifest["figures"]} == {f.replace("smoke/", "smoke-b/", 1) for f in (
        e["figure"] for e in json.loads((work / "figures/smoke/all").read_text())["figures"])}
    for e in manifest["figures"]:
        assert hashlib.sha256((work / e["figure"]).read_bytes()).hexdigest() == e["sha256"]
        assert all(t.startswith("results/smoke-b/") for t in e["tables"])
    assert (work / "figures/all").read_text() == (work / "figures/smoke-b/all").read_text()
    assert (work / "figures/smoke-b/comparison.png").stat().st_size > 1000
    assert not list((work / "figures").glob("*.pdf")) and not list((work / "figures").glob("*.png"))

    second = _digests(work / "figures/smoke-b")
    plan = snakemake(work, "--configfile", str(REPO / "configs/smoke.yaml"), "-n", "figures/all")
    text = plan.stdout + plan.stderr
    assert "rule configured_study_figures:" in text and "rule figure:" not in text, text[-3000:]
    snakemake(work, "--configfile", str(REPO / "configs/smoke.yaml"), "--cores", "1", "figures/all")
    assert (work / "figures/all").read_text() == (work / "figures/smoke/all").read_text()
    assert _digests(work / "figures/smoke") == first and _digests(work / "figures/smoke-b") == second
