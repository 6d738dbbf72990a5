"""Means, bootstrap intervals and paired differences over conversations.

Probe rows within one conversation are correlated (same personas, same dialog), so by default
the bootstrap resamples whole conversations: each conversation contributes the mean of its
rows. ``unit="row"`` resamples rows as the upstream plots did.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def bootstrap_ci(values, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0):
    """(low, high) percentile bootstrap interval of the mean; NaN when undefined."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=resamples,
        method="percentile", random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _units(df: pd.DataFrame, unit: str) -> pd.Series:
    if unit == "row":
        return df["score"]
    return df.groupby("conversation")["score"].mean()


def by_round(scores: pd.DataFrame, *, unit: str = "conversation", confidence: float = 0.95,
             resamples: int = 2000) -> pd.DataFrame:
    """Mean score with a bootstrap CI per setting, probe kind and round."""
    rows = []
    for (setting, kind, rnd), g in scores.groupby(["setting", "kind", "round"], sort=True):
        g = g[np.isfinite(g["score"])]
        u = _units(g, unit)
        lo, hi = bootstrap_ci(u, confidence=confidence, resamples=resamples)
        rows.append({
            "setting": setting, "kind": kind, "round": int(rnd), "mean": float(u.mean()) if len(u) else np.nan,
            "ci_low": lo, "ci_high": hi, "n_conversations": g["conversation"].nunique(), "n_rows": len(g),
        })
    return pd.DataFrame(rows)


def change_over_dialog(scores: pd.DataFrame, *, confidence: float = 0.95, resamples: int = 2000) -> pd.DataFrame:
    """Per setting and kind: last round minus first round, paired within conversations, with a CI.

    A negative ``change`` with ``ci_high < 0`` is drift this data can show; otherwise the
    figure says that no significant drift was measured.
    """
    rows = []
    for (setting, kind), g in scores.groupby(["setting", "kind"], sort=True):
        g = g[np.isfinite(g["score"])]
        first, last = g["round"].min(), g["round"].max()
        per = g.groupby(["conversation", "round"])["score"].mean().unstack("round")
        if first == last or per.empty:
            continue
        diff = (per[last] - per[first]).dropna()
        lo, hi = bootstrap_ci(diff, confidence=confidence, resamples=resamples)
        rows.append({
            "setting": setting, "kind": kind, "first_round": int(first), "last_round": int(last),
            "first_mean": float(per[first].mean()), "last_mean": float(per[last].mean()),
            "change": float(diff.mean()) if len(diff) else np.nan, "ci_low": lo, "ci_high": hi,
            "significant": bool(np.isfinite(hi) and (hi < 0 or lo > 0)), "n_conversations": len(diff),
        })
    return pd.DataFrame(rows)


def paired_vs_baseline(scores: pd.DataFrame, *, baseline: str = "none", kind: str = "agent",
                       confidence: float = 0.95, resamples: int = 2000) -> pd.DataFrame:
    """Each setting minus the baseline on the same conversations (mean over rounds), with a CI."""
    g = scores[(scores["kind"] == kind) & np.isfinite(scores["score"])]
    per = g.groupby(["setting", "conversation"])["score"].mean().unstack("setting")
    if baseline not in per:
        return pd.DataFrame()
    rows = []
    for setting in per.columns:
        diff = (per[setting] - per[baseline]).dropna()
        lo, hi = bootstrap_ci(diff, confidence=confidence, resamples=resamples)
        rows.append({"setting": setting, "kind": kind, "mean": float(per[setting].mean()),
                     "diff_vs_baseline": float(diff.mean()) if len(diff) else np.nan,
                     "ci_low": lo, "ci_high": hi, "n_conversations": len(diff)})
    return pd.DataFrame(rows)
