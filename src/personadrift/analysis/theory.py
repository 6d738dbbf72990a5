"""Softmax dilution: THIS PROJECT's model of attention decay, not the paper's theorem.

The paper (Li et al. 2024) explains persona drift with a geometric argument whose exact
statement we could not read (docs/paper-protocol: "[2nd, weak]"). This module is a simple,
clearly labelled stand-in that the recorder's numbers can be checked against.

Model. For one head and one query, let the system-prompt keys carry total unnormalised weight
S_p = sum_j exp(s_j) (s_j the scaled scores), let the first token (an attention sink, which
many models attend to whatever the content) carry S_0, and let every later non-prompt key add
on average c = E[exp(s)]. After n non-prompt tokens other than the sink the prompt's share is

    share(n) = S_p / (S_p + S_0 + c * n).

Counting the sink among the "other" keys (as this module first did) breaks assumption 2 below:
one key with a large weight then inflates c at small n. The recorder's fields give S_0 from the
first-token share: S_0 = first_share * (S_p + S_other), and S_other minus S_0 over n_other - 1
keys is what c averages.

Inside a turn n grows by one per token, so the share decays slowly; a new user turn adds a whole
block of tokens at once, so, read per turn, the share falls step-wise at turn boundaries.

Assumptions (each may fail in a real model, which is why fits are scored on held-out data):
  1. S_p and S_0 do not depend on n: the query's affinity to the prompt keys and to the sink is
     stationary over the dialog (queries differ, so both are estimated by medians over queries);
  2. the non-prompt, non-sink weights exp(s_i) are exchangeable with a common mean c (no recency
     bias, no second sink);
  3. the sum over n keys is close to its mean c * n (law of large numbers; at small n the
     expectation of the share exceeds the prediction by the Jensen gap);
  4. one head, one query at a time; layer interactions are ignored.

The same estimator (:func:`fit_dilution`, :func:`score_fit`) is used on the model's recorded
attention and in :func:`synthetic_check`, which fits it on some queries of a random layer with
a planted sink and scores it on held-out queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Fit", "fit_dilution", "predicted_share", "score_fit", "sink_parts", "synthetic_check"]


def predicted_share(S_p, c, n, S_0=0.0):
    """S_p / (S_p + S_0 + c * n); broadcasts over arrays (tensors are read as arrays)."""
    S_p, c, n, S_0 = (np.asarray(x, dtype=float) if not isinstance(x, (int, float)) else x for x in (S_p, c, n, S_0))
    return S_p / (S_p + S_0 + c * n)


@dataclass(frozen=True)
class Fit:
    """Result of :func:`fit_dilution`; ``r2``/``rmse`` compare predicted and measured shares on the fitting data."""

    S_p: float
    c: float
    r2: float
    rmse: float
    n: int  # number of (query, ...) entries used
    S_0: float = 0.0  # the sink's weight; 0 when the sink is counted among the other keys

    @property
    def sink_apart(self) -> bool:
        return self.S_0 > 0


def _flat(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def sink_parts(log_S_prompt, log_S_other, n_other, first_share):
    """(log S_0, log of S_other without the sink, n_other - 1) from the recorder's fields.

    The first-token share is S_0 / (S_p + S_other) (S_other includes the sink), so
    S_0 = first_share * (S_p + S_other). Entries where the sink takes (numerically) all the
    other weight come out as -inf and are skipped by the fit.
    """
    lsp, lso, n, fs = _flat(log_S_prompt), _flat(log_S_other), _flat(n_other), _flat(first_share)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s0 = np.log(fs) + np.logaddexp(lsp, lso)
        frac = np.exp(log_s0 - lso)  # S_0 / S_other
        log_rest = lso + np.log1p(-np.clip(frac, 0.0, 1.0))
    return log_s0, log_rest, n - 1


def _prepare(log_S_prompt, log_S_other, n_other, first_share, min_other):
    lsp, lso, n = _flat(log_S_prompt), _flat(log_S_other), _flat(n_other)
    measured = 1.0 / (1.0 + np.exp(np.clip(lso - lsp, -700, 700)))  # S_p / (S_p + S_other)
    if first_share is None:
        log_s0, log_rest, n_rest = np.full_like(lsp, -np.inf), lso, n
    else:
        log_s0, log_rest, n_rest = sink_parts(lsp, lso, n, first_share)
    keep = np.isfinite(lsp) & np.isfinite(log_rest) & (n_rest >= max(min_other, 1))
    if first_share is not None:
        keep &= np.isfinite(log_s0)
    return lsp[keep], log_s0[keep], log_rest[keep], n_rest[keep], measured[keep]


def fit_dilution(log_S_prompt, log_S_other, n_other, first_share=None, *, min_other: int = 1) -> Fit:
    """Estimate S_p, S_0 and c from recorded log-weights, and score the prediction on the shares.

    Inputs are arrays of one shape (e.g. a recorder's fields for one head). With
    ``first_share`` the sink is kept apart (S_0 = exp(median log S_0), c over the other keys
    without it); without, S_0 = 0 and the sink counts as one of the other keys. S_p =
    exp(median log S_prompt); c = sum S_rest / sum n_rest (pooled ratio of sums, the
    maximum-likelihood-style estimator under assumption 2), in log space. Entries with fewer than
    ``min_other`` such keys or non-finite logs are skipped.
    """
    lsp, log_s0, log_rest, n, _ = _prepare(log_S_prompt, log_S_other, n_other, first_share, min_other)
    if lsp.size == 0:
        raise ValueError("fit_dilution: no entry with a visible prompt key and a non-prompt key")
    log_sp = float(np.median(lsp))
    S_0 = float(np.exp(np.median(log_s0))) if first_share is not None else 0.0
    log_c = float(np.logaddexp.reduce(log_rest) - np.log(n.sum()))
    fit = Fit(S_p=math.exp(log_sp), c=math.exp(log_c), r2=float("nan"), rmse=float("nan"), n=int(lsp.size), S_0=S_0)
    r2, rmse, _ = score_fit(fit, log_S_prompt, log_S_other, n_other, first_share, min_other=min_other)
    return Fit(fit.S_p, fit.c, r2, rmse, fit.n, fit.S_0)


def score_fit(fit: Fit, log_S_prompt, log_S_other, n_other, first_share=None, *,
              min_other: int = 1) -> tuple[float, float, int]:
    """(r2, rmse, entries) of ``fit``'s predicted share against the measured share of these
    entries (e.g. held-out conversations); the same entries as the fit would use are scored."""
    lsp, _, _, n, measured = _prepare(log_S_prompt, log_S_other, n_other, first_share, min_other)
    if lsp.size == 0:
        return float("nan"), float("nan"), 0
    predicted = predicted_share(fit.S_p, fit.c, n, fit.S_0)
    resid = measured - predicted
    ss_res, ss_tot = float((resid**2).sum()), float(((measured - measured.mean()) ** 2).sum())
    return (1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"), math.sqrt(ss_res / lsp.size), int(lsp.size))


def synthetic_check(
    seed: int = 0,
    *,
    d: int = 64,
    n_prompt: int = 16,
    n_queries: int = 512,
    ns: tuple[int, ...] = (1, 4, 16, 64, 256, 1024),
    prompt_offset: float = 2.0,
    sink_offset: float = 3.0,
    key_std: float = 0.5,
    tolerance: float = 0.04,
) -> dict:
    """A random attention layer with a planted sink, through the estimator used on real data.

    Queries q ~ N(offset * u, I / 4) attend over a sink key (the first token, sink_offset * sqrt(d)
    * u / |u|-aligned, so it draws weight whatever the dialog), ``n_prompt`` prompt keys ~
    N(offset * u, I) and n other keys ~ N(0, key_std^2 I), scores q.k / sqrt(d). From each query
    the recorder's fields are computed (prompt share, first-token share, log S_prompt, log S_other
    with the sink inside, n_other with the sink counted). :func:`fit_dilution` is fitted on the
    first half of the queries (all n pooled) and predicts the median share of the held-out half
    at each n (the fit is of medians). Returns lists per n: ``measured`` (held-out median share),
    ``predicted`` (sink kept apart), ``lumped`` (the same estimator with the sink counted among the other keys),
    ``stated_error`` (``tolerance``), plus ``holds`` and the held-out r2 of both.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    off = prompt_offset * math.sqrt(math.sqrt(d))
    scale = 1.0 / math.sqrt(d)
    q = rng.normal(size=(n_queries, d)) * 0.5 + off * u
    kp = rng.normal(size=(n_prompt, d)) + off * u
    k0 = sink_offset * math.sqrt(math.sqrt(d)) * u + rng.normal(size=d)
    log_sp = np.logaddexp.reduce(q @ kp.T * scale, axis=1)
    s0 = q @ k0 * scale
    n_max = max(ns)
    ko = rng.normal(size=(n_queries, n_max, d)) * key_std
    w = np.exp(np.einsum("qd,qnd->qn", q, ko) * scale)
    csum = np.concatenate([np.zeros((n_queries, 1)), w.cumsum(1)], axis=1)
    fields: dict[str, list] = {"lsp": [], "lso": [], "n": [], "first": [], "share": []}
    for n in ns:
        log_so = np.logaddexp(s0, np.log(csum[:, n]) if n else -np.inf)
        total = np.logaddexp(log_sp, log_so)
        fields["lsp"].append(log_sp)
        fields["lso"].append(log_so)
        fields["n"].append(np.full(n_queries, n + 1.0))
        fields["first"].append(np.exp(s0 - total))
        fields["share"].append(np.exp(log_sp - total))
    F = {k: np.stack(v) for k, v in fields.items()}  # [len(ns), queries]
    train, test = slice(0, n_queries // 2), slice(n_queries // 2, None)
    apart = fit_dilution(F["lsp"][:, train], F["lso"][:, train], F["n"][:, train], F["first"][:, train])
    lumped = fit_dilution(F["lsp"][:, train], F["lso"][:, train], F["n"][:, train])
    measured = np.median(F["share"][:, test], axis=1)
    predicted = predicted_share(apart.S_p, apart.c, np.asarray(ns, dtype=float), apart.S_0)
    lumped_pred = predicted_share(lumped.S_p, lumped.c, np.asarray(ns, dtype=float) + 1)
    r2_apart = score_fit(apart, F["lsp"][:, test], F["lso"][:, test], F["n"][:, test], F["first"][:, test])[0]
    r2_lumped = score_fit(lumped, F["lsp"][:, test], F["lso"][:, test], F["n"][:, test])[0]
    return {
        "n": list(ns), "measured": measured.tolist(), "predicted": predicted.tolist(), "lumped": lumped_pred.tolist(),
        "stated_error": [tolerance] * len(ns), "holds": bool((np.abs(predicted - measured) <= tolerance).all()),
        "heldout_r2": r2_apart, "heldout_r2_lumped": r2_lumped,
        "fit": {"S_p": apart.S_p, "S_0": apart.S_0, "c": apart.c},
    }
