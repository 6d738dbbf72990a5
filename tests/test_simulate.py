"""The planted-drift check: synthetic studies with known truth through scoring and statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from personadrift.analysis import simulate as sim
from personadrift.analysis.stats import change_over_dialog
from personadrift.benchmark.scoring import score_dirs

# Over STUDIES seeded studies, an interval of nominal level 0.95 must cover the truth at a rate
# within MARGIN of 0.95 (the binomial standard error of 100 studies is about 0.022).
STUDIES, MARGIN, NOMINAL = 100, 0.06, 0.95


def test_written_transcripts_score_to_the_simulated_table(tmp_path):
    design = sim.Design(conversations=3, rounds=2, runs=2, stability=(0.6, 0.5, 0.3), adoption=(0.1, 0.2, 0.3),
                        effects={"none": 0.0, "split": 1.0})
    dirs = sim.write_study(design, seed=5, out_dir=tmp_path)
    assert set(dirs) == {"none", "split"} and len(list(dirs["none"].glob("conv-*.json"))) == 3
    scored = score_dirs(list(dirs.values()))  # the real scoring step, real judges
    assert (scored["error"] == "").all()
    key = ["setting", "conversation", "round", "kind", "sample"]
    got = scored.sort_values(key)[key + ["score"]].reset_index(drop=True)
    want = sim.simulate_scores(design, seed=5).sort_values(key)[key + ["score"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert set(got["round"]) == {0, 1, 2} and got["score"].isin([0.0, 1.0]).all()


def test_truth_is_the_population_mean():
    design = sim.drifting(20_000, drop=1.5)
    sc = sim.simulate_scores(design, seed=1)
    emp = sc[sc["setting"] == "none"].groupby(["kind", "round"])["score"].mean()
    t = sim.truth(design).set_index(["kind", "round"])["true_mean"]
    assert np.abs(emp - t).max() < 0.01
    assert sim.true_change(design) < -0.2 and sim.true_change(sim.drifting(8, drop=0.0)) == pytest.approx(0)


def test_drift_of_a_planted_study_is_found_in_the_scored_transcripts(tmp_path):
    design = sim.drifting(40, drop=3.0)
    dirs = sim.write_study(design, seed=2, out_dir=tmp_path)
    ch = change_over_dialog(score_dirs([dirs["none"]])).set_index("kind")
    assert ch.loc["agent", "significant"] and ch.loc["agent", "first_round"] == 0
    assert ch.loc["agent", "ci_low"] <= sim.true_change(design) <= ch.loc["agent", "ci_high"]


@pytest.mark.parametrize("n", [8, 200])
def test_t_interval_coverage_and_false_positive_rate_without_drift(n):
    res = sim.check(sim.drifting(n, drop=0.0), studies=STUDIES, method="t").set_index("claim")
    for claim in ("drift (agent)", "drift (user)", "round mean (agent)"):
        assert abs(res.loc[claim, "coverage"] - NOMINAL) <= MARGIN, res
    # no drift: "significant drift" (Holm over the two claims) at most at the nominal rate
    assert res.loc["drift (agent)", "significant_rate"] <= (1 - NOMINAL) + MARGIN / 2


@pytest.mark.parametrize("config", ["config.yaml", "configs/laptop.yaml"])
def test_t_interval_coverage_at_the_shipped_configs_own_shape(config):
    """The default and the laptop study run one probe sample per round (the checks above use
    two): the drift interval still covers at their own size, rounds and sample count."""
    import yaml

    from support.workflow import REPO

    shape = sim.shape_of(yaml.safe_load((REPO / config).read_text()))
    assert shape.runs == 1
    design = sim.drifting(shape.conversations, rounds=shape.rounds, runs=shape.runs, drop=1.0)
    res = sim.check(design, studies=STUDIES, method="t", round_means=False).set_index("claim")
    for claim in ("drift (agent)", "drift (user)"):
        assert abs(res.loc[claim, "coverage"] - NOMINAL) <= MARGIN, res


def test_power_at_paper_scale_and_coverage_under_drift():
    design = sim.drifting(200, drop=1.0)  # about -0.2 in mean stability over the dialog
    res = sim.check(design, studies=40, method="t", round_means=False).set_index("claim")
    assert res.loc["drift (agent)", "significant_rate"] >= 0.95
    assert abs(res.loc["drift (agent)", "coverage"] - NOMINAL) <= 0.1  # 40 studies: SE about 0.035


def test_a_simulated_study_runs_through_the_workflow_steps(tmp_path):
    """Transcripts -> the score step -> the drift-table step -> the drift figure, with a control."""
    import json

    from personadrift.figures import draw
    from personadrift.steps.score import drift_tables, score

    design = sim.drifting(12, drop=2.0, effects={"none": 0.0, "control": 0.0})
    dirs = sim.write_study(design, seed=3, out_dir=tmp_path)
    config = {"study": "sim", "seed": 0, "model": {"name": "simulated"},
              "selfchat": {"runs": design.runs, "user_system_prompt": True},
              "scoring": {"english_fluency_gate": False, "confidence": 0.9, "resamples": 200,
                          "bootstrap_unit": "conversation", "method": "t"}}
    csvs = []
    for s, d in dirs.items():
        csvs.append(tmp_path / f"{s}.csv")
        score(config, [d], csvs[-1])
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"personas": [{"id": "p"}], "dropped": [], "rule": "all kept"}))
    t = {k: tmp_path / f"{k}.csv" for k in ("by_round", "change")}
    drift_tables(config, csvs, pool, t["by_round"], t["change"], tmp_path / "study.json")
    ch = pd.read_csv(t["change"])
    assert set(ch["setting"]) == {"none", "control"} and (ch["n_comparisons"] == 4).all()
    assert (ch["first_round"] == 0).all() and (ch["method"] == "t").all()
    out = tmp_path / "drift.png"
    draw("drift_over_rounds", [str(t["by_round"]), str(t["change"]), str(tmp_path / "study.json")], [str(out)])
    assert out.stat().st_size > 10_000


def test_example_dialog_handles_round_zero(tmp_path):
    from personadrift.figures import draw
    from personadrift.steps.figures import example_dialog
    from personadrift.steps.score import score

    dirs = sim.write_study(sim.drifting(4, rounds=2, drop=2.0), seed=0, out_dir=tmp_path)
    csv = tmp_path / "none.csv"
    score({"scoring": {"english_fluency_gate": False}}, [dirs["none"]], csv)
    out = tmp_path / "example.json"
    example_dialog({"model": {"name": "simulated"}}, csv, [dirs["none"]], out)
    ex = __import__("json").loads(out.read_text())
    assert [r["round"] for r in ex["rounds"]] == [0, 1, 2] and ex["rounds"][0]["agent"] is None
    assert ex["rounds"][1]["agent"] == "utterance 1" and ex["rounds"][1]["user_next"] == "utterance 2"
    assert "round 0" in ex["rule"]
    draw("example_dialog", [str(out)], [str(tmp_path / "example.png")])
