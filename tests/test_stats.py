"""Intervals, Holm adjustment, drift and trade-off tables (analysis.stats, analysis.tradeoff)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from personadrift.analysis import stats
from personadrift.analysis.tradeoff import choose_form, mmlu_form, tradeoff_rows


def test_t_interval_matches_the_textbook_formula():
    x = np.array([0.1, -0.3, 0.5, 0.2, 0.0, -0.1, 0.4, 0.3])
    iv = stats.mean_interval(x, method="t", confidence=0.9)
    se = x.std(ddof=1) / np.sqrt(len(x))
    q = sps.t.ppf(0.95, len(x) - 1)
    assert iv.mean == pytest.approx(x.mean())
    assert (iv.low, iv.high) == pytest.approx((x.mean() - q * se, x.mean() + q * se))
    assert iv.p_value == pytest.approx(sps.ttest_1samp(x, 0).pvalue)


def test_signflip_is_exact_for_small_n():
    # all 8 positive: only the identity and the all-flipped pattern are as extreme -> p = 2 / 2**8
    x = np.arange(1.0, 9.0)
    iv = stats.mean_interval(x, method="signflip")
    assert iv.p_value == pytest.approx(2 / 256)
    assert iv.low < x.mean() < iv.high
    # the interval is where the test does not reject: its edges are rejected just outside
    signs = stats._sign_patterns(8, 0, 0)
    assert stats._signflip_p(x, iv.low - 0.05, signs) <= 0.05 < stats._signflip_p(x, iv.low + 0.05, signs)


@pytest.mark.parametrize("method", stats.METHODS)
def test_every_method_brackets_the_mean_and_degenerate_inputs(method):
    x = np.random.default_rng(0).normal(0.3, 1, 30)
    iv = stats.mean_interval(x, method=method, resamples=500)
    assert iv.low < iv.mean < iv.high and 0 <= iv.p_value <= 1 and iv.method == method
    one = stats.mean_interval([0.4, np.nan], method=method)
    assert one.n == 1 and np.isnan(one.low) and np.isnan(one.p_value)
    same = stats.mean_interval([0.0] * 5, method=method)
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("method", stats.METHODS)
def test_values_equal_up_to_rounding_or_underflow_are_ties_not_a_certain_effect(method):
    """Found by the planted-drift check: eleven conversations at 0 and one whose graded score
    underflowed to 7e-252 gave a standard error of exactly 0 and a t p-value of 0 ("significant")."""
    underflow = stats.mean_interval([0.0] * 11 + [7.0e-252], method=method)
    assert underflow.p_value == 1.0 and underflow.low == underflow.high == underflow.mean
    rounding = stats.mean_interval([0.1 + 0.2, 0.3, 0.3, 0.1 + 0.2], method=method)  # 0.30000000000000004 and 0.3
    assert rounding.p_value == pytest.approx(2.0 ** -3) and rounding.low == rounding.high
    # a real spread, however small against the scores' scale, is not a tie
    small = stats.mean_interval([0.0] * 11 + [1e-6], method=method, resamples=200)
    assert small.p_value > 0.0 and small.low < small.high


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown interval method 'z'"):
        stats.mean_interval([1, 2], method="z")


def test_holm_against_hand_computation():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 with multipliers 4, 3, 2, 1 then running max
    assert stats.holm(p) == pytest.approx([0.04, 0.09, 0.09, np.nan, 0.5], nan_ok=True)
    assert np.isnan(stats.holm([np.nan])).all()


@pytest.mark.parametrize("n, comparisons", [(12, 8), (48, 14)])
def test_the_detectable_change_is_shown_in_80_percent_of_studies_at_the_bonferroni_level(n, comparisons):
    """Studies of n normal conversations whose true mean is the detectable change for their
    standard deviation: a t-test at (1 - 0.95) / comparisons rejects in 80% of 4,000 of them
    (the estimated standard error varies, so the agreement is the t-approximation's, within 0.03)."""
    sd = 0.3
    x = stats.detectable_change(sd / np.sqrt(n), n, comparisons, confidence=0.95)
    data = np.random.default_rng(7).normal(x, sd, size=(4000, n))
    p = sps.ttest_1samp(data, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05 / comparisons) == pytest.approx(0.80, abs=0.03)
    assert stats.detectable_change(0.1, n, 1) < stats.detectable_change(0.1, n, comparisons)
    assert np.isnan(stats.detectable_change(0.1, 1, 1)) and np.isnan(stats.detectable_change(np.nan, n, 1))


def _scores(n=10, rounds=(0, 1, 2), drop=0.3, seed=0, context=None):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n):
        level = rng.uniform(0.4, 0.9)
        for r in rounds:
            for kind in ("agent", "user"):
                for s in range(2):
                    v = level - drop * r / max(rounds) if kind == "agent" else 0.1
                    rows.append({"setting": "none", "conversation": c, "round": r, "kind": kind, "sample": s,
                                 "score": float(np.clip(v + rng.normal(0, 0.02), 0, 1))})
    df = pd.DataFrame(rows)
    if context is not None:
        df["context"] = context(df)
    return df


def test_drift_is_the_fitted_change_over_the_dialog_beside_the_round0_shift():
    # agent: 0.3 lost linearly over rounds 0..3, so 0.1 from round 0 to 1 and 0.2 over rounds 1..3
    ch = stats.change_over_dialog(_scores(rounds=(0, 1, 2, 3)), confidence=0.95).set_index(["kind", "claim"])
    assert set(ch.index) == {(k, c) for k in ("agent", "user") for c in ("shift", "drift")}
    assert (ch.loc[("agent", "drift"), ["first_round", "last_round"]] == [1, 3]).all()
    assert (ch.loc[("agent", "shift"), ["first_round", "last_round"]] == [0, 1]).all()
    assert ch.loc[("agent", "drift"), "change"] == pytest.approx(-0.2, abs=0.02)
    assert ch.loc[("agent", "shift"), "change"] == pytest.approx(-0.1, abs=0.02)
    assert ch.loc[("agent", "drift"), "significant"] and ch.loc[("agent", "drift"), "ci_high"] < 0
    assert (ch["n_comparisons"] == 4).all()
    assert ch["p_holm"].min() == pytest.approx(min(1, 4 * ch["p_value"].min()))
    # a table without round 0 has no shift; a table with one dialog round has no decline to fit
    no0 = stats.change_over_dialog(_scores(rounds=(1, 2, 3)))
    assert set(no0["claim"]) == {"drift"} and (no0["first_round"] == 1).all()
    assert set(stats.change_over_dialog(_scores(rounds=(0, 1)))["claim"]) == {"shift"}


def test_conversation_slopes_are_least_squares_over_the_rounds_each_conversation_has():
    per = pd.DataFrame({0: [0.9, 0.5], 1: [0.8, 0.5], 2: [0.5, np.nan], 3: [0.5, 0.2], 4: [0.2, 0.1]}, index=[7, 8])
    s = stats.conversation_slopes(per)
    for conv in per.index:
        row = per.loc[conv, [1, 2, 3, 4]].dropna()
        assert s.loc[conv, "slope"] == pytest.approx(np.polyfit(row.index.astype(float), row.to_numpy(), 1)[0])
        assert s.loc[conv, "weight"] == pytest.approx(float(((row.index.to_numpy() - row.index.to_numpy().mean()) ** 2).sum()))
    # the claim is the information-weighted mean slope times R - 1; complete rows weigh alike
    got = stats.fitted_change(per)
    want = (s["slope"] * s["weight"]).sum() / s["weight"].sum() * 3
    assert got.mean() == pytest.approx(want)
    full = per.fillna(0.3)
    assert stats.fitted_change(full).to_numpy() == pytest.approx(stats.conversation_slopes(full)["slope"] * 3)


def _stopping(n, curve, *, stop_share, seed, rounds=8, noise=0.15, stop_after=None):
    """Conversation x round (0..rounds): level + curve(round) + noise; a share of the conversations
    stops after a random dialog round in 2..rounds-1 (NaN after it, as a stopped dialog's table)."""
    rng = np.random.default_rng(seed)
    x = np.arange(0, rounds + 1)
    y = rng.normal(0, 0.1, n)[:, None] + curve(x)[None, :] + rng.normal(0, noise, (n, len(x)))
    last = stop_after if stop_after is not None else rng.integers(2, rounds, n)
    last = np.where(rng.random(n) < stop_share, last, rounds)
    return pd.DataFrame(np.where(x[None, :] <= last[:, None], y, np.nan), columns=list(x)), last


def _old_drift(per):  # each conversation's own slope times the table's span: what the claim must not be
    r = stats.dialog_rounds(per)
    return stats.conversation_slopes(per)["slope"].dropna() * (r[-1] - r[0])


def test_a_conversation_that_stopped_after_round_2_no_longer_counts_seven_rounds():
    """The issue's case: scores 1 then 0 in rounds 1 and 2, then the context stopped the dialog.
    Its own slope times R - 1 = 7 is -7.0, beside complete conversations whose values lie in [-1, 1]."""
    flat = pd.DataFrame(np.full((9, 8), 0.5), columns=range(1, 9)) + np.linspace(0, 0.2, 9)[:, None]
    stopped = pd.DataFrame([[1.0, 0.0] + [np.nan] * 6], columns=range(1, 9), index=[9])
    per = pd.concat([flat, stopped])
    assert _old_drift(per)[9] == pytest.approx(-7.0)
    assert _old_drift(per).mean() == pytest.approx(-0.7)  # ten conversations, nine of them flat
    # weighted by information (0.5 against 42 for rounds 1..8), it moves the claim by 0.5 / 378.5 * -7
    assert stats.fitted_change(per).mean() == pytest.approx(-7 * 0.5 / (9 * 42 + 0.5))
    assert stats.excluded_from_drift(per) == 0
    # one dialog round: no slope, left out and counted
    one = pd.concat([per, pd.DataFrame([[0.2] + [np.nan] * 7], columns=range(1, 9), index=[10])])
    assert stats.excluded_from_drift(one) == 1 and 10 not in stats.fitted_change(one).index


def test_planted_early_stops_leave_the_drift_claim_unbiased_where_extrapolation_is_not():
    """200 planted tables of 60 conversations, half of them stopping after a random round 2..7.
    A linear decline: both are unbiased, but the extrapolated slopes scatter more than twice as
    far. A decline that flattens (the shape drift curves take): extrapolating early slopes over
    seven rounds overstates the fitted change by ~0.14; weighting by information cuts that to a
    fifth (a conversation's slope over rounds 1..k is not the full span's slope when the curve bends)."""
    lin = lambda x: 0.8 - 0.05 * x  # noqa: E731
    bent = lambda x: 0.4 + 0.4 * np.exp(-(x - 1) / 2.5)  # noqa: E731
    for curve, kind in ((lin, "linear"), (bent, "bent")):
        x = np.arange(1, 9)
        truth = np.polyfit(x, curve(x), 1)[0] * 7  # the fitted change over rounds 1..8, every conversation complete
        old, new = [], []
        for seed in range(200):
            per, _ = _stopping(60, curve, stop_share=0.5, seed=seed)
            old.append(_old_drift(per).mean())
            new.append(stats.fitted_change(per).mean())
        old, new = np.array(old), np.array(new)
        se = new.std() / np.sqrt(len(new))
        if kind == "linear":
            assert abs(new.mean() - truth) < 3 * se
            assert old.std() > 2 * new.std()
        else:
            assert abs(old.mean() - truth) > 0.1 and abs(new.mean() - truth) < abs(old.mean() - truth) / 4


def test_paired_claims_use_the_rounds_both_settings_reached():
    """Repetition overflows first: here it stops after round 3 in 60% of conversations while the
    baseline runs to round 8, and the two settings have the same bent curve (no effect at all).
    Pooling each setting's own rounds shows a level "gain" and a flatter decline; paired over the
    rounds both reached, both claims are zero within simulation error."""
    bent = lambda x: 0.4 + 0.4 * np.exp(-(x - 1) / 2.5)  # noqa: E731
    old_level, new_level, new_drift, old_drift = [], [], [], []
    for seed in range(100):
        base, _ = _stopping(40, bent, stop_share=0.0, seed=seed)
        rep, _ = _stopping(40, bent, stop_share=0.6, seed=10_000 + seed, stop_after=3)
        old_level.append((stats.claim_values(rep, "level") - stats.claim_values(base, "level")).mean())
        new_level.append(stats.claim_values(rep, "level", versus=base).mean())
        old_drift.append((_old_drift(rep) - _old_drift(base)).mean())
        new_drift.append(stats.claim_values(rep, "drift", versus=base).mean())
    for old, new in ((old_level, new_level), (old_drift, new_drift)):
        old, new = np.array(old), np.array(new)
        assert abs(new.mean()) < 3 * new.std() / np.sqrt(len(new))
        assert abs(old.mean()) > 10 * old.std() / np.sqrt(len(old))
    # and the difference is per conversation over the common rounds: by hand for one conversation
    a = pd.DataFrame({1: [0.9], 2: [0.7], 3: [0.6], 4: [0.2]})
    b = pd.DataFrame({1: [0.5], 2: [0.5], 3: [np.nan], 4: [np.nan]})
    assert stats.claim_values(a, "level", versus=b)[0] == pytest.approx(0.8 - 0.5)


def test_tables_count_the_conversations_still_running_and_stopped_per_round():
    sc = _scores(n=6, rounds=(0, 1, 2, 3), drop=0.0, seed=3).assign(context="ok", error="")
    # conversation 0 stopped after round 1, conversation 1 after round 2
    gone = ((sc["conversation"] == 0) & (sc["round"] >= 2)) | ((sc["conversation"] == 1) & (sc["round"] >= 3))
    sc.loc[gone, ["score", "error", "context"]] = [np.nan, "context overflow: probe not asked", "overflow"]
    br = stats.by_round(sc).set_index(["kind", "round"])
    assert br.loc[("agent", 1), ["n_running", "n_stopped"]].tolist() == [6, 0]
    assert br.loc[("agent", 2), ["n_running", "n_stopped"]].tolist() == [5, 1]
    assert br.loc[("agent", 3), ["n_running", "n_stopped", "n_conversations"]].tolist() == [4, 2, 4]
    ch = stats.change_over_dialog(sc).set_index(["kind", "claim"])
    assert ch.loc[("agent", "drift"), "n_stopped"] == 2 and ch.loc[("agent", "shift"), "n_stopped"] == 0
    # conversation 0 has one dialog round: no slope, left out of the drift claim and counted
    assert ch.loc[("agent", "drift"), ["n_conversations", "n_excluded"]].tolist() == [5, 1]


def test_difference_from_the_control_is_paired_by_conversation():
    base = _scores(rounds=(0, 1, 2, 3), drop=0.3)
    ctl = _scores(rounds=(0, 1, 2, 3), drop=0.0, seed=1).assign(setting="control")
    ch = stats.change_over_dialog(pd.concat([base, ctl], ignore_index=True))
    # 2 settings x 2 kinds x 2 claims and 2 kinds x 2 differences, less what the design fixes: the
    # shift minus the control's (zero) and the control's shift (the baseline's), for both kinds
    assert (ch["n_comparisons"] == 8).all()
    fixed = ch[ch["family"] != stats.TESTED].set_index(["setting", "versus", "kind"])
    assert set(fixed.index) == {("none", "control", k) for k in ("agent", "user")} | {
        ("control", "", k) for k in ("agent", "user")}
    assert (fixed["claim"] == "shift").all() and fixed["p_holm"].isna().all() and not fixed["significant"].any()
    assert fixed["change"].notna().all()  # still reported, with its interval
    alone = stats.change_over_dialog(ctl)  # the control's own table repeats claims tested beside the baseline
    assert (alone["family"] == stats.TESTED_ELSEWHERE).all() and alone["p_holm"].isna().all()
    did = ch[ch["versus"] == "control"].set_index(["kind", "claim"])
    per = {s: stats.per_conversation(d[d["kind"] == "agent"]) for s, d in (("none", base), ("control", ctl))}
    want = (stats.claim_values(per["none"], "drift") - stats.claim_values(per["control"], "drift")).mean()
    assert did.loc[("agent", "drift"), "change"] == pytest.approx(want)
    assert did.loc[("agent", "drift"), "change"] == pytest.approx(-0.2, abs=0.03)
    assert did.loc[("agent", "drift"), "significant"] and np.isnan(did.loc[("agent", "drift"), "first_mean"])
    assert ((ch["setting"] == "control") & (ch["versus"] == "control")).sum() == 0


def _with_errors(df, rows, *, overflow=()):
    df = df.copy()
    df["error"], df["context"] = "", "ok"
    df.loc[list(rows), ["score", "error"]] = [np.nan, "ValueError: no digits"]
    df.loc[list(overflow), ["score", "error", "context"]] = [np.nan, "context overflow: probe not asked", "overflow"]
    return df


def test_judge_errors_are_scored_zero_counted_and_the_dropped_treatment_reported():
    sc = _scores(rounds=(0, 1, 2, 3), drop=0.0)
    agent_late = sc.index[(sc["kind"] == "agent") & (sc["round"] == 3)][:12]
    bad = _with_errors(sc, agent_late, overflow=sc.index[(sc["kind"] == "user")][:2])
    assert stats.judge_error_flags(bad).sum() == 12
    assert stats.treat_judge_errors(bad).loc[agent_late, "score"].eq(0).all()
    assert stats.treat_judge_errors(bad).loc[bad["context"] == "overflow", "score"].isna().all()
    assert stats.treat_judge_errors(bad, "drop").loc[agent_late, "score"].isna().all()
    with pytest.raises(ValueError, match="unknown judge-error treatment 'nan'"):
        stats.treat_judge_errors(bad, "nan")
    ch = stats.change_over_dialog(bad).set_index(["kind", "claim"])
    drift = ch.loc[("agent", "drift")]
    # scored 0, twelve late answers pull the fitted decline down; dropped, it stays near the truth (0)
    assert drift["judge_errors"] == 12 and drift["judge_error_treatment"] == "scored_0"
    assert drift["change"] < -0.1 and abs(drift["change_if_dropped"]) < 0.05
    assert drift["significant"] and not drift["significant_if_dropped"]
    assert ch.loc[("user", "drift"), "judge_errors"] == 0
    br = stats.by_round(bad).set_index(["kind", "round"])
    assert br.loc[("agent", 3), "judge_errors"] == 12 and br.loc[("agent", 2), "judge_errors"] == 0
    assert br.loc[("agent", 3), "mean"] < br.loc[("agent", 3), "mean_if_dropped"]
    counts = stats.judge_error_counts(bad.assign(persona="p1")).set_index(["setting", "kind", "persona"])
    assert counts.loc[("none", "agent", "p1"), "judge_errors"] == 12
    assert counts.loc[("none", "user", "p1"), ["judge_errors", "unasked"]].tolist() == [0, 2]
    assert counts.loc[("none", "user", "p1"), "answers"] == (bad["kind"] == "user").sum() - 2


def test_mitigation_claims_separate_the_level_from_the_change_over_the_dialog():
    base = _scores(rounds=(0, 1, 2, 3), drop=0.3)
    lifted = base.assign(setting="lift", score=np.clip(base["score"] + 0.2 * (base["round"] >= 1), 0, 1))
    flat = base.assign(setting="flat", score=np.clip(base["score"] + 0.1 * base["round"], 0, 1))
    v = stats.vs_baseline(pd.concat([base, lifted, flat], ignore_index=True)).set_index(["setting", "claim"])
    assert (v["n_comparisons"] == 4).all()
    assert v.loc[("lift", "level"), "diff_vs_baseline"] == pytest.approx(0.2, abs=0.01)
    assert v.loc[("lift", "level"), "significant"] and not v.loc[("lift", "drift"), "significant"]
    assert abs(v.loc[("lift", "drift"), "diff_vs_baseline"]) < 0.03
    assert v.loc[("flat", "drift"), "diff_vs_baseline"] == pytest.approx(0.2, abs=0.01)
    assert v.loc[("flat", "drift"), "significant"]
    assert v.loc[("none", "level"), "diff_vs_baseline"] == 0 and np.isnan(v.loc[("none", "level"), "p_value"])


def test_by_round_counts_context_problems_and_accepts_tables_without_the_column():
    flag = _scores(context=lambda d: np.where((d["round"] == 2) & (d["conversation"] == 0), "truncated", "ok"))
    br = stats.by_round(flag).set_index(["kind", "round"])
    assert br.loc[("agent", 2), "context_not_ok"] == 2 and br.loc[("agent", 1), "context_not_ok"] == 0
    plain = stats.by_round(_scores())
    assert (plain["context_not_ok"] == 0).all()
    assert ((plain["ci_low"] >= 0) & (plain["ci_high"] <= 1)).all()
    empty_ctx = stats.by_round(_scores(context=lambda d: np.full(len(d), np.nan)))
    assert (empty_ctx["context_not_ok"] == 0).all()


def _mmlu(letter_acc, cloze_acc, settings=("none", "ss-k0.5"), n=200, legacy=False):
    rng = np.random.default_rng(1)
    rows = []
    for s in settings:
        for i in range(n):
            row = {"setting": s, "index": i, "subject": "x", "answer": "A"}
            lc, cc = rng.random() < letter_acc, rng.random() < cloze_acc
            if legacy:
                row.update({"correct": lc, "p_correct": 0.3, "predicted": "A"})
            else:
                row.update({"letter_correct": lc, "letter_p_correct": 0.3, "letter_predicted": "A",
                            "cloze_correct": cc, "cloze_p_correct": 0.4, "cloze_predicted": "B"})
            rows.append(row)
    return pd.DataFrame(rows)


def test_mmlu_form_choice_uses_the_form_above_chance():
    form, why = choose_form(_mmlu(0.22, 0.45), 0.95)
    assert form == "cloze" and "above chance" in why
    assert choose_form(_mmlu(0.6, 0.45), 0.95)[0] == "letter"
    form, why = choose_form(_mmlu(0.22, 0.26), 0.95)
    assert "cannot be measured" in why
    legacy = _mmlu(0.6, 0, legacy=True)
    assert mmlu_form(legacy, "cloze") is None and choose_form(legacy, 0.95)[0] == "letter"


def test_tradeoff_rows_pair_settings_and_name_the_form():
    sc = _scores()
    sc2 = sc.assign(setting="ss-k0.5", score=np.clip(sc["score"] + 0.2 * (sc["round"] >= 1), 0, 1))
    scores = pd.concat([sc, sc2], ignore_index=True)
    settings = [{"name": "none", "family": "none", "method": "none", "value": None},
                {"name": "ss-k0.5", "family": "ss", "method": "split_softmax", "value": 0.5}]
    t = tradeoff_rows(settings, {"none", "ss-k0.5"}, scores, _mmlu(0.2, 0.5), confidence=0.9).set_index("setting")
    assert (t["mmlu_form"] == "cloze").all()
    assert t.loc["ss-k0.5", "stability_diff"] > 0.1 and t.loc["ss-k0.5", "stability_diff_significant"]
    assert t.loc["none", "stability_diff"] == 0 and np.isnan(t.loc["none", "stability_diff_p"])
    assert (t["confidence"] == 0.9).all() and (t["interval_method"] == "t").all()
    assert (t["n_comparisons"] == 2).all()  # level and change over the dialog of the one setting compared
    # a lift in rounds >= 1 raises the level but leaves the change over rounds 1..R alone
    assert abs(t.loc["ss-k0.5", "drift_diff"]) < 0.05 and not t.loc["ss-k0.5", "drift_diff_significant"]
    assert t.loc["none", "drift"] == pytest.approx(-0.15, abs=0.03)  # 0.3 over rounds 0..2: 0.15 over 1..2
    assert t.loc["ss-k0.5", "judge_errors"] == 0 and "stability_diff_if_dropped" in t


def test_clustered_se_matches_the_naive_one_without_repeats_and_grows_with_planted_persona_effects():
    rng = np.random.default_rng(5)
    v = pd.Series(rng.normal(0, 1, 40))
    singles = pd.DataFrame({"agent_persona": [f"a{i}" for i in range(40)], "user_persona": [f"u{i}" for i in range(40)]})
    se, by = stats.clustered_se(v, singles[["agent_persona"]])
    assert se == pytest.approx(v.std(ddof=1) / np.sqrt(40)) and by == "agent persona"
    # 200 conversations over 8 agent and 8 user personas drawn with replacement; each persona
    # shifts its conversations' claim (sd 0.5 each) beside conversation noise (sd 0.5)
    naive, one, two, means = [], [], [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        a, u = rng.integers(0, 8, 200), rng.integers(0, 8, 200)
        eff_a, eff_u = rng.normal(0, 0.5, 8), rng.normal(0, 0.5, 8)
        vals = pd.Series(eff_a[a] + eff_u[u] + rng.normal(0, 0.5, 200))
        lab = pd.DataFrame({"agent_persona": [f"a{i}" for i in a], "user_persona": [f"u{i}" for i in u]})
        means.append(vals.mean())
        naive.append(vals.std(ddof=1) / np.sqrt(200))
        one.append(stats.clustered_se(vals, lab[["agent_persona"]])[0])
        se2, by2 = stats.clustered_se(vals, lab)
        two.append(se2)
        assert by2.endswith("(two-way)")
    # the means scatter over replicate studies by about sqrt(0.25/8 + 0.25/8 + 0.25/200) ~ 0.25;
    # the naive se (~0.06) sees none of it, clustering by agent persona half, two-way most
    scatter = np.std(means)
    print(f"scatter {scatter:.3f} naive {np.median(naive):.3f} agent {np.median(one):.3f} two-way {np.median(two):.3f}")
    assert np.median(naive) < 0.35 * scatter
    assert 2 * np.median(naive) < np.median(one) < np.median(two) < 1.2 * scatter
    assert np.isnan(stats.clustered_se(v, None)[0])


def test_change_and_mitigation_tables_carry_the_clustered_se_beside_each_claim():
    sc = _scores(n=12, rounds=(0, 1, 2, 3))
    sc["agent_persona"] = "a" + (sc["conversation"] % 3).astype(str)  # four conversations per agent persona
    sc["user_persona"] = "u" + (sc["conversation"] % 4).astype(str)
    ch = stats.change_over_dialog(sc)
    assert ch["se"].gt(0).all() and ch["se_clustered"].notna().all() and ch["clustered_by"].ne("").all()
    lifted = sc.assign(setting="lift", score=np.clip(sc["score"] + 0.2 * (sc["round"] >= 1), 0, 1))
    v = stats.vs_baseline(pd.concat([sc, lifted], ignore_index=True)).set_index(["setting", "claim"])
    assert np.isfinite(v.loc[("lift", "level"), "se_clustered"]) and v.loc[("lift", "level"), "se"] > 0


def test_a_copied_mmlu_table_is_reported_not_tested():
    sc = _scores()
    names = ("ss-k0.5", "repeat-every1")
    scores = pd.concat([sc] + [sc.assign(setting=n) for n in names], ignore_index=True)
    settings = [{"name": "none", "family": "none", "method": "none", "value": None},
                {"name": "ss-k0.5", "family": "ss", "method": "split_softmax", "value": 0.5},
                {"name": "repeat-every1", "family": "repeat", "method": "repetition", "value": 1,
                 "mmlu_copied": True}]
    mm = _mmlu(0.6, 0.5, settings=("none", "ss-k0.5"))
    mm = pd.concat([mm, mm[mm["setting"] == "none"].assign(setting="repeat-every1")], ignore_index=True)
    t = tradeoff_rows(settings, {"none"}, scores, mm).set_index("setting")
    assert t.loc["repeat-every1", "mmlu_diff"] == 0 and np.isnan(t.loc["repeat-every1", "mmlu_diff_p_holm"])
    assert t.loc["repeat-every1", "mmlu_diff_family"].startswith("fixed by design")
    assert t.loc["ss-k0.5", "mmlu_diff_family"] == stats.TESTED and (t["mmlu_n_comparisons"] == 1).all()
