"""Softmax dilution: THIS PROJECT's model of attention decay, not the paper's theorem.

The paper (Li et al. 2024) explains persona drift with a geometric argument whose exact
statement we could not read (docs/paper-protocol: "[2nd, weak]"). This module is a simple,
clearly labelled stand-in that the recorder's numbers can be checked against.

Model. For one head and one query, let the system-prompt keys carry total unnormalised weight
S_p = sum_j exp(s_j) (s_j the scaled scores), and let every later (non-prompt) key add on average
c = E[exp(s)]. After n non-prompt tokens the prompt's attention share is

    share(n) = S_p / (S_p + c * n).

Inside a turn n grows by one per token, so the share decays slowly; a new user turn adds a whole
block of tokens at once, so, read per turn, the share falls step-wise at turn boundaries.

Assumptions (each may fail in a real model, which is why :func:`fit_dilution` reports r2/rmse):
  1. S_p does not depend on n: the query's affinity to the prompt keys is stationary over the
     dialog (queries differ, so S_p is estimated by a median over queries);
  2. the non-prompt weights exp(s_i) are exchangeable with a common mean c (no recency bias, no
     second attention sink among the non-prompt tokens);
  3. the sum over n keys is close to its mean c * n (law of large numbers; at small n the
     expectation of the share exceeds the prediction by the Jensen gap, see synthetic_check);
  4. one head, one query at a time; layer interactions are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Fit", "fit_dilution", "predicted_share", "synthetic_check"]


def predicted_share(S_p, c, n):
    """S_p / (S_p + c * n); broadcasts over tensors, works on floats."""
    if isinstance(S_p, torch.Tensor) or isinstance(c, torch.Tensor) or isinstance(n, torch.Tensor):
        S_p, c, n = (torch.as_tensor(x, dtype=torch.float64) for x in (S_p, c, n))
    return S_p / (S_p + c * n)


@dataclass(frozen=True)
class Fit:
    """Result of :func:`fit_dilution`. ``r2``/``rmse`` compare predicted and measured shares."""

    S_p: float
    c: float
    r2: float
    rmse: float
    n: int  # number of (layer, head, query, ...) entries used


def fit_dilution(log_S_prompt, log_S_other, n_other, *, min_other: int = 1) -> Fit:
    """Estimate S_p and c from recorded log-weights, and score the prediction on the shares.

    Inputs are tensors of one shape (e.g. a recorder's [layers, batch, heads, queries] fields, or
    a slice of them for one head). Entries with fewer than ``min_other`` visible non-prompt keys
    or non-finite logs are skipped. S_p = exp(median log S_prompt); c = sum S_other / sum n_other
    (pooled ratio of sums, the maximum-likelihood-style estimator under assumption 2), computed
    in log space. The measured share of each entry is sigmoid(log S_prompt - log S_other).
    """
    lsp = torch.as_tensor(log_S_prompt, dtype=torch.float64).reshape(-1)
    lso = torch.as_tensor(log_S_other, dtype=torch.float64).reshape(-1)
    n = torch.as_tensor(n_other, dtype=torch.float64).reshape(-1)
    keep = torch.isfinite(lsp) & torch.isfinite(lso) & (n >= max(min_other, 1))
    lsp, lso, n = lsp[keep], lso[keep], n[keep]
    if lsp.numel() == 0:
        raise ValueError("fit_dilution: no entry with a visible prompt key and a non-prompt key")
    log_sp = float(lsp.median())
    log_c = float(torch.logsumexp(lso, 0) - torch.log(n.sum()))
    measured = torch.sigmoid(lsp - lso)
    # share = 1 / (1 + exp(log c + log n - log S_p)), computed without overflow
    predicted = torch.sigmoid(log_sp - log_c - torch.log(n))
    resid = measured - predicted
    ss_res = float((resid**2).sum())
    ss_tot = float(((measured - measured.mean()) ** 2).sum())
    return Fit(
        S_p=math.exp(log_sp),
        c=math.exp(log_c),
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        rmse=math.sqrt(ss_res / lsp.numel()),
        n=int(lsp.numel()),
    )


def synthetic_check(
    seed: int = 0,
    *,
    d: int = 64,
    n_prompt: int = 16,
    n_queries: int = 256,
    ns: tuple[int, ...] = (0, 4, 16, 64, 256, 1024),
    prompt_offset: float = 2.0,
    key_std: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention layer with random queries and keys; returns (predicted, measured, stated_error).

    Each of ``n_queries`` queries q ~ N(offset * u, I) (u a random unit vector, offset =
    ``prompt_offset`` * sqrt(d) ** 0.5) attends over ``n_prompt`` prompt keys ~ N(offset * u, I)
    (shared; the offset makes them carry weight) followed by n non-prompt keys ~ N(0, key_std^2 I),
    drawn independently per query, with scores q.k / sqrt(d). For each n in ``ns``:

    * measured: the mean over queries of the softmax attention share of the prompt keys;
    * predicted: the mean over queries of S_p(q) / (S_p(q) + c(q) n), with S_p(q) exact and
      c(q) = E exp(q.k / sqrt(d)) = exp(key_std^2 |q|^2 / (2 d)) (log-normal mean), i.e. the
      model's parameters are obtained WITHOUT looking at the non-prompt keys;
    * stated_error: second-order delta method for f(X) = S_p / (S_p + X), X the sum of the n
      weights with Var X = n c^2 (exp(key_std^2 |q|^2 / d) - 1): the Jensen bias
      mean(|f''| Var X / 2) plus 4 standard errors sqrt(mean(f'^2 Var X) / n_queries).

    |predicted - measured| <= stated_error is expected at every n (tests assert it).
    """
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    u = torch.randn(d, generator=g, dtype=dt)
    u = u / u.norm()
    off = prompt_offset * math.sqrt(math.sqrt(d))
    q = torch.randn(n_queries, d, generator=g, dtype=dt) + off * u
    kp = torch.randn(n_prompt, d, generator=g, dtype=dt) + off * u
    scale = 1.0 / math.sqrt(d)
    s_p = q @ kp.T * scale  # [Q, P]
    log_Sp = torch.logsumexp(s_p, dim=-1)  # [Q]
    Sp = log_Sp.exp()
    qq = (q * q).sum(-1)
    c = torch.exp(key_std**2 * qq * scale**2 / 2)
    var1 = c**2 * torch.expm1(key_std**2 * qq * scale**2)  # variance of one weight
    n_max = max(ns)
    ko = torch.randn(n_queries, n_max, d, generator=g, dtype=dt) * key_std
    w_o = torch.exp(torch.einsum("qd,qnd->qn", q, ko) * scale)  # [Q, n_max]
    csum = torch.cat([torch.zeros(n_queries, 1, dtype=dt), w_o.cumsum(-1)], dim=-1)
    predicted, measured, stated = [], [], []
    for n in ns:
        X = csum[:, n]
        measured.append((Sp / (Sp + X)).mean())
        mean_x = c * n
        predicted.append((Sp / (Sp + mean_x)).mean())
        var_x = var1 * n
        f1 = Sp / (Sp + mean_x) ** 2
        f2 = 2 * Sp / (Sp + mean_x) ** 3
        stated.append((0.5 * f2 * var_x).mean() + 4 * torch.sqrt((f1**2 * var_x).mean() / n_queries))
    return torch.stack(predicted), torch.stack(measured), torch.stack(stated)
