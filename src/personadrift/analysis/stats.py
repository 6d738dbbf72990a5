"""Means and paired differences over conversations, with intervals of measured coverage.

Unit of analysis. Probe rows within one conversation are correlated (same personas, same
dialog), so every interval is taken over conversations: each conversation contributes the mean
of its rows (``unit="row"`` in :func:`by_round` treats rows as independent, as upstream did).

Methods (``scoring.method``), each giving an interval and a two-sided p-value for "mean = 0":

* ``t``: Student t-interval and one-sample t-test (the default: its coverage at n = 8 and
  n = 200 is measured by ``analysis.simulate`` / ``bench/planted_drift.py``);
* ``signflip``: sign-flip permutation test (exact enumeration up to 16 units, else ``resamples``
  random flips) and the interval obtained by inverting it;
* ``bca``: bias-corrected and accelerated bootstrap interval; p-value from the bootstrap tails;
* ``percentile``: percentile bootstrap (what this project used first; under-covers at small n).

Across the comparisons one figure makes, p-values are Holm-adjusted (:func:`holm`), and a claim
is "significant" when its adjusted p-value is below 1 - confidence.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ("t", "signflip", "bca", "percentile")
METHOD_NAME = {
    "t": "t-interval",
    "signflip": "sign-flip permutation interval",
    "bca": "BCa bootstrap interval",
    "percentile": "percentile bootstrap interval",
}
EXACT_SIGNFLIP_MAX = 16  # 2**16 sign patterns: exact enumeration is still cheap


@dataclass(frozen=True)
class Interval:
    """Mean of the units with a two-sided interval and a p-value for mean = 0."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int
    method: str


def _clean(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def mean_interval(values, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> Interval:
    """Interval and p-value of the mean of ``values`` (NaNs dropped) by ``method``.

    Fewer than two finite values give NaN bounds and p-value. All-equal values give a
    zero-width interval; their p-value is the exact sign-flip one (1 when the value is 0).
    """
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}; known: {', '.join(METHODS)}")
    x = _clean(values)
    n = len(x)
    if n < 2:
        m = float(x[0]) if n else float("nan")
        return Interval(m, float("nan"), float("nan"), float("nan"), n, method)
    m = float(x.mean())
    if np.all(x == x[0]):
        p = 1.0 if x[0] == 0 else min(1.0, 2.0 ** (1 - n))
        return Interval(m, m, m, p, n, method)
    if method == "t":
        lo, hi, p = _t(x, confidence)
    elif method == "signflip":
        lo, hi, p = _signflip(x, confidence, resamples, seed)
    else:
        lo, hi, p = _bootstrap(x, confidence, resamples, seed, bca=method == "bca")
    return Interval(m, float(lo), float(hi), float(p), n, method)


def _t(x: np.ndarray, confidence: float):
    n, m = len(x), x.mean()
    se = x.std(ddof=1) / np.sqrt(n)
    q = stats.t.ppf((1 + confidence) / 2, n - 1)
    p = 2 * stats.t.sf(abs(m) / se, n - 1)
    return m - q * se, m + q * se, p


def _sign_patterns(n: int, resamples: int, seed: int) -> np.ndarray:
    """[patterns, n] of +-1: all of them for small n, else random ones (the identity first)."""
    if n <= EXACT_SIGNFLIP_MAX:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    rng = np.random.default_rng(seed)
    s = rng.choice((1.0, -1.0), size=(resamples, n))
    s[0] = 1.0
    return s


def _signflip_p(x: np.ndarray, mu0: float, signs: np.ndarray) -> float:
    d = x - mu0
    obs = abs(d.mean())
    flipped = np.abs(signs @ d) / len(d)
    return float(np.mean(flipped >= obs - 1e-12))


def _signflip(x: np.ndarray, confidence: float, resamples: int, seed: int):
    signs = _sign_patterns(len(x), resamples, seed)
    alpha = 1 - confidence
    m = x.mean()

    def bound(far: float) -> float:
        # the set {mu0 : p(mu0) > alpha} is an interval around the mean; bisect its edge
        near = m
        if _signflip_p(x, far, signs) > alpha:
            return far  # even the data's range is not rejected (tiny n): report the range
        for _ in range(40):
            mid = (near + far) / 2
            if _signflip_p(x, mid, signs) > alpha:
                near = mid
            else:
                far = mid
        return (near + far) / 2

    return bound(float(x.min())), bound(float(x.max())), _signflip_p(x, 0.0, signs)


def _bootstrap(x: np.ndarray, confidence: float, resamples: int, seed: int, *, bca: bool):
    rng = np.random.default_rng(seed)
    n, m = len(x), x.mean()
    boot = x[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    a_lo, a_hi = (1 - confidence) / 2, (1 + confidence) / 2
    if bca:
        z0 = stats.norm.ppf(np.clip(np.mean(boot < m) + 0.5 * np.mean(boot == m), 1 / resamples, 1 - 1 / resamples))
        jack = (x.sum() - x) / (n - 1)
        dj = jack.mean() - jack
        den = 6 * (dj**2).sum() ** 1.5
        acc = (dj**3).sum() / den if den > 0 else 0.0

        def adj(a):
            z = stats.norm.ppf(a)
            return stats.norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))

        a_lo, a_hi = adj(a_lo), adj(a_hi)
    lo, hi = np.quantile(boot, [a_lo, a_hi])
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    return lo, hi, p


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs stay NaN and do not count as comparisons)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    k = len(order)
    adj = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    out[order] = adj
    return out


def describe(method: str, confidence: float) -> str:
    """How intervals are made, for captions: e.g. '95% t-interval over conversations'."""
    return f"{confidence:.0%} {METHOD_NAME[method]} over conversations"


def _units(df: pd.DataFrame, unit: str) -> pd.Series:
    if unit == "row":
        return df["score"]
    return df.groupby("conversation")["score"].mean()


def context_flags(scores: pd.DataFrame) -> pd.Series:
    """True for rows whose prompt did not fit as is (``context`` not "ok"); False without the column."""
    if "context" not in scores:
        return pd.Series(False, index=scores.index)
    c = scores["context"]
    return c.notna() & (c.astype(str).str.strip() != "") & (c.astype(str) != "ok")


def by_round(scores: pd.DataFrame, *, unit: str = "conversation", method: str = "t", confidence: float = 0.95,
             resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean score with an interval per setting, probe kind and round (bounds clipped to [0, 1]).

    ``context_not_ok`` counts the round's rows whose prompt was truncated or overflowed.
    """
    scores = scores.assign(_ctx=context_flags(scores))
    rows = []
    for (setting, kind, rnd), g in scores.groupby(["setting", "kind", "round"], sort=True):
        flagged = int(g["_ctx"].sum())
        g = g[np.isfinite(g["score"])]
        iv = mean_interval(_units(g, unit), method=method, confidence=confidence, resamples=resamples, seed=seed)
        rows.append({
            "setting": setting, "kind": kind, "round": int(rnd), "mean": iv.mean,
            "ci_low": max(0.0, iv.low) if np.isfinite(iv.low) else iv.low,
            "ci_high": min(1.0, iv.high) if np.isfinite(iv.high) else iv.high,
            "n_conversations": g["conversation"].nunique(), "n_rows": len(g), "context_not_ok": flagged,
            "method": method, "confidence": confidence,
        })
    return pd.DataFrame(rows)


def change_over_dialog(scores: pd.DataFrame, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Per setting and kind: last round minus the first, paired within conversations.

    The first round is round 0 (probes right after the system prompt, before any dialog and not
    used to select personas) when the table has it, else the smallest round. p-values are
    Holm-adjusted across all rows of the result (the claims one figure makes); ``significant``
    means adjusted p < 1 - confidence.
    """
    rows = []
    for (setting, kind), g in scores.groupby(["setting", "kind"], sort=True):
        g = g[np.isfinite(g["score"])]
        first, last = g["round"].min(), g["round"].max()
        per = g.groupby(["conversation", "round"])["score"].mean().unstack("round")
        if first == last or per.empty:
            continue
        diff = (per[last] - per[first]).dropna()
        iv = mean_interval(diff, method=method, confidence=confidence, resamples=resamples, seed=seed)
        rows.append({
            "setting": setting, "kind": kind, "first_round": int(first), "last_round": int(last),
            "first_mean": float(per[first].mean()), "last_mean": float(per[last].mean()),
            "change": iv.mean, "ci_low": iv.low, "ci_high": iv.high, "p_value": iv.p_value,
            "n_conversations": iv.n, "method": method, "confidence": confidence,
        })
    return _adjust(pd.DataFrame(rows), confidence)


def _adjust(df: pd.DataFrame, confidence: float) -> pd.DataFrame:
    if df.empty:
        return df
    df["p_holm"] = holm(df["p_value"])
    df["n_comparisons"] = int(np.isfinite(df["p_value"]).sum())
    df["significant"] = (df["p_holm"] < 1 - confidence).fillna(False).astype(bool)
    return df


def paired_vs_baseline(scores: pd.DataFrame, *, baseline: str = "none", kind: str = "agent", method: str = "t",
                       confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                       min_round: int = 1) -> pd.DataFrame:
    """Each setting minus the baseline on the same conversations (mean over rounds >= ``min_round``).

    Round 0 is left out by default: it has no dialog, so it cannot show drift being controlled.
    p-values are Holm-adjusted across the settings other than the baseline.
    """
    g = scores[(scores["kind"] == kind) & np.isfinite(scores["score"]) & (scores["round"] >= min_round)]
    per = g.groupby(["setting", "conversation"])["score"].mean().unstack("setting")
    if baseline not in per:
        return pd.DataFrame()
    rows = []
    for setting in per.columns:
        diff = (per[setting] - per[baseline]).dropna()
        if setting == baseline:
            iv = Interval(0.0, 0.0, 0.0, float("nan"), len(diff), method)
        else:
            iv = mean_interval(diff, method=method, confidence=confidence, resamples=resamples, seed=seed)
        rows.append({"setting": setting, "kind": kind, "mean": float(per[setting].mean()),
                     "diff_vs_baseline": iv.mean, "ci_low": iv.low, "ci_high": iv.high, "p_value": iv.p_value,
                     "n_conversations": iv.n, "method": method, "confidence": confidence})
    return _adjust(pd.DataFrame(rows), confidence)
