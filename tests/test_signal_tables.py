"""(d) The judge-free signals' tables, claims and link with the judge (analysis/signal_tables.py) on
simulated signals whose truth is planted, and the figure drawn from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

ROUNDS = range(5)  # round 0 (fresh context) and dialog rounds 1..4
SIGMA_JUDGE, SIGMA_KL = 0.1, 0.02
KL_SLOPE, PROJ_SLOPE, KL_LINK = 0.04, -0.1, -0.5
# the within-conversation slope of the judge score on the KL, net of conversation and round: the
# KL carries KL_LINK times the judge's own noise plus its own
TRUE_ASSOCIATION = KL_LINK * SIGMA_JUDGE**2 / (KL_LINK**2 * SIGMA_JUDGE**2 + SIGMA_KL**2)


def simulated(conversations: int = 60, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(signals, scores) in the workflow's shapes. Agent probes: the judge falls, the KL from the
    fresh context rises by KL_SLOPE per round (zero at round 0, and tied to the judge's noise by
    KL_LINK), the projection falls by PROJ_SLOPE per round, unrelated to the judge. User probes:
    no trend in either signal."""
    rng = np.random.default_rng(seed)
    sig, sc = [], []
    for c in range(conversations):
        w, u, v = rng.normal(0, 0.1), rng.normal(0, 0.05), rng.normal(0, 0.2)
        who = {"agent_persona": f"a{c % 7}", "user_persona": f"u{c % 5}"}
        for r in ROUNDS:
            eta = rng.normal(0, SIGMA_JUDGE)
            sc.append({"setting": "none", "conversation": c, "round": r, "kind": "agent", "sample": 0,
                       "score": 0.7 - 0.05 * r + w + eta, "error": "", "context": "ok", **who})
            kl = 0.0 if r == 0 else 0.2 + KL_SLOPE * r + u + KL_LINK * eta + rng.normal(0, SIGMA_KL)
            sig.append({"setting": "none", "conversation": c, "round": r, "kind": "agent", "sample": 0, **who,
                        "kl": kl, "projection": 1.0 + PROJ_SLOPE * r + v + rng.normal(0, 0.05)})
            sig.append({"setting": "none", "conversation": c, "round": r, "kind": "user", "sample": 0, **who,
                        "kl": 0.0 if r == 0 else 0.3 + u + rng.normal(0, SIGMA_KL),
                        "projection": 0.5 + v + rng.normal(0, 0.05)})
    return pd.DataFrame(sig), pd.DataFrame(sc)


@pytest.fixture(scope="module")
def tables():
    from personadrift.analysis.signal_tables import association_with_judge, signal_by_round, signal_change

    sig, sc = simulated()
    kw = {"method": "t", "confidence": 0.95, "resamples": 200, "seed": 0}
    return sig, sc, signal_by_round(sig, **kw), signal_change(sig, **kw), association_with_judge(sig, sc)


def _claim(change, signal, kind, claim):
    return change[(change["signal"] == signal) & (change["kind"] == kind) & (change["claim"] == claim)].iloc[0]


def test_the_claims_find_the_planted_declines_and_nothing_else(tables):
    _, _, _, change, _ = tables
    span = max(ROUNDS) - 1
    truth = {("kl", "agent", "drift"): KL_SLOPE * span, ("projection", "agent", "drift"): PROJ_SLOPE * span,
             ("projection", "agent", "shift"): PROJ_SLOPE, ("kl", "user", "drift"): 0.0,
             ("projection", "user", "drift"): 0.0, ("projection", "user", "shift"): 0.0}
    for (signal, kind, claim), true in truth.items():
        r = _claim(change, signal, kind, claim)
        assert r["family"] == "holm"
        assert r["ci_low"] <= true <= r["ci_high"], (signal, kind, claim, r["change"], true)
        assert bool(r["significant"]) == (true != 0), (signal, kind, claim, r["p_holm"])
    assert (change["n_comparisons"] == len(truth)).all()  # one family: the six tested claims
    for kind in ("agent", "user"):  # the KL's round-0 shift is fixed by design: reported, never tested
        r = _claim(change, "kl", kind, "shift")
        assert r["family"].startswith("fixed by design") and np.isnan(r["p_value"]) and not r["significant"]
    assert set(change["clustered_by"]) == {"agent persona x user persona (two-way)"}


def test_the_tables_per_round_hold_the_planted_means(tables):
    sig, _, by_round, _, _ = tables
    kl = by_round[(by_round["signal"] == "kl") & (by_round["kind"] == "agent")].set_index("round")
    assert kl.loc[0, "mean"] == 0.0
    for r in ROUNDS:
        if r:
            assert kl.loc[r, "ci_low"] <= 0.2 + KL_SLOPE * r <= kl.loc[r, "ci_high"]
        assert kl.loc[r, "n_conversations"] == sig["conversation"].nunique()
    # a signal with no values (no persona vectors) has no rows
    from personadrift.analysis.signal_tables import signal_by_round

    none = signal_by_round(sig.assign(projection=np.nan))
    assert set(none["signal"]) == {"kl"}


def test_the_link_with_the_judge_is_estimated_within_conversations(tables):
    _, _, _, _, assoc = tables
    kl, proj = assoc["kl"], assoc["projection"]
    assert kl["ci_low"] <= TRUE_ASSOCIATION <= kl["ci_high"] and kl["ci_high"] < 0
    assert proj["ci_low"] <= 0.0 <= proj["ci_high"]  # the projection does not follow the judge's noise
    assert kl["n_conversations"] == 60 and kl["n_points"] == 60 * (len(ROUNDS) - 1)


def test_the_figure_draws_beside_the_judges_curve(tables, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from personadrift.analysis.stats import by_round
    from personadrift.figures import draw

    _, sc, sig_by_round, change, _ = tables
    paths = [tmp_path / "judge.csv", tmp_path / "signals_by_round.csv", tmp_path / "signals_change.csv"]
    by_round(sc).to_csv(paths[0], index=False)
    sig_by_round.to_csv(paths[1], index=False)
    change.to_csv(paths[2], index=False)
    out = [tmp_path / "drift_signals.pdf", tmp_path / "drift_signals.png"]
    draw("drift_signals", [str(p) for p in paths], [str(p) for p in out])
    assert all(p.stat().st_size > 1000 for p in out)
