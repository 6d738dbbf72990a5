"""Seeded, batch-independent token sampling: a row's token depends only on its scores and seed.

Each sampled row draws exactly ONE uniform number per step from its own stream, and the token
is found by inverting that row's cumulative distribution over its own sorted nucleus:

* the uniforms come from a counter-based generator (splitmix64 of the row's seed and the step
  number), computed on the host for all rows at once (one float64 per row per step crosses to
  the device). There is no generator state to carry, nothing consumed by other rows, and no
  generator on any device, so the same code samples on CPU and CUDA: everything else (sort,
  nucleus, inversion) runs where the scores are, and only the token ids come back;
* candidates are ordered by (score descending, token id ascending), so ties break the same way
  whether the top candidates or the whole vocabulary were sorted;
* the fast path sorts only the top ``candidates`` tokens; a row whose kept set reaches the edge
  of those candidates (a very flat distribution) is re-sorted over the whole vocabulary, alone,
  and the inversion runs on the same leading probabilities, so both paths give the same token.

Warpers follow transformers' order: temperature, then top-k (``TopKLogitsWarper``), then top-p
(``TopPLogitsWarper``) on the renormalised top-k set; a token is kept if the tokens ranked above
it hold less than ``top_p`` of the mass (the first token is always kept).
"""

from __future__ import annotations

import numpy as np
import torch

NUCLEUS_CANDIDATES = 512

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def row_uniforms(seeds: list[int] | np.ndarray, step: int) -> torch.Tensor:
    """Uniform numbers in [0, 1), float64 [len(seeds)], on the CPU: splitmix64's output number
    ``step`` for the stream started at each seed (a pure function of (seed, step))."""
    with np.errstate(over="ignore"):
        z = np.asarray(seeds, dtype=np.uint64) + np.uint64(step + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def _ordered(top: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder candidates to (score descending, id ascending), the full stable sort's order."""
    by_id = cand.argsort(dim=-1)
    top, cand = top.gather(-1, by_id), cand.gather(-1, by_id)
    order = top.argsort(dim=-1, descending=True, stable=True)
    return top.gather(-1, order), cand.gather(-1, order)


def _kept(p: torch.Tensor, top_p: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities over the kept set, zero elsewhere; number of leading probabilities used),
    for rows of float64 probabilities sorted in descending order."""
    if top_k:
        p = p[:, :top_k]
        p = p / p.sum(dim=-1, keepdim=True)  # TopP sees the softmax of the top-k scores
    keep = (torch.cumsum(p, dim=-1) - p) < top_p
    q = p * keep
    used = keep.sum(dim=-1) if not top_k else torch.full((p.shape[0],), p.shape[1], device=p.device)
    return q, used


def _invert(q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first kept probability whose cumulative mass exceeds u * total."""
    c = torch.cumsum(q, dim=-1)
    target = (u * c[:, -1])[:, None]
    idx = torch.searchsorted(c, target, right=True)[:, 0]
    n_kept = (q > 0).sum(dim=-1)
    return torch.minimum(idx, (n_kept - 1).clamp(min=0))


def sample_tokens(scores: torch.Tensor, uniforms: torch.Tensor, *, temperature: float = 1.0,
                  top_p: float = 1.0, top_k: int = 0, candidates: int = NUCLEUS_CANDIDATES) -> torch.Tensor:
    """One token id per row (long, on the scores' device) for scores [B, V] and uniforms [B]
    (float64, any device: moved to the scores').

    Everything runs on the scores' device (float64 for the probabilities and their cumulative
    sums): no random state lives anywhere, and a row's token is the same function of its scores
    and uniform on any device.
    """
    b, v = scores.shape
    dev = scores.device
    uniforms = uniforms.to(dev, torch.float64)
    scores = scores.float() / temperature
    log_z = torch.logsumexp(scores, dim=-1, keepdim=True)
    k = min(v, max(candidates, top_k + 1) if top_k else candidates)
    top, cand = scores.topk(k, dim=-1)
    top, cand = _ordered(top, cand)
    p = torch.exp(top - log_z).double()
    q, used = _kept(p, top_p, top_k)
    out = cand.gather(-1, _invert(q, uniforms)[:, None])[:, 0]
    if k < v:
        # a row must be re-sorted over the whole vocabulary if its used prefix reaches the edge of
        # the candidates, or ends in a tie with the edge (the tied tokens beyond it might rank first)
        last = (used - 1).clamp(min=0, max=k - 1)
        full = (used >= k) | (top.gather(-1, last[:, None])[:, 0] == top[:, -1])
        if bool(full.any()):
            rows = full.nonzero().flatten()
            s_top, s_cand = scores[rows].sort(dim=-1, descending=True, stable=True)
            p_full = torch.exp(s_top - log_z[rows]).double()
            q_full, _ = _kept(p_full, top_p, top_k)
            out[rows] = s_cand.gather(-1, _invert(q_full, uniforms[rows])[:, None])[:, 0]
    return out


def nucleus(scores: torch.Tensor, temperature: float, top_p: float,
            top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ids [B, V] and their sampling probabilities [B, V] (zero outside the kept set):
    the distribution :func:`sample_tokens` draws from, for comparison with transformers' warpers."""
    scores = scores.float() / temperature
    log_z = torch.logsumexp(scores, dim=-1, keepdim=True)
    top, cand = scores.sort(dim=-1, descending=True, stable=True)
    q, _ = _kept(torch.exp(top - log_z).double(), top_p, top_k)
    q = q / q.sum(dim=-1, keepdim=True)
    return cand[:, : q.shape[1]], q.float()
