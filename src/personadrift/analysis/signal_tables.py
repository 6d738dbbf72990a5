"""Tables and claims of the judge-free drift signals (``analysis/drift_signals.py``).

The same statistics as the judge's drift tables (``analysis/stats.py``), on each signal in place
of the judge score: per round, the mean over conversations of each conversation's mean with an
interval; per setting, kind and signal, the claims ``shift`` (round 1 minus round 0) and
``drift`` (the fitted change over rounds 1..R, the judge's "decline over the dialog"),
Holm-adjusted together in one family of their own (never mixed with the judge's). The KL's shift
is fixed by design (the KL is zero at round 0, where both contexts are the same, and never
negative), so it is reported without a test. The link with the judge is estimated as the
attention link is (``analysis/attention.within_conversation_association``): stability and the
signal, per conversation and round, both residualised on conversation and round.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from personadrift.analysis.attention import within_conversation_association
from personadrift.analysis.stats import (
    TESTED,
    _adjust,
    _interval_columns,
    claim_rounds,
    claim_values,
    conversation_personas,
    mean_interval,
    per_conversation,
)

SIGNALS = ("kl", "projection")
KL_SHIFT_FIXED = "fixed by design: the KL is zero at round 0 (the same context twice) and never negative"


def _as_scores(signals: pd.DataFrame, signal: str) -> pd.DataFrame:
    """The rows of ``signal`` as a score table (``score`` = the signal), finite values only."""
    d = signals.assign(score=pd.to_numeric(signals[signal], errors="coerce"))
    return d[np.isfinite(d["score"])]


def signal_by_round(signals: pd.DataFrame, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """Per setting, probe kind, signal and round: the mean over conversations (of each
    conversation's mean over its answers) with its interval; signals without a value (no persona
    vectors: projection) are left out."""
    rows = []
    for signal in SIGNALS:
        d = _as_scores(signals, signal)
        for (setting, kind, rnd), g in d.groupby(["setting", "kind", "round"], sort=True):
            per = g.groupby("conversation")["score"].mean()
            iv = mean_interval(per, method=method, confidence=confidence, resamples=resamples, seed=seed)
            rows.append({"setting": setting, "kind": kind, "signal": signal, "round": int(rnd), "mean": iv.mean,
                         "ci_low": iv.low, "ci_high": iv.high, "n_conversations": int(g["conversation"].nunique()),
                         "n_rows": len(g), "method": method, "confidence": confidence})
    return pd.DataFrame(rows, columns=["setting", "kind", "signal", "round", "mean", "ci_low", "ci_high",
                                       "n_conversations", "n_rows", "method", "confidence"])


def signal_change(signals: pd.DataFrame, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """The signals' claims, one row each (``shift``, ``drift``), the tested ones Holm-adjusted
    together; columns as the judge's ``change.csv`` (``change``, interval, naive and
    persona-clustered standard errors, ``p_holm``, ``significant``, ``family``)."""
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    rows = []
    for signal in SIGNALS:
        d = _as_scores(signals, signal)
        personas = conversation_personas(d)
        for (setting, kind), g in d.groupby(["setting", "kind"], sort=True):
            per = per_conversation(g)
            for claim in ("shift", "drift"):
                span = claim_rounds(per, claim)
                if span is None:
                    continue
                family = KL_SHIFT_FIXED if (signal == "kl" and claim == "shift") else TESTED
                cols = _interval_columns(claim_values(per, claim), personas, kw, tested=family == TESTED)
                rows.append({"setting": setting, "kind": kind, "signal": signal, "claim": claim, "family": family,
                             "first_round": span[0], "last_round": span[1],
                             "first_mean": float(per[span[0]].mean()), "last_mean": float(per[span[1]].mean()),
                             "change": cols.pop("estimate"), **cols, "method": method, "confidence": confidence})
    return _adjust(pd.DataFrame(rows), confidence)


def association_with_judge(signals: pd.DataFrame, scores: pd.DataFrame, *, confidence: float = 0.95) -> dict:
    """Per signal: its within-conversation association with stability (the agent probe's judge
    score), per conversation and dialog round (1..R: at round 0 the KL is zero by design), net of
    conversation and round (two-way fixed effects, cluster-robust over conversations), as the
    attention link is estimated."""
    stab = scores[scores["kind"] == "agent"].groupby(["conversation", "round"], as_index=False)["score"].mean()
    out: dict = {"judge": "stability (agent probe's judge score)", "rounds": "dialog rounds (1..R)"}
    for signal in SIGNALS:
        d = _as_scores(signals[(signals["kind"] == "agent") & (signals["round"] >= 1)], signal)
        per = d.groupby(["conversation", "round"], as_index=False)["score"].mean().rename(columns={"score": signal})
        joined = per.merge(stab, on=["conversation", "round"], how="inner")
        out[signal] = within_conversation_association(joined, confidence=confidence, x=signal, y="score")
    return out
