"""The arena (configs/arena.yaml): every installed control on one protocol. Its smoke adds the
arena's settings, as the file writes them, to a finished smoke study on the tiny model and runs
the DAG to the figures."""

from __future__ import annotations

import re
import shutil
from importlib.metadata import entry_points

import pandas as pd
import pytest
import yaml

from personadrift.config import load_config
from support.workflow import REPO, SMOKE, snakemake

ARENA = REPO / "configs" / "arena.yaml"


def test_the_arena_runs_every_method_personadrift_registers():
    own = {ep.name for ep in entry_points(group="personadrift.methods") if ep.dist.name == "personadrift"}
    cfg = load_config(ARENA)
    assert {entry["method"] for entry in cfg["interventions"].values()} == own
    assert cfg["study"] == "arena" and cfg["model"]["name"] == load_config(REPO / "config.yaml")["model"]["name"]


@pytest.fixture(scope="module")
def arena_smoke(smoke, tmp_path_factory):
    """The arena's settings and signals on the smoke study's tiny model and sizes (steering and
    the projection at the tiny model's last layer), run to figures/all in a copy of the shared
    smoke study's folder: the paper's settings are done there, so only the newer controls, their
    MMLU, the persona vectors and the signals run, as when a user adds the arena to a finished
    study. Returns (folder, Snakemake's log)."""
    work = tmp_path_factory.mktemp("arena-smoke")
    shutil.copytree(smoke, work, symlinks=True, dirs_exist_ok=True)
    smoke_cfg = yaml.safe_load(SMOKE.read_text())
    overlay = {
        "extends": str(ARENA),
        "study": smoke_cfg["study"],  # the same study: its finished settings are reused, not rerun
        "model": {"$patch": "replace", **smoke_cfg["model"]},
        # the smoke study's sections as they are, not merged into the default's
        **{k: {"$patch": "replace", **smoke_cfg[k]}
           for k in ("personas", "selfchat", "attention", "mmlu", "scoring", "resources")},
        "interventions": {"steer": {"layer": 1}, "cap": {"layer": 1}},
        "signals": {"layer": 1},
    }
    (work / "arena-smoke.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(work, "--configfile", work / "arena-smoke.yaml", "--cores", "2", "figures/all")
    return work, proc.stdout + proc.stderr


def ran(log: str, rule: str) -> int:
    """How many jobs of ``rule`` Snakemake's job-stats table says it ran (0 when absent)."""
    match = re.search(rf"^{rule}\s+(\d+)$", log, re.MULTILINE)
    return int(match.group(1)) if match else 0


@pytest.mark.slow
def test_every_control_runs_on_the_baselines_seeds_and_reaches_the_figures(arena_smoke):
    from personadrift.interventions.settings import expand_settings

    work, log = arena_smoke
    cfg = load_config(work / "arena-smoke.yaml")
    settings = expand_settings(cfg["interventions"])
    res = work / "results" / cfg["study"]
    plans = {}
    for s in settings:
        scores = pd.read_csv(res / "scores" / f"{s.name}.csv")
        plans[s.name] = scores.drop_duplicates("conversation").set_index("conversation")[["agent_persona", "user_persona", "topic"]]
    for name, plan in plans.items():  # every setting: the baseline's persona pairs
        pd.testing.assert_frame_equal(plan, plans["none"], obj=name)
    # only the newer controls were generated: the paper's settings' transcripts came from the study
    studys_own = {s.name for s in expand_settings(load_config(SMOKE)["interventions"])}
    new = [s for s in settings if s.name not in studys_own]
    shards = len(list((res / "transcripts" / "none").glob("shard-*")))
    assert len(new) == 4 and ran(log, "selfchat") == len(new) * shards, log[-3000:]
    assert ran(log, "calibrate") == 0 and ran(log, "attention") == 0, log[-3000:]
    tradeoff = pd.read_csv(res / "tables" / "tradeoff.csv")
    compared = [s.name for s in settings if not s.is_control]
    assert sorted(tradeoff["setting"]) == sorted(compared)
    # one Holm family per claim over every compared setting: each new control enlarges it
    others = tradeoff[tradeoff["setting"] != "none"]
    assert others["stability_diff_p_holm"].notna().sum() == len(compared) - 1
    assert (others["stability_diff_p_holm"] >= others["stability_diff_p"]).all()
    assert others["mmlu_accuracy"].notna().all()  # every control has its MMLU cost
    by_round = pd.read_csv(res / "tables" / "mitigation_by_round.csv")
    assert set(by_round["setting"]) >= set(compared)
    signals = pd.read_csv(res / "tables" / "none" / "signals_by_round.csv")  # the judge-free signals
    assert len(signals) and signals.notna().any().all()
    for figure in ("tradeoff_stability_mmlu", "mitigation_over_rounds", "drift_signals"):
        assert (work / "figures" / cfg["study"] / f"{figure}.png").stat().st_size > 0


@pytest.mark.slow
def test_a_method_in_two_families_is_named_by_family_in_the_trade_off_legend(arena_smoke):
    """steer and cap are both method steer: the legend names each family, not the method twice."""
    import matplotlib

    matplotlib.use("Agg")
    from personadrift.figures.mitigation import tradeoff_stability_mmlu

    work, _ = arena_smoke
    study = load_config(work / "arena-smoke.yaml")["study"]
    fig = tradeoff_stability_mmlu(str(work / "results" / study / "tables" / "tradeoff.csv"))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "persona-vector steering (steer)" in legend and "persona-vector steering (cap)" in legend
    assert "split-softmax" in legend and "InstABoost" in legend  # one family: the method's own label

