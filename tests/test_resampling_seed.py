"""The study's ``seed`` draws every resampled interval (bootstrap, BCa, sign-flip) of the drift
and trade-off tables: two seeds give two intervals, one seed the same interval twice. Through the
steps as the rules call them (``--params`` with the schema's defaults filled in), on a small
simulated study, and the rules' params carry the seed. In-process, but for one ``snakemake -n``."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from personadrift.analysis import simulate as sim
from personadrift.config import fill_defaults
from support.workflow import SMOKE, snakemake

SETTINGS = {"none": {"method": "none"}, "split": {"method": "split_softmax", "k": [0.5]}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Score tables of a simulated baseline and one intervention (split-k0.5), 20 conversations
    (more than 16: below that the sign-flip test enumerates every pattern and draws nothing)."""
    from personadrift.steps.score import score

    root = tmp_path_factory.mktemp("seeded")
    design = sim.drifting(20, rounds=3, drop=1.0, drift_sd=0.5, effects={"none": 0.0, "split-k0.5": 0.3})
    csvs = {}
    for name, folder in sim.write_study(design, seed=5, out_dir=root).items():
        csvs[name] = root / f"{name}.csv"
        score({"scoring": {"english_fluency_gate": False}}, [folder], csvs[name])
    pool = root / "pool.json"
    pool.write_text(json.dumps({"personas": [{"id": "p"}], "dropped": [], "rule": "all kept"}))
    return root, csvs, pool


def params(seed: int, method: str) -> dict:
    """What the tables and trade-off rules hand their steps, as the step reads it."""
    return fill_defaults(json.loads(json.dumps({
        "seed": seed, "study": "seeded", "model": {"name": "simulated"},
        "selfchat": {"runs": 2, "user_system_prompt": True},
        "scoring": {"method": method, "resamples": 200}, "interventions": SETTINGS})))


def drift_intervals(study, tmp_path, seed: int, method: str) -> pd.DataFrame:
    from personadrift.steps.score import drift_tables

    root, csvs, pool = study
    out = tmp_path / f"{method}-{seed}-{np.random.default_rng().integers(1 << 30)}"
    out.mkdir()
    drift_tables(params(seed, method), [csvs["none"]], pool, out / "by_round.csv", out / "change.csv", out / "study.json")
    return pd.concat([pd.read_csv(out / "by_round.csv")[["ci_low", "ci_high"]],
                      pd.read_csv(out / "change.csv")[["ci_low", "ci_high"]]], ignore_index=True)


def tradeoff_intervals(study, tmp_path, seed: int, method: str) -> pd.DataFrame:
    from personadrift.steps.mitigation import tradeoff_tables

    root, csvs, _ = study
    mmlu = []
    for s in ("none", "split-k0.5"):
        mmlu.append(tmp_path / f"mmlu-{s}.csv")
        pd.DataFrame([{"setting": s, "index": i, "subject": "x", "answer": "A", "letter_correct": i % 3 == 0,
                       "letter_p_correct": 0.3, "letter_predicted": "A", "cloze_correct": i % 2 == 0,
                       "cloze_p_correct": 0.4, "cloze_predicted": "B"} for i in range(40)]).to_csv(mmlu[-1], index=False)
    out = tmp_path / f"tradeoff-{method}-{seed}-{np.random.default_rng().integers(1 << 30)}"
    out.mkdir()
    tradeoff_tables(params(seed, method), [csvs["none"], csvs["split-k0.5"]], mmlu, out / "t.csv", out / "r.csv")
    t = pd.read_csv(out / "t.csv")
    cols = [c for c in t.columns if c.startswith("stability") and ("low" in c or "high" in c)]
    assert cols, t.columns
    return pd.concat([t[cols].stack().reset_index(drop=True),
                      pd.read_csv(out / "r.csv")[["ci_low", "ci_high"]].stack().reset_index(drop=True)],
                     ignore_index=True)


@pytest.mark.parametrize("method", ["percentile", "bca", "signflip"])
@pytest.mark.parametrize("tables", [drift_intervals, tradeoff_intervals])
def test_the_study_seed_draws_the_resampled_intervals(study, tmp_path, tables, method):
    one, again, other = (tables(study, tmp_path, seed, method) for seed in (1, 1, 2))
    pd.testing.assert_frame_equal(one.to_frame() if isinstance(one, pd.Series) else one,
                                  again.to_frame() if isinstance(again, pd.Series) else again)
    assert not np.allclose(one.to_numpy(dtype=float), other.to_numpy(dtype=float), equal_nan=True), \
        f"{method}: seeds 1 and 2 gave the same intervals"


def test_the_rules_hand_the_seed_to_the_tables_and_the_tradeoff(tmp_path):
    plan = snakemake(tmp_path, "-n", "-p", "figures/all", "--configfile", SMOKE, "--config", "seed=7").stdout
    for step in ("tables", "tradeoff"):
        lines = [x for x in plan.splitlines() if re.search(rf"personadrift {step} --params", x)]
        assert lines, f"no personadrift {step} command in the plan"
        for line in lines:
            payload = json.loads(re.search(r"--params '([^']*)'", line).group(1))
            assert payload["seed"] == 7, line[:300]
