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
is "significant" when its adjusted p-value is below 1 - confidence. Claims the design fixes (e.g.
the round-0 shift minus the control's, zero in every conversation) are reported without a test and
stay out of every family (``family`` column).
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


def detectable_change(se: float, n: int, comparisons: int = 1, *, confidence: float = 0.95,
                      power: float = 0.8) -> float:
    """The smallest true effect a claim with standard error ``se`` over ``n`` conversations shows
    with probability ``power``: (t_{1-a/2} + t_power) x se on n - 1 degrees of freedom, at the
    Bonferroni level a = (1 - confidence) / comparisons, which Holm's first step uses and no later
    step needs more than (so the figure is an upper bound for a claim in a Holm family). A t-test's
    figure; for the bootstrap and sign-flip intervals, an approximation. NaN below 2 conversations."""
    if n < 2 or not np.isfinite(se) or se <= 0:
        return float("nan")
    alpha = (1 - confidence) / max(int(comparisons), 1)
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * se)


def describe(method: str, confidence: float) -> str:
    """How intervals are made, for captions: e.g. '95% t-interval over conversations drawn from the
    study's persona pool' (what the interval is over: see the comment above :data:`CLAIMS`)."""
    return f"{confidence:.0%} {METHOD_NAME[method]} over conversations drawn from the study's persona pool"


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
    ``n_running`` the conversations whose probe was asked at that round and ``n_stopped`` those the
    context policy had stopped by then (``selfchat.context_policy: stop``: the probe is stored
    unasked, ``context`` = "overflow"), so a late round's mean is read with who is left;
    ``judge_errors`` the answers whose judge raised (treated by ``judge_errors``, the mean under
    the other treatment beside it).
    """
    other = f"mean_if_{TREATMENT_SUFFIX[other_treatment(judge_errors)]}"
    alt = treat_judge_errors(scores, other_treatment(judge_errors))
    scores = treat_judge_errors(scores, judge_errors).assign(_ctx=context_flags(scores), _stop=stopped_flags(scores),
                                                              _err=judge_error_flags(scores), _alt=alt["score"])
    rows = []
    for (setting, kind, rnd), g in scores.groupby(["setting", "kind", "round"], sort=True):
        flagged, n_err = int(g["_ctx"].sum()), int(g["_err"].sum())
        unasked = g.groupby("conversation")["_stop"].all()  # True: every row of the round unasked
        n_stopped = int(unasked.sum())
        a = g[np.isfinite(g["_alt"])]
        g = g[np.isfinite(g["score"])]
        iv = mean_interval(_units(g, unit), method=method, confidence=confidence, resamples=resamples, seed=seed)
        rows.append({
            "setting": setting, "kind": kind, "round": int(rnd), "mean": iv.mean,
            "ci_low": max(0.0, iv.low) if np.isfinite(iv.low) else iv.low,
            "ci_high": min(1.0, iv.high) if np.isfinite(iv.high) else iv.high,
            "n_conversations": g["conversation"].nunique(), "n_rows": len(g),
            "n_running": len(unasked) - n_stopped, "n_stopped": n_stopped, "context_not_ok": flagged,
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
# * ``drift``: the decline over the dialog's rounds, round 1 to the last (R): each conversation's
#   least-squares slope of score on round over the dialog rounds it has, averaged over
#   conversations with weights equal to the information each slope carries (the sum of squared
#   centred rounds, so a conversation that stopped after two rounds weighs 0.5 against 42 for one
#   that ran rounds 1..8), times R - 1, so it reads as the fitted change from round 1 to round R in
#   score units. A conversation with fewer than two dialog rounds has no slope: it is left out and
#   counted (``n_excluded``). The primary drift claim: it uses every dialog round, where
#   first-against-last uses two;
# * ``level``: the mean over the dialog rounds the conversation has (what a mitigation raises or not).
#
# A claim "against" another setting (``versus``) is the same claim of the per-round paired
# difference of the two settings on the same conversation seeds and persona pairs, over the rounds
# both settings reached in that conversation (for the control: a difference in differences). Under
# ``selfchat.context_policy: stop`` a conversation can stop earlier in one setting than in the
# other (repetition adds prompt tokens every turn); comparing only the rounds both reached keeps a
# survivor effect out of the difference.
#
# Intervals are over conversations, which draw their persona pairs from the study's fixed persona
# pool (with replacement): they hold for that pool, not for personas in general. ``se_clustered``
# beside each claim is the standard error clustered by persona (:func:`clustered_se`), a
# sensitivity column that shows how much repeating a persona narrows the naive ``se``.

CLAIMS = ("shift", "drift", "level")
CONTROL = "control"  # the setting whose user bot has no persona (length-only drift)
TESTED = "holm"  # ``family`` of a claim tested in its table's Holm family
# Claims the design fixes are reported (value and interval) but not tested: no p, not in any family.
FIXED_ZERO = "fixed by design: zero (the control's rounds 0 and 1 are the baseline's)"
FIXED_SAME = "fixed by design: the baseline's shift (the control's rounds 0 and 1 are the baseline's)"
TESTED_ELSEWHERE = "tested in the baseline's table (which holds the control's claims)"


def per_conversation(scores: pd.DataFrame) -> pd.DataFrame:
    """Conversation x round: the mean of the finite scores (rounds as sorted columns)."""
    g = scores[np.isfinite(scores["score"])]
    return g.groupby(["conversation", "round"])["score"].mean().unstack("round").sort_index(axis=1)


def dialog_rounds(per: pd.DataFrame) -> list:
    return [r for r in per.columns if r >= 1]


def paired_difference(per: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """``per - other`` per conversation and round, on the conversations and rounds both have a score
    for (NaN wherever either setting lacks the round: stopped early, or not scored)."""
    rounds = sorted(set(per.columns) | set(other.columns))
    convs = per.index.intersection(other.index)
    return per.reindex(index=convs, columns=rounds) - other.reindex(index=convs, columns=rounds)


def conversation_slopes(per: pd.DataFrame) -> pd.DataFrame:
    """Per conversation: the least-squares slope of score on round over the dialog rounds it has
    (``slope``), their number (``rounds``) and the sum of squared centred rounds (``weight``: the
    slope's information, its variance being sigma^2 / weight). Slope NaN below two rounds."""
    rounds = dialog_rounds(per)
    if not rounds:
        return pd.DataFrame({"slope": [], "rounds": [], "weight": []}, index=per.index[:0])
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
    return pd.DataFrame({"slope": slope, "rounds": n, "weight": sxx}, index=per.index)


def fitted_change(per: pd.DataFrame) -> pd.Series:
    """Per conversation, values whose plain mean is the information-weighted mean slope times R - 1
    (R - 1 = the table's dialog span), and whose t-interval is the ratio estimator's (delta method):
    ``b + (w_i / mean w) (b_i - b)`` times the span, ``b`` the weighted mean slope. With every
    conversation complete the weights are equal and each value is the conversation's own slope
    times the span. Conversations with fewer than two dialog rounds are left out
    (:func:`excluded_from_drift` counts them)."""
    rounds = dialog_rounds(per)
    if len(rounds) < 2:
        return pd.Series(dtype=float)
    s = conversation_slopes(per).dropna(subset=["slope"])
    s = s[s["weight"] > 0]
    if s.empty:
        return pd.Series(dtype=float)
    w = s["weight"] / s["weight"].mean()
    b = float((w * s["slope"]).sum() / w.sum())
    return (b + w * (s["slope"] - b)) * float(rounds[-1] - rounds[0])


def excluded_from_drift(per: pd.DataFrame) -> int:
    """Conversations with a score in some dialog round but fewer than two: no slope, left out."""
    rounds = dialog_rounds(per)
    n = per[rounds].notna().sum(axis=1) if rounds else pd.Series(0, index=per.index)
    return int(((n >= 1) & (n < 2)).sum())


def claim_values(per: pd.DataFrame, claim: str, versus: pd.DataFrame | None = None) -> pd.Series:
    """The per-conversation values of ``claim`` (see the comment above :data:`CLAIMS`); with
    ``versus``, of the paired difference over the rounds both tables reached."""
    if versus is not None:
        per = paired_difference(per, versus)
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


# ---------------------------------------------------------------------------------------------
# Conversations stopped by the context policy, and personas repeated across conversations.


def stopped_flags(scores: pd.DataFrame) -> pd.Series:
    """True for rows of probes the context policy left unasked (``context`` = "overflow")."""
    if "context" not in scores:
        return pd.Series(False, index=scores.index)
    return scores["context"].astype(str).eq("overflow")


def stopped_by(scores: pd.DataFrame, last_round: int) -> set:
    """Conversations with a probe left unasked at or before ``last_round``: they stopped early."""
    flags = stopped_flags(scores) & scores["round"].le(last_round)
    return set(scores.loc[flags, "conversation"])


def conversation_personas(scores: pd.DataFrame) -> pd.DataFrame | None:
    """Per conversation: its agent persona and, when the table has it, its user persona (None
    without an ``agent_persona`` column)."""
    cols = [c for c in ("agent_persona", "user_persona") if c in scores]
    if "agent_persona" not in cols:
        return None
    return scores.groupby("conversation")[cols].first().astype(str)


def clustered_se(values: pd.Series, personas: pd.DataFrame | None) -> tuple[float, str]:
    """(standard error of the mean of ``values``, what it is clustered by), clustered by persona.

    Two-way (Cameron, Gelbach and Miller 2011) by agent and user persona, V = V_agent + V_user -
    V_pair, when the table names both and the two-way variance is positive; else one-way by agent
    persona (CGM's fallback when the crossed estimate is not positive). Each one-way variance is
    G / (G - 1) * sum over clusters of (sum of centred values)^2 / n^2, which with one conversation
    per cluster is the naive s^2 / n. NaN with fewer than two clusters or without personas."""
    v = values.dropna()
    n = len(v)
    if personas is None or n < 2:
        return float("nan"), ""
    lab = personas.reindex(v.index)
    e = v - v.mean()

    def one(keys: pd.Series) -> float:
        g = e.groupby(keys.to_numpy()).sum()
        return float(len(g) / (len(g) - 1) * (g**2).sum() / n**2) if len(g) >= 2 else float("nan")

    va = one(lab["agent_persona"])
    if "user_persona" in lab:
        two = va + one(lab["user_persona"]) - one(lab["agent_persona"] + "\x1f" + lab["user_persona"])
        if np.isfinite(two) and two > 0:
            return float(np.sqrt(two)), "agent persona x user persona (two-way)"
    return (float(np.sqrt(va)), "agent persona") if np.isfinite(va) else (float("nan"), "")


def _interval_columns(vals: pd.Series, personas: pd.DataFrame | None, kw: dict, *, tested: bool) -> dict:
    iv = mean_interval(vals, **kw)
    x = _clean(vals)
    se, by = clustered_se(vals, personas)
    return {"estimate": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
            "p_value": iv.p_value if tested else float("nan"), "n_conversations": iv.n,
            "se": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) >= 2 else float("nan"),
            "se_clustered": se, "clustered_by": by}


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


def change_family(setting: str, versus: str, claim: str, settings: set, control: str = CONTROL) -> str:
    """The family of a drift-figure claim: :data:`TESTED`, or why it is reported without a test.

    In a table that holds the control beside the baseline, the round-0 shift minus the control's is
    zero in every conversation and the control's own shift is the baseline's (the control's rounds 0
    and 1 are the baseline's: same system prompt, topic and seeds); a table of the control alone
    repeats the claims the baseline's table tests."""
    if settings == {control}:
        return TESTED_ELSEWHERE
    if claim == "shift" and versus == control:
        return FIXED_ZERO
    if claim == "shift" and setting == control:
        return FIXED_SAME
    return TESTED


def change_over_dialog(scores: pd.DataFrame, *, method: str = "t", confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0, control: str = CONTROL,
                       judge_errors: str = JUDGE_ERROR_TREATMENT) -> pd.DataFrame:
    """The drift figure's claims, one row each; the tested ones Holm-adjusted together (one family).

    Per setting and kind: ``shift`` (round 0 to round 1) and ``drift`` (over rounds 1..R); and
    when the table holds ``control``, each other setting's claims minus the control's on the same
    conversations (``versus`` = the control; ``versus`` is empty otherwise). ``change`` is the
    mean of the per-conversation values with its interval; ``first_mean`` / ``last_mean`` are the
    observed means of the claim's two end rounds (NaN for a difference). ``family`` says whether the
    claim is tested (:data:`TESTED`) or fixed by design / tested elsewhere (:func:`change_family`:
    no p-value, never significant). ``n_stopped`` counts the conversations the context policy stopped
    before the claim's last round (in either setting of a difference), ``n_excluded`` those left out
    of a drift claim for having fewer than two dialog rounds. Judge errors are treated by
    ``judge_errors``; ``judge_errors`` counts them in the claim's rows, and the ``*_if_<other>``
    columns give the claim under the other treatment (its own Holm family).
    """
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    errors = judge_error_flags(scores)
    personas = conversation_personas(scores)
    settings = set(scores["setting"])

    def build(sc: pd.DataFrame) -> pd.DataFrame:
        rows = []
        parts = {(s, k): g for (s, k), g in sc.groupby(["setting", "kind"], sort=True)}
        pers = {key: per_conversation(g) for key, g in parts.items()}
        for (setting, kind), per in pers.items():
            versus = [""] + ([control] if setting != control and (control, kind) in pers else [])
            for vs in versus:
                for claim in ("shift", "drift"):
                    span = claim_rounds(per, claim)
                    if span is None:
                        continue
                    other = pers[(vs, kind)] if vs else None
                    table = paired_difference(per, other) if vs else per
                    family = change_family(setting, vs, claim, settings, control)
                    cols = _interval_columns(claim_values(table, claim), personas, kw, tested=family == TESTED)
                    stopped = stopped_by(parts[(setting, kind)], span[1])
                    if vs:
                        stopped |= stopped_by(parts[(vs, kind)], span[1])
                    inside = scores["kind"].eq(kind) & scores["round"].between(*span)
                    n_err = int((errors & inside & scores["setting"].isin([setting, vs])).sum())
                    rows.append({
                        "setting": setting, "versus": vs, "kind": kind, "claim": claim, "family": family,
                        "first_round": span[0], "last_round": span[1],
                        "first_mean": float("nan") if vs else float(per[span[0]].mean()),
                        "last_mean": float("nan") if vs else float(per[span[1]].mean()),
                        "change": cols.pop("estimate"), **cols,
                        "n_stopped": len(stopped),
                        "n_excluded": excluded_from_drift(table) if claim == "drift" else 0,
                        "judge_errors": n_err, "method": method, "confidence": confidence,
                    })
        return _adjust(pd.DataFrame(rows), confidence)

    return _with_other_treatment(scores, build, ["setting", "versus", "kind", "claim"],
                                 ["change", "ci_low", "ci_high", "p_holm", "significant"], judge_errors)


def _adjust(df: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Holm over the rows whose ``family`` is :data:`TESTED` (all rows when the table has no ``family``)."""
    if df.empty:
        return df
    tested = df["family"].eq(TESTED) if "family" in df else pd.Series(True, index=df.index)
    p = df["p_value"].where(tested)
    df["p_holm"] = holm(p)
    df["n_comparisons"] = int(np.isfinite(p).sum())
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
    ``diff_vs_baseline`` the paired difference over the rounds both reached in each conversation,
    with its interval, naive ``se`` and persona-clustered ``se_clustered``; p-values are
    Holm-adjusted over every claim of every setting other than the baseline (one family).
    ``n_stopped`` counts the conversations stopped early in the setting or the baseline. Judge
    errors as in :func:`change_over_dialog`.
    """
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    errors = judge_error_flags(scores)
    personas = conversation_personas(scores)

    def build(sc: pd.DataFrame) -> pd.DataFrame:
        g = sc[sc["kind"] == kind]
        parts = dict(tuple(g.groupby("setting", sort=True)))
        pers = {s: per_conversation(d) for s, d in parts.items()}
        if baseline not in pers:
            return pd.DataFrame()
        last = int(g["round"].max())
        rows = []
        for setting, per in pers.items():
            for claim in ("level", "drift"):
                own = mean_interval(claim_values(per, claim), **kw)
                diff = paired_difference(per, pers[baseline])
                if setting == baseline:
                    cols = {"estimate": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": float("nan"),
                            "n_conversations": len(diff), "se": 0.0, "se_clustered": 0.0, "clustered_by": ""}
                else:
                    cols = _interval_columns(claim_values(diff, claim), personas, kw, tested=True)
                stopped = stopped_by(parts[setting], last) | stopped_by(parts[baseline], last)
                rows.append({"setting": setting, "kind": kind, "claim": claim, "mean": own.mean,
                             "mean_ci_low": own.low, "mean_ci_high": own.high,
                             "diff_vs_baseline": cols.pop("estimate"), **cols, "n_stopped": len(stopped),
                             "n_excluded": excluded_from_drift(diff) if claim == "drift" else 0,
                             "judge_errors": int((errors & scores["kind"].eq(kind) & scores["round"].ge(1)
                                                  & scores["setting"].eq(setting)).sum()),
                             "method": method, "confidence": confidence})
        return _adjust(pd.DataFrame(rows), confidence)

    return _with_other_treatment(scores, build, ["setting", "kind", "claim"],
                                 ["diff_vs_baseline", "ci_low", "ci_high", "p_holm", "significant"], judge_errors)
