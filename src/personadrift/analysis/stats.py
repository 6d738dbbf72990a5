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
from typing import Any

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
JUDGE_ERROR_TREATMENTS = ("zero", "drop")
JUDGE_ERROR_TREATMENT = "zero"  # what every claim uses: an answer its judge cannot read did not show the persona
TREATMENT_SUFFIX = {"zero": "scored_0", "drop": "dropped"}  # columns of the other treatment: <col>_if_<suffix>
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


# Values this close (relative to the largest, or absolutely for values below 1) are the same value:
# a spread this small is rounding, or a graded score that underflowed (a Beta draw of 1e-250), and
# the t statistic of such data divides by a standard error that is 0 or noise, so p would be 0.
TIE_TOLERANCE = 1e-12


def _ties(x: np.ndarray) -> bool:
    return float(np.ptp(x)) <= TIE_TOLERANCE * max(1.0, float(np.abs(x).max()))


def mean_interval(values, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> Interval:
    """Interval and p-value of the mean of ``values`` (NaNs dropped) by ``method``.

    Fewer than two finite values give NaN bounds and p-value. All-equal values (equal within
    :data:`TIE_TOLERANCE`) give a zero-width interval; their p-value is the exact sign-flip one (1
    when the value is 0 within the same tolerance).
    """
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}; known: {', '.join(METHODS)}")
    x = _clean(values)
    n = len(x)
    if n < 2:
        m = float(x[0]) if n else float("nan")
        return Interval(m, float("nan"), float("nan"), float("nan"), n, method)
    m = float(x.mean())
    if _ties(x):
        p = 1.0 if _ties(np.append(x, 0.0)) else min(1.0, 2.0 ** (1 - n))
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
             resamples: int = 2000, seed: int = 0, judge_errors: str = JUDGE_ERROR_TREATMENT) -> pd.DataFrame:
    """Mean score with an interval per setting, probe kind and round (bounds clipped to [0, 1]).

    ``context_not_ok`` counts the round's rows whose prompt was truncated or overflowed;
    ``judge_errors`` the answers whose judge raised (treated by ``judge_errors``, the mean under
    the other treatment beside it).
    """
    other = f"mean_if_{TREATMENT_SUFFIX[other_treatment(judge_errors)]}"
    alt = treat_judge_errors(scores, other_treatment(judge_errors))
    scores = treat_judge_errors(scores, judge_errors).assign(_ctx=context_flags(scores),
                                                              _err=judge_error_flags(scores), _alt=alt["score"])
    rows = []
    for (setting, kind, rnd), g in scores.groupby(["setting", "kind", "round"], sort=True):
        flagged, n_err = int(g["_ctx"].sum()), int(g["_err"].sum())
        a = g[np.isfinite(g["_alt"])]
        g = g[np.isfinite(g["score"])]
        iv = mean_interval(_units(g, unit), method=method, confidence=confidence, resamples=resamples, seed=seed)
        rows.append({
            "setting": setting, "kind": kind, "round": int(rnd), "mean": iv.mean,
            "ci_low": max(0.0, iv.low) if np.isfinite(iv.low) else iv.low,
            "ci_high": min(1.0, iv.high) if np.isfinite(iv.high) else iv.high,
            "n_conversations": g["conversation"].nunique(), "n_rows": len(g), "context_not_ok": flagged,
            "judge_errors": n_err, "judge_error_treatment": TREATMENT_SUFFIX[judge_errors],
            other: float(_units(a.assign(score=a["_alt"]), unit).mean()) if len(a) else float("nan"),
            "method": method, "confidence": confidence,
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Judge errors. A judge that raises leaves its answer with a NaN score and the text of the
# exception in ``error``; a probe the context policy left unasked is also NaN (``context`` =
# "overflow") but is not an answer, so it is never scored.



def judge_error_flags(scores: pd.DataFrame) -> pd.Series:
    """True for rows whose judge raised (an ``error`` on an asked probe); False without the column."""
    if "error" not in scores:
        return pd.Series(False, index=scores.index)
    e = scores["error"]
    flags = e.notna() & (e.astype(str).str.strip() != "")
    if "context" in scores:
        flags &= scores["context"].astype(str) != "overflow"
    return flags


def treat_judge_errors(scores: pd.DataFrame, treatment: str = JUDGE_ERROR_TREATMENT) -> pd.DataFrame:
    """``scores`` with judge errors scored 0 (``zero``) or left NaN, so dropped (``drop``)."""
    if treatment not in JUDGE_ERROR_TREATMENTS:
        raise ValueError(f"unknown judge-error treatment {treatment!r}; known: {', '.join(JUDGE_ERROR_TREATMENTS)}")
    flags = judge_error_flags(scores)
    if not flags.any():
        return scores
    out = scores.copy()
    out.loc[flags, "score"] = 0.0 if treatment == "zero" else np.nan
    return out


def other_treatment(treatment: str) -> str:
    return next(t for t in JUDGE_ERROR_TREATMENTS if t != treatment)


def judge_error_counts(scores: pd.DataFrame) -> pd.DataFrame:
    """Per setting, probe kind and persona: answers, judge errors, and probes left unasked."""
    if scores.empty:
        return pd.DataFrame(columns=["setting", "kind", "persona", "answers", "judge_errors", "unasked"])
    persona = scores["persona"] if "persona" in scores else pd.Series("", index=scores.index)
    unasked = scores["context"].astype(str).eq("overflow") if "context" in scores else False
    df = pd.DataFrame({"setting": scores["setting"], "kind": scores["kind"],
                       "persona": persona.astype(object).fillna(""),
                       "answers": ~unasked if not isinstance(unasked, bool) else True,
                       "judge_errors": judge_error_flags(scores), "unasked": unasked})
    out = df.groupby(["setting", "kind", "persona"], sort=True)[["answers", "judge_errors", "unasked"]].sum()
    out = out.astype(int).reset_index()
    out["treatment"] = JUDGE_ERROR_TREATMENT
    return out


# ---------------------------------------------------------------------------------------------
# Claims over the dialog. Each is a per-conversation number (the conversation's mean score per
# round, samples averaged), so its interval is taken over conversations:
#
# * ``shift``: round 1 minus round 0, the change from the probe right after the system prompt
#   (no topic, no dialog) to the probe after the first dialog round;
# * ``drift``: the decline over the dialog's rounds, round 1 to the last (R): the conversation's
#   least-squares slope of score on round over rounds 1..R, times R - 1, so it reads as the
#   fitted change from round 1 to round R in score units. The primary drift claim: it uses every
#   dialog round, where first-against-last uses two;
# * ``level``: the mean over rounds 1..R (what a mitigation raises or not).
#
# A claim "against" another setting (``versus``) is the paired difference of the two settings'
# per-conversation values on the same conversation seeds and persona pairs (for the control:
# a difference in differences).

CLAIMS = ("shift", "drift", "level")
CONTROL = "control"  # the setting whose user bot has no persona (length-only drift)


def per_conversation(scores: pd.DataFrame) -> pd.DataFrame:
    """Conversation x round: the mean of the finite scores (rounds as sorted columns)."""
    g = scores[np.isfinite(scores["score"])]
    return g.groupby(["conversation", "round"])["score"].mean().unstack("round").sort_index(axis=1)


def dialog_rounds(per: pd.DataFrame) -> list:
    return [r for r in per.columns if r >= 1]


def fitted_change(per: pd.DataFrame) -> pd.Series:
    """Per conversation: least-squares slope over rounds 1..R times R - 1 (rounds it lacks are left out;
    a conversation with fewer than two dialog rounds scored has none)."""
    rounds = dialog_rounds(per)
    if len(rounds) < 2:
        return pd.Series(dtype=float)
    x = np.asarray(rounds, dtype=float)
    y = per[rounds].to_numpy(dtype=float)
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    xm = np.where(ok, x, 0).sum(axis=1) / np.maximum(n, 1)
    dx = np.where(ok, x - xm[:, None], 0)
    ym = np.where(ok, y, 0).sum(axis=1) / np.maximum(n, 1)
    sxx = (dx**2).sum(axis=1)
    sxy = (dx * np.where(ok, y - ym[:, None], 0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where((n >= 2) & (sxx > 0), sxy / sxx, np.nan)
    return pd.Series(slope * (x[-1] - x[0]), index=per.index).dropna()


def claim_values(per: pd.DataFrame, claim: str) -> pd.Series:
    """The per-conversation values of ``claim`` (see the comment above :data:`CLAIMS`)."""
    rounds = dialog_rounds(per)
    if claim == "drift":
        return fitted_change(per)
    if claim == "level":
        return per[rounds].mean(axis=1).dropna() if rounds else pd.Series(dtype=float)
    if claim == "shift":
        if 0 not in per.columns or not rounds:
            return pd.Series(dtype=float)
        return (per[rounds[0]] - per[0]).dropna()
    raise ValueError(f"unknown claim {claim!r}; known: {', '.join(CLAIMS)}")


def claim_rounds(per: pd.DataFrame, claim: str) -> tuple[int, int] | None:
    """(first, last) round a claim compares, or None when the table cannot measure it."""
    rounds = dialog_rounds(per)
    if claim == "shift":
        return (0, int(rounds[0])) if 0 in per.columns and rounds else None
    if claim == "drift":
        return (int(rounds[0]), int(rounds[-1])) if len(rounds) >= 2 else None
    return (int(rounds[0]), int(rounds[-1])) if rounds else None


def _with_other_treatment(scores: pd.DataFrame, build, keys: list, cols: list, treatment: str) -> pd.DataFrame:
    """``build`` on the scores under ``treatment``, with ``cols`` of the other treatment beside each row
    (named ``<col>_if_scored_0`` or ``<col>_if_dropped``) and the treatment named."""
    main = build(treat_judge_errors(scores, treatment))
    if main.empty:
        return main
    other = other_treatment(treatment)
    # without judge errors both treatments give the same table
    alt = build(treat_judge_errors(scores, other)) if judge_error_flags(scores).any() else main.copy()
    suffix = TREATMENT_SUFFIX[other]
    alt = alt[keys + cols].rename(columns={c: f"{c}_if_{suffix}" for c in cols}) if not alt.empty else None
    main["judge_error_treatment"] = TREATMENT_SUFFIX[treatment]
    if alt is None:
        for c in cols:
            main[f"{c}_if_{suffix}"] = np.nan
        return main
    return main.merge(alt, on=keys, how="left")


def change_over_dialog(scores: pd.DataFrame, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0, control: str = CONTROL,
                       judge_errors: str = JUDGE_ERROR_TREATMENT) -> pd.DataFrame:
    """The drift figure's claims, one row each, Holm-adjusted together (one family).

    Per setting and kind: ``shift`` (round 0 to round 1) and ``drift`` (over rounds 1..R); and
    when the table holds ``control``, each other setting's claims minus the control's on the same
    conversations (``versus`` = the control; ``versus`` is empty otherwise). ``change`` is the
    mean of the per-conversation values with its interval; ``first_mean`` / ``last_mean`` are the
    observed means of the claim's two end rounds (NaN for a difference). Judge errors are treated
    by ``judge_errors``; ``judge_errors`` counts them in the claim's rows, and the ``*_if_<other>``
    columns give the claim under the other treatment (its own Holm family).
    """
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    errors = judge_error_flags(scores)

    def build(sc: pd.DataFrame) -> pd.DataFrame:
        rows = []
        pers = {(s, k): per_conversation(g) for (s, k), g in sc.groupby(["setting", "kind"], sort=True)}
        for (setting, kind), per in pers.items():
            versus = [""] + ([control] if setting != control and (control, kind) in pers else [])
            for vs in versus:
                for claim in ("shift", "drift"):
                    span = claim_rounds(per, claim)
                    if span is None:
                        continue
                    vals = claim_values(per, claim)
                    first_mean, last_mean = float(per[span[0]].mean()), float(per[span[1]].mean())
                    if vs:
                        vals = (vals - claim_values(pers[(vs, kind)], claim)).dropna()
                        first_mean = last_mean = float("nan")
                    iv = mean_interval(vals, **kw)
                    inside = scores["kind"].eq(kind) & scores["round"].between(*span)
                    n_err = int((errors & inside & scores["setting"].isin([setting, vs])).sum())
                    rows.append({
                        "setting": setting, "versus": vs, "kind": kind, "claim": claim,
                        "first_round": span[0], "last_round": span[1], "first_mean": first_mean,
                        "last_mean": last_mean, "change": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
                        "p_value": iv.p_value, "n_conversations": iv.n, "judge_errors": n_err,
                        "method": method, "confidence": confidence,
                    })
        return _adjust(pd.DataFrame(rows), confidence)

    return _with_other_treatment(scores, build, ["setting", "versus", "kind", "claim"],
                                 ["change", "ci_low", "ci_high", "p_holm", "significant"], judge_errors)


def _adjust(df: pd.DataFrame, confidence: float) -> pd.DataFrame:
    if df.empty:
        return df
    df["p_holm"] = holm(df["p_value"])
    df["n_comparisons"] = int(np.isfinite(df["p_value"]).sum())
    df["significant"] = (df["p_holm"] < 1 - confidence).fillna(False).astype(bool)
    return df


def vs_baseline(scores: pd.DataFrame, *, baseline: str = "none", kind: str = "agent", method: str = "t",
                confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                judge_errors: str = JUDGE_ERROR_TREATMENT) -> pd.DataFrame:
    """The mitigation figure's claims: each setting against the baseline on the same conversations.

    Two claims per setting, named by what they measure: ``level`` (mean over rounds 1..R: a method
    that raises it "raises the level over the dialog") and ``drift`` (the fitted change over
    rounds 1..R: a method that makes it less negative "reduces the decline over the dialog").
    Round 0 is left out: it has no dialog. ``mean`` is the setting's own value of the claim,
    ``diff_vs_baseline`` the paired difference with its interval; p-values are Holm-adjusted over
    every claim of every setting other than the baseline (one family). Judge errors as in
    :func:`change_over_dialog`.
    """
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    errors = judge_error_flags(scores)

    def build(sc: pd.DataFrame) -> pd.DataFrame:
        g = sc[sc["kind"] == kind]
        pers = {s: per_conversation(d) for s, d in g.groupby("setting", sort=True)}
        if baseline not in pers:
            return pd.DataFrame()
        rows = []
        for setting, per in pers.items():
            for claim in ("level", "drift"):
                vals = claim_values(per, claim)
                base = claim_values(pers[baseline], claim)
                diff = (vals - base).dropna()
                own = mean_interval(vals, **kw)
                if setting == baseline:
                    iv = Interval(0.0, 0.0, 0.0, float("nan"), len(diff), method)
                else:
                    iv = mean_interval(diff, **kw)
                rows.append({"setting": setting, "kind": kind, "claim": claim, "mean": own.mean,
                             "mean_ci_low": own.low, "mean_ci_high": own.high, "diff_vs_baseline": iv.mean,
                             "ci_low": iv.low, "ci_high": iv.high, "p_value": iv.p_value, "n_conversations": iv.n,
                             "judge_errors": int((errors & scores["kind"].eq(kind) & scores["round"].ge(1)
                                                  & scores["setting"].eq(setting)).sum()),
                             "method": method, "confidence": confidence})
        return _adjust(pd.DataFrame(rows), confidence)

    return _with_other_treatment(scores, build, ["setting", "kind", "claim"],
                                 ["diff_vs_baseline", "ci_low", "ci_high", "p_holm", "significant"], judge_errors)
