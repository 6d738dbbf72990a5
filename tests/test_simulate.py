"""The planted-drift check: synthetic studies with known truth through scoring and statistics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from personadrift.analysis import simulate as sim
from personadrift.analysis.stats import change_over_dialog
from personadrift.protocol.scoring import score_dirs
from support.simulated_study import drift_tables_of_simulated_study

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


@pytest.mark.parametrize("judge", ["binary", "graded", "mixed"])
def test_truth_is_the_population_mean(judge):
    # drift that varies between conversations widens the spread round by round: the truth has it
    design = sim.drifting(20_000, shift=0.8, drop=1.5, drift_sd=1.0, judge=judge, precision=3.0, binary_share=0.5)
    sc = sim.simulate_scores(design, seed=1)
    emp = sc[sc["setting"] == "none"].groupby(["kind", "round"])["score"].mean()
    t = sim.truth(design).set_index(["kind", "round"])["true_mean"]
    assert np.abs(emp - t).max() < 0.01
    assert sc["score"].between(0, 1).all() and (judge == "binary") == sc["score"].isin([0.0, 1.0]).all()
    # the claims are linear in the round means: the drift table's value on a huge study is the truth
    ch = change_over_dialog(sc).set_index(["kind", "claim"])
    assert ch.loc[("agent", "drift"), "change"] == pytest.approx(sim.true_change(design), abs=0.01)
    assert ch.loc[("agent", "shift"), "change"] == pytest.approx(sim.true_claim(design, "none", "agent", "shift"),
                                                                 abs=0.01)
    assert sim.true_change(design) < -0.1 and sim.true_change(sim.drifting(8, drop=0.0)) == pytest.approx(0)


def test_drift_of_a_planted_study_is_found_in_the_scored_transcripts(tmp_path):
    design = sim.drifting(40, drop=3.0)
    dirs = sim.write_study(design, seed=2, out_dir=tmp_path)
    ch = change_over_dialog(score_dirs([dirs["none"]])).set_index(["kind", "claim"])
    assert ch.loc[("agent", "drift"), "significant"] and ch.loc[("agent", "drift"), "first_round"] == 1
    assert ch.loc[("agent", "drift"), "ci_low"] <= sim.true_change(design) <= ch.loc[("agent", "drift"), "ci_high"]


def test_graded_studies_are_score_tables_only():
    with pytest.raises(ValueError, match="binary"):
        sim.study_records(sim.drifting(2, judge="graded"), seed=0)
    with pytest.raises(ValueError, match="Design.judge"):
        sim.drifting(2, judge="likert")


@pytest.mark.parametrize("n,judge,drift_sd", [(8, "binary", 0.0), (200, "binary", 0.0), (8, "graded", 1.0),
                                               (200, "graded", 1.0)])
def test_t_interval_coverage_and_false_positive_rate_without_drift(n, judge, drift_sd):
    # start 0.5: conversations' own drifts cancel in the mean, so the true change is 0
    design = sim.drifting(n, drop=0.0, judge=judge, drift_sd=drift_sd)
    res = sim.check(design, studies=STUDIES, method="t").set_index("claim")
    for claim in ("drift (agent)", "shift (agent)", "drift (user)", "round mean (agent)"):
        assert abs(res.loc[claim, "coverage"] - NOMINAL) <= MARGIN, res
    assert res.loc["drift (agent)", "true_value"] == pytest.approx(0, abs=1e-9)
    assert (res.loc["drift (agent)", "family"] == 4)  # shift and drift of both probes
    # no drift: "significant drift" (Holm over the four claims) at most at the nominal rate
    assert res.loc["drift (agent)", "significant_rate"] <= (1 - NOMINAL) + MARGIN / 2


def test_coverage_of_every_figure_claim_with_the_control_and_mitigations():
    """The drift figure's family (with the control: 12 claims, of which 8 are tested: the shift minus
    the control's and the control's own shift are fixed by design) and the mitigation figure's
    (level and change of 2 settings: 4 claims) under planted effects."""
    design = sim.drifting(40, shift=0.8, drop=1.0, drift_sd=0.7, effects={"none": 0.0, "control": -0.5, "a": 0.8,
                                                                          "b": 0.0},
                          drift_effects={"control": 0.6, "a": 0.0, "b": 1.0})
    res = sim.check(design, studies=60, method="t", round_means=False).set_index("claim")
    assert (res.loc[res.index.str.contains("vs control|\\[control\\]|^(?:shift|drift) \\(", regex=True), "family"]
            == 8).all()
    assert (res.loc[["level vs none", "drift vs none"], "family"] == 4).all()
    assert (res["coverage"] >= NOMINAL - 0.1).all(), res  # 60 studies: SE about 0.03
    assert res.loc["drift (agent) vs control", "true_value"] < -0.02  # the control declines less
    # "a" raises the level; "b" (the others) flattens the decline
    assert res.loc["level vs none", "true_value"] > 0.05 and res.loc["drift vs none (others)", "true_value"] > 0.05


def test_coverage_holds_with_planted_overflow_diverging_settings_and_varied_effects():
    """A third of the baseline's conversations and two thirds of repetition's stop after a random
    round (repetition overflows first); each setting's wobble and drift correlate 0.5 with the
    baseline's; the planted effect varies between conversations. Paired claims over the rounds both
    reached, and drift slopes weighted by their information, still cover."""
    design = sim.drifting(40, rounds=6, shift=0.5, drop=1.0, drift_sd=0.7,
                          effects={"none": 0.0, "repeat": 0.6, "b": 0.0}, drift_effects={"b": 0.8},
                          setting_correlation=0.5, effect_sd=0.5, stop_share={"none": 0.33, "repeat": 0.67})
    sc = sim.simulate_scores(design, seed=3)
    stopped = sc[sc["context"] == "overflow"].groupby("setting")["conversation"].nunique()
    assert stopped["repeat"] > stopped["none"] > 0 and "b" not in stopped
    res = sim.check(design, studies=60, method="t", round_means=False).set_index("claim")
    for claim in ("drift (agent)", "shift (agent)", "level vs none", "drift vs none", "drift vs none (others)"):
        assert res.loc[claim, "coverage"] >= NOMINAL - 0.1, res  # 60 studies: SE about 0.03


def test_the_correlation_across_settings_is_fitted_and_the_se_check_refuses_a_mismatch():
    """A study planted with correlation 0.3: the fit finds it from the paired differences' variance
    (where correlation 1 would simulate too small an se for every paired claim), and the se check
    puts each claim's simulated se beside the observed one."""
    truth = sim.drifting(200, rounds=4, drop=1.0, drift_sd=0.5, round_noise=0.8,
                         effects={"none": 0.0, "a": 0.0, "b": 0.0}, setting_correlation=0.3)
    observed = sim.simulate_scores(truth, seed=11)
    fitted = sim.fit_correlation(replace(truth, setting_correlation=1.0), observed, ["a", "b"], population=1000)
    assert abs(fitted.setting_correlation - 0.3) <= 0.2
    good = sim.se_check(fitted, observed, studies=30).set_index("claim")
    bad = sim.se_check(replace(truth, setting_correlation=1.0), observed, studies=30).set_index("claim")
    print(good.to_string(), bad.to_string(), sep="\n")
    assert good.loc["level vs none", "quotable"]
    assert not bad.loc["level vs none", "quotable"] and bad.loc["level vs none", "ratio"] < 1 - sim.SE_TOLERANCE


@pytest.mark.parametrize("config", ["config.yaml", "configs/laptop.yaml"])
def test_t_interval_coverage_at_the_shipped_configs_own_shape(config):
    """The default and the laptop study run one probe sample per round (the checks above use
    two): the drift interval still covers at their own size, rounds and sample count, with drift
    that varies between conversations."""
    from personadrift.overlays import read_config
    from support.workflow import REPO

    shape = sim.shape_of(read_config(REPO / config).config)
    assert shape.runs == 1
    design = sim.drifting(shape.conversations, rounds=shape.rounds, runs=shape.runs, drop=1.0, drift_sd=1.0)
    res = sim.check(design, studies=STUDIES, method="t", round_means=False).set_index("claim")
    for claim in ("drift (agent)", "drift (user)", "shift (agent)"):
        assert abs(res.loc[claim, "coverage"] - NOMINAL) <= MARGIN, res


def test_power_at_paper_scale_and_coverage_under_drift():
    design = sim.drifting(200, drop=1.0, drift_sd=0.5)  # about -0.2 in mean stability over the dialog
    res = sim.check(design, studies=40, method="t", round_means=False).set_index("claim")
    assert res.loc["drift (agent)", "significant_rate"] >= 0.95
    assert abs(res.loc["drift (agent)", "coverage"] - NOMINAL) <= 0.1  # 40 studies: SE about 0.035


def test_heterogeneous_drift_costs_power():
    same = sim.drifting(30, drop=1.0, drift_sd=0.0)
    varied = sim.drifting(30, drop=1.0, drift_sd=2.0)
    p = {k: sim.check(d, studies=60, round_means=False).set_index("claim").loc["drift (agent)", "significant_rate"]
         for k, d in (("same", same), ("varied", varied))}
    assert p["varied"] < p["same"] - 0.1, p


@pytest.mark.parametrize("judge,share", [("binary", 1.0), ("graded", 0.0), ("mixed", 0.7)])
def test_each_judges_noise_is_what_the_fit_assumes(judge, share):
    """Var(score | p) = p (1 - p) * judge_noise(): measured on samples drawn at known p."""
    design = sim.Design(judge=judge, precision=3.0, binary_share=share)
    p = np.linspace(0.05, 0.95, 19)
    draws = sim._judge(design, p[:, None], np.random.default_rng(0), (19, 40_000))
    assert np.allclose(draws.mean(axis=1), p, atol=0.01)
    assert np.allclose(draws.var(axis=1) / (p * (1 - p)), design.judge_noise(), atol=0.03)
    assert design.judge_noise() == pytest.approx({"binary": 1.0, "graded": 0.25, "mixed": 0.775}[judge])
    assert np.isin(draws, [0.0, 1.0]).mean() == pytest.approx(share, abs=0.01)


def test_fit_recovers_a_planted_study_and_refits_its_own_simulation():
    truth = sim.drifting(300, rounds=5, start=0.4, shift=1.0, drop=1.0, drift_sd=1.2, spread=1.0, round_noise=0.3,
                         runs=2, judge="graded", precision=5.0)
    fit = sim.fit_design(sim.simulate_scores(truth, seed=4))
    assert (fit.conversations, fit.rounds, fit.runs) == (300, 5, 2)
    # a Beta draw can underflow to exactly 0 (one in this study): then the judge is "mixed", mostly graded
    assert fit.judge in ("graded", "mixed") and fit.binary_share < 0.01
    assert fit.precision == pytest.approx(5.0, rel=0.25)
    assert fit.spread == pytest.approx(1.0, abs=0.4) and fit.drift_sd == pytest.approx(1.2, abs=0.5)
    t, f = sim.truth(truth), sim.truth(fit)
    assert np.abs(t["true_mean"] - f["true_mean"]).max() < 0.04
    assert sim.true_change(fit) == pytest.approx(sim.true_change(truth), abs=0.03)
    planted = sim.with_drift(fit, 2.0)
    assert planted.stability[0] == fit.stability[0] and sim.true_change(planted) < sim.true_change(fit)
    with pytest.raises(ValueError, match="rounds 0..R"):
        sim.fit_design(sim.simulate_scores(truth, seed=4).query("round != 2"))


def test_a_simulated_study_runs_through_the_workflow_steps(tmp_path):
    """Transcripts -> the score step -> the drift-table step -> the drift figure, with a control."""
    import json

    from personadrift.figures import draw

    t = drift_tables_of_simulated_study(tmp_path, 12, seed=3)
    csvs = t["scores"]
    errors = pd.read_csv(t["errors"])
    assert set(errors["setting"]) == {"none", "control"} and (errors["judge_errors"] == 0).all()
    assert errors["answers"].sum() == sum(len(pd.read_csv(c)) for c in csvs)
    ch = pd.read_csv(t["change"])
    assert set(ch["setting"]) == {"none", "control"} and (ch["n_comparisons"] == 8).all()
    assert (ch["family"] != "holm").sum() == 4 and ch.loc[ch["family"] != "holm", "p_holm"].isna().all()
    assert set(ch["claim"]) == {"shift", "drift"} and (ch["method"] == "t").all()
    assert json.loads((tmp_path / "study.json").read_text())["conversations_stopped"] == {"control": 0, "none": 0}
    assert set(ch.loc[ch["claim"] == "drift", "first_round"]) == {1}
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
    example_dialog({"model": {"name": "simulated"}, "report": {"example_dialog_rule": "largest_drop"}}, csv,
                   [dirs["none"]], out)
    ex = __import__("json").loads(out.read_text())
    assert [r["round"] for r in ex["rounds"]] == [0, 1, 2] and ex["rounds"][0]["agent"] is None
    assert ex["rounds"][1]["agent"] == "utterance 1" and ex["rounds"][1]["user_next"] == "utterance 2"
    assert "round 0" in ex["rule"]
    draw("example_dialog", [str(out)], [str(tmp_path / "example.png")])


def test_planted_drift_bench_fits_a_scores_table_and_uses_the_figures_families(tmp_path):
    """The bench end to end at a tiny size (2 studies per cell): correctness of its tables, not power."""
    import re
    import subprocess
    import sys

    import yaml

    from personadrift.tables import read_table, write_table
    from support.workflow import REPO

    # fitted to a 10-conversation, 4-round study, simulated in config.yaml's shape (12, 3 rounds)
    csv = tmp_path / "none.csv"
    write_table(sim.simulate_scores(sim.drifting(10, rounds=4, drop=1.0, drift_sd=1.0, runs=1), seed=0), csv)
    bench = [sys.executable, "bench/planted_drift.py", "--studies", "2", "--skip-coverage", "--fit", str(csv)]
    proc = subprocess.run(bench + ["--configs", "config.yaml"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    fits = len(sim.fit_designs(read_table(csv)))
    assert re.search(r"^fit 1 to .*; binary judge \(100% of scores 0 or 1", out, re.M) and out.count(" to " + str(csv)) == fits, out
    comparisons = sim.shape_of(yaml.safe_load((REPO / "config.yaml").read_text())).comparisons
    drift_rows = re.findall(r"^\s*config\.yaml\s+fit (\d)\s+binary\s+12\s+\S+\s+\S+\s+\S+\s+(\d+)\s", out, re.M)
    assert len(drift_rows) == 10 * fits and {int(f) for _, f in drift_rows} == {8}, out
    assert {int(k) for k, _ in drift_rows} == set(range(1, fits + 1))
    effect_rows = re.findall(r"^\s*config\.yaml\s+fit \d\s+binary\s+(level|drift)\s+12\s+\S+\s+\S+\s+(\d+)\s",
                             out, re.M)
    assert {c for c, _ in effect_rows} == {"level", "drift"} and {int(f) for _, f in effect_rows} == {2 * comparisons}
    assert len(re.findall(r"\(fit \d, binary judges, n = 12\): smallest decline in mean stability over the dialog "
                          r"\(round 1 to 3\)", out)) == fits, out
    # the se check is printed per fit; a table of `none` alone cannot check a paired claim, so none is quoted
    assert out.count("## Standard error of each claim") == 1 and re.search(r"^\s*drift \(agent\)\s+\S+\s+\S+", out, re.M)
    assert len(re.findall(r"smallest difference from no intervention in the level: not quoted", out)) == fits, out
    # a config with more rounds than the fitted study: one line, not a traceback
    proc = subprocess.run(bench + ["--configs", "configs/laptop.yaml"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "planted_drift: in_shape: configs/laptop.yaml has 8 rounds; a design fitted to 4 rounds gives 2..4"]


def test_a_fit_in_a_smaller_studys_shape_is_that_studys_first_rounds():
    """in_shape: the fitted process's first rounds, with the smaller study's conversations and samples."""
    fitted = sim.drifting(48, rounds=8, runs=1, shift=0.8, drop=1.5, drift_sd=1.2, judge="mixed", binary_share=0.9)
    assert sim.in_shape(fitted, sim.StudyShape("own", 48, 1, 8)) == fitted
    small = sim.in_shape(fitted, sim.StudyShape("default", 12, 2, 3, comparisons=3))
    assert (small.conversations, small.runs, small.rounds, small.judge) == (12, 2, 3, "mixed")
    # the population's round means (the truth) and per-round sd are those of the fitted study's rounds 0..3
    first = sim.truth(fitted).query("round <= 3").reset_index(drop=True)
    pd.testing.assert_frame_equal(sim.truth(small).reset_index(drop=True), first)
    assert np.allclose(small.round_sd(), fitted.round_sd()[:4])
    # and its studies show it: the round means of a large simulated study
    big = sim.simulate_scores(sim.in_shape(fitted, sim.StudyShape("big", 20_000, 1, 3)), seed=3)
    emp = big[big["setting"] == "none"].groupby(["kind", "round"])["score"].mean()
    assert np.abs(emp.to_numpy() - first.set_index(["kind", "round"])["true_mean"].reindex(emp.index)).max() < 0.01
    with pytest.raises(ValueError, match="has 16 rounds; a design fitted to 8 rounds gives 2..8"):
        sim.in_shape(fitted, sim.StudyShape("gpt35", 200, 2, 16))


def test_round_centres_are_found_however_wide_the_population_spreads():
    """The fit's optimiser tries spreads far past any real study's (the laptop study's fit once
    stopped here): each round's centre still makes the population's mean the round's mean."""
    from personadrift.analysis.simulate import _centres, _sigmoid

    eta = 45.0 * np.random.default_rng(0).standard_normal((4000, 3))
    means = [0.36, 0.17, 0.08]
    centres = _centres(eta, means)
    got = [_sigmoid(c + eta[:, r]).mean() for r, c in enumerate(centres)]
    assert np.allclose(got, means, atol=1e-3)


def test_a_study_of_mostly_binary_scores_is_fitted_as_mixed():
    """The laptop study's shape: 48 conversations, 8 rounds, one sample per probe, 95% of scores 0
    or 1 and a few fractional. Taken as graded (as fit_design once did) its judge noise would be a
    fifth of a binary one's and the fit could not settle; as a mixed judge it recovers the truth."""
    truth = sim.drifting(48, rounds=8, runs=1, drop=0.5, drift_sd=1.0, start=0.36)
    scores = sim.simulate_scores(truth, seed=1)
    binary = sim.fit_design(scores)
    some = np.random.default_rng(0).random(len(scores)) < 0.05
    scores.loc[some, "score"] = 0.5
    mixed = sim.fit_design(scores)
    assert (binary.judge, mixed.judge) == ("binary", "mixed") and mixed.binary_share == pytest.approx(0.95, abs=0.02)
    assert mixed.judge_noise() == pytest.approx(0.96, abs=0.02)
    assert mixed.spread == pytest.approx(binary.spread, abs=0.3)
    assert np.abs(sim.truth(mixed)["true_mean"] - sim.truth(binary)["true_mean"]).max() < 0.05


def test_mixed_judge_precision_is_fitted_from_repeated_samples():
    truth = sim.drifting(2000, rounds=3, runs=3, drop=1.0, judge="mixed", binary_share=0.5, precision=2.0)
    fit = sim.fit_design(sim.simulate_scores(truth, seed=2))
    assert fit.judge == "mixed" and fit.binary_share == pytest.approx(0.5, abs=0.02)
    assert fit.judge_noise() == pytest.approx(truth.judge_noise(), abs=0.05)
    assert fit.precision == pytest.approx(2.0, rel=0.35)


def test_a_fit_that_does_not_settle_is_refused_not_returned():
    """Every conversation scores the same in every round (half of them always 0, half always 1):
    with a binary judge that takes an infinite spread, so the optimiser wanders off. fit_design
    says so instead of returning a design whose round means are all 0 or 1."""
    scores = sim.simulate_scores(sim.drifting(40, rounds=4, runs=1), seed=0)
    scores["score"] = (scores["conversation"] % 2).astype(float)
    with pytest.raises(ValueError, match="did not settle.*binary judge of noise 1"):
        sim.fit_design(scores)


def test_every_returned_fit_reproduces_the_studys_variances():
    """The three variances allow more than one design; fit_designs returns each settled one, all
    distinct, and each one simulated at scale makes the study's variances again."""
    from dataclasses import replace

    from personadrift.analysis.stats import per_conversation

    def moments(sc):
        return sim._observed_moments(per_conversation(sc[(sc["kind"] == "agent") & (sc["setting"] == "none")]))

    scores = sim.simulate_scores(sim.drifting(48, rounds=8, runs=1, drop=0.5, drift_sd=1.0, start=0.36), seed=1)
    fits = sim.fit_designs(scores)
    assert len(fits) >= 2 and sim.fit_design(scores) == fits[0]
    thetas = [np.array([f.spread, f.drift_sd, f.round_noise]) for f in fits]
    assert all(np.abs(a - b).max() > 0.15 for i, a in enumerate(thetas) for b in thetas[i + 1:])
    observed = moments(scores)
    for f in fits:
        again = moments(sim.simulate_scores(replace(f, conversations=20_000), seed=0))
        assert np.allclose(again / observed, 1.0, atol=0.1), (f, again, observed)


def test_the_power_summary_names_the_largest_effect_scanned_when_none_reaches_80_percent():
    """Where no planted effect reaches the target, the sentence gives the largest one scanned and
    its power (not the row of highest power, which may be a smaller effect)."""
    import importlib.util

    from support.workflow import REPO

    spec = importlib.util.spec_from_file_location("planted_drift", REPO / "bench" / "planted_drift.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    smallest = bench.smallest
    df = pd.DataFrame({"true_change": [0.0, -0.05, -0.16], "power": [0.01, 0.04, 0.0], "quoted": True})
    assert smallest(df, "true_change") == "not reached in the scanned range (largest 0.16 has power 0.00)"
    assert smallest(df.assign(power=[0.0, 0.85, 0.9]), "true_change") == "0.05"
    assert smallest(df.assign(quoted=[True, False, True]), "true_change").startswith("not quoted")
