"""Verdicts over seeds (``personadrift robustness``): the table of claims across seeds, and the
smoke study rerun under a second seed beside the shared smoke run (seed 0 is that run itself)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from personadrift.reproduce.robustness import robustness_table, seed_studies
from support.workflow import BIN, SMOKE


def claim(estimate, verdict):
    return {"estimate": estimate, "ci_low": None, "ci_high": None, "p_holm": None, "verdict": verdict}


def test_the_table_gives_each_claims_share_and_spread_over_seeds():
    by_seed = {
        0: {"a": claim(-0.3, "significant decrease"), "b": claim(0.1, "not significant")},
        1: {"a": claim(-0.2, "significant decrease"), "b": claim(0.4, "significant increase")},
        2: {"a": claim(-0.05, "not significant"), "b": claim(0.2, "not significant")},
    }
    t = robustness_table(by_seed, reference_seed=0).set_index("claim")
    assert t.loc["a", "verdict"] == "significant decrease" and t.loc["a", "holds_share"] == pytest.approx(2 / 3)
    assert t.loc["a", "significant_share"] == pytest.approx(2 / 3)
    assert (t.loc["a", "estimate_min"], t.loc["a", "estimate_median"], t.loc["a", "estimate_max"]) == (-0.3, -0.2, -0.05)
    assert t.loc["b", "verdict"] == "not significant" and t.loc["b", "holds_share"] == pytest.approx(2 / 3)
    assert t.loc["b", "verdict_seed1"] == "significant increase" and t.loc["b", "estimate_seed2"] == 0.2
    # no reference seed among the seeds: the most common verdict is the reference
    t = robustness_table({1: by_seed[1], 2: by_seed[2], 3: by_seed[2]}, reference_seed=0).set_index("claim")
    assert t.loc["b", "verdict"] == "not significant" and pd_isnull(t.loc["b", "reference_seed"])
    # a claim one seed lacks counts over the seeds that have it
    t = robustness_table({0: by_seed[0], 1: {"b": by_seed[1]["b"]}}, reference_seed=0).set_index("claim")
    assert t.loc["a", "seeds"] == 1 and t.loc["a", "verdict_seed1"] == "missing"


def pd_isnull(x):
    import pandas as pd

    return pd.isna(x)


def test_the_configs_own_seed_is_the_study_itself():
    cfg = {"study": "s", "seed": 2, "robustness": {"seeds": [0, 2, 5]}}
    assert seed_studies(cfg) == [(0, "s-seed0"), (2, "s"), (5, "s-seed5")]


@pytest.mark.slow
def test_robustness_reruns_the_smoke_study_under_a_second_seed(smoke, tmp_path):
    work = tmp_path / "work"
    # the smoke run's outputs (seed 0) and fetched model and MMLU, without Snakemake's records:
    # seed 0 is then up to date by modification times, and only seed 1 runs
    shutil.copytree(smoke / "results", work / "results", symlinks=True)
    shutil.copytree(smoke / "resources", work / "resources", symlinks=True)
    # one stream, in the order written: each seed's line, then its Snakemake run's log
    proc = subprocess.run([str(BIN / "personadrift"), "robustness", "--config", str(SMOKE), "--seeds", "0", "1",
                           "--cores", "2"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=3600)
    log = proc.stdout
    assert proc.returncode == 0, log[-8000:]
    seed0, seed1 = log.split("robustness: seed 1 -> results/smoke-seed1")
    assert "Nothing to be done" in seed0  # the shared run is reused
    assert "rule fetch_model" not in seed1 and "rule fetch_mmlu" not in seed1  # the fetches are shared
    assert "rule calibrate" in seed1  # the pool depends on the seed: calibration reruns
    from personadrift.reproduce.manifest import read_manifest
    from personadrift.tables import read_table

    m0 = read_manifest(work / "results/smoke/manifest.json")
    m1 = read_manifest(work / "results/smoke-seed1/manifest.json")
    assert m0["settings"]["none"] != m1["settings"]["none"]  # another seed, other dialogs
    table = read_table(work / "results/smoke-robustness/claims.csv").set_index("claim")
    assert set(table.index) == {c["claim"] for c in m0["claims"]} | {c["claim"] for c in m1["claims"]}
    for c in m0["claims"]:
        row = table.loc[c["claim"]]
        other = next(x for x in m1["claims"] if x["claim"] == c["claim"])
        assert row["seeds"] == 2 and row["verdict"] == c["verdict"] == row["verdict_seed0"]
        assert row["holds_share"] == (1.0 if other["verdict"] == c["verdict"] else 0.5)
        if c["estimate"] is not None and other["estimate"] is not None:
            assert row["estimate_min"] == pytest.approx(min(c["estimate"], other["estimate"]))
            assert row["estimate_max"] == pytest.approx(max(c["estimate"], other["estimate"]))
    assert f"({len(table)} claims, 2 seeds)" in proc.stdout
    prov = json.loads((work / "results/smoke-robustness/claims.csv.provenance.json").read_text())
    assert prov["reference_seed"] == 0 and set(prov["seeds"]) == {"0", "1"}
