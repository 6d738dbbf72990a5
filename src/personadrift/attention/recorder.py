"""Streaming prompt-share recorder, registered as the ``"prompt_share"`` attention implementation.

Inside every attention call, for every layer and head, the attention probabilities of each query
are reduced to five numbers (``FIELDS``):

0. ``prompt_share``: attention mass on the system-prompt key slots (after the context's
   reweighting, if it applies to this layer: pi^k under split-softmax);
1. ``first_share``: mass on the first real token (the attention sink), likewise post-intervention;
2. ``log_S_prompt``: logsumexp of the (scaled) prompt scores, log of the unnormalised prompt weight;
3. ``log_S_other``: logsumexp of the scores of all other visible keys;
4. ``n_other``: the number of visible non-prompt keys.

Items 2-4 are pre-intervention (raw scores), which is what :mod:`personadrift.analysis.theory` fits.

Memory: only [batch, heads, queries, 5] per layer is kept. The scores are computed in query
chunks of at most ``chunk_elements`` elements (a transient per-layer buffer), so nothing of size
tokens^2 is ever held across layers. The attention OUTPUT is computed by the same code path as
``"split_softmax"`` / plain SDPA, so logits are bit-identical with and without the recorder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from personadrift.attention.context import attention_context
from personadrift.attention.split_softmax import head_selection, visible_mask
from personadrift.attention.split_softmax import register as _register

if TYPE_CHECKING:  # pragma: no cover  (attention applies the hooks generation defines)
    from personadrift.generation.hooks import PromptAttentionHook

__all__ = [
    "FIELDS",
    "NAME",
    "PromptShareRecorder",
    "Recording",
    "attention_stats",
    "record_prompt_share",
]

NAME = "prompt_share"
FIELDS = ("prompt_share", "first_share", "log_S_prompt", "log_S_other", "n_other")


def attention_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    prompt_flags: torch.Tensor,
    first_flags: torch.Tensor | None,
    scale: float,
    reweight: PromptAttentionHook | None = None,
    chunk_elements: int = 1 << 21,
) -> torch.Tensor:
    """Per-query reductions [b, heads, q, 5] (see ``FIELDS``) of one attention call, float32.

    query [b, h, q, d]; key [b, hk, kv, d]; prompt_flags/first_flags bool [b, kv] (first_flags
    None: the first visible key of each query row). ``reweight`` (a prompt-attention hook, e.g.
    split-softmax's) applies to the two shares. Scores are formed ``chunk_elements`` at a time along the query axis.
    """
    b, h, q_len, d = query.shape
    hk, kv_len = key.shape[1], key.shape[2]
    n_rep = h // hk
    dev = query.device
    ninf = float("-inf")
    fp = prompt_flags.to(torch.bool)
    # prompt slots, for an exact log S_prompt from the few prompt columns
    counts = fp.sum(-1)
    n_p = max(int(counts.max()), 1)
    p_idx = torch.sort((~fp).to(torch.int8), dim=-1, stable=True).indices[:, :n_p]  # [b, P]
    p_valid = torch.arange(n_p, device=dev)[None, :] < counts[:, None]
    # columns reduced with one matmul: prompt mass, other mass, [first & prompt, first & other]
    cols = [fp, ~fp]
    if first_flags is not None:
        ff = first_flags.to(torch.bool)
        cols += [ff & fp, ff & ~fp]
    red = torch.stack(cols, dim=-1).to(torch.float32)  # [b, kv, ncols]
    kt = key.transpose(-1, -2)  # [b, hk, d, kv]
    float_mask = attention_mask is not None and attention_mask.dtype != torch.bool
    step = max(1, chunk_elements // max(1, b * h * kv_len))
    out = torch.empty(b, h, q_len, 5, dtype=torch.float32, device=dev)
    for c0 in range(0, q_len, step):
        c1 = min(q_len, c0 + step)
        nc = c1 - c0
        # visibility of this chunk only (nothing of size q x kv is built for the whole call)
        if attention_mask is None:
            kv_end = kv_len if q_len == 1 else min(kv_len, c1)
            vis: torch.Tensor
            if q_len == 1:
                vis = torch.ones(1, 1, 1, kv_end, dtype=torch.bool, device=dev)
            else:  # upper-left causal, as SDPA's is_causal
                key_pos = torch.arange(kv_end, device=dev)[None, :]
                vis = (key_pos <= torch.arange(c0, c1, device=dev)[:, None])[None, None]
        else:
            vis = visible_mask(attention_mask[:, :, c0:c1], nc, kv_len, dev)
            seen = vis.any(dim=2).any(dim=0).reshape(-1)  # keys no query of the chunk sees are skipped
            kv_end = int(seen.nonzero().max()) + 1 if bool(seen.any()) else 1
            vis = vis[..., :kv_end]
        n_o = (vis & ~fp[:, None, None, :kv_end]).sum(-1).float()  # [b, 1, C]
        qc = query[:, :, c0:c1].reshape(b, hk, n_rep * nc, d) * scale
        s = torch.matmul(qc, kt[..., :kv_end]).float().view(b, hk, n_rep, nc, kv_end)
        if float_mask:
            assert attention_mask is not None  # float_mask implies a mask
            m = attention_mask[:, :, c0:c1, :kv_end]
            s.add_(torch.where(vis, m, torch.zeros_like(m)).unsqueeze(1).float())
        s.masked_fill_(~vis.unsqueeze(1), ninf)
        s_p = s.gather(-1, p_idx.clamp(max=kv_end - 1)[:, None, None, None, :].expand(b, hk, n_rep, nc, n_p))
        pv = p_valid & (p_idx < kv_end)
        log_sp = torch.logsumexp(s_p.masked_fill_(~pv[:, None, None, None, :], ninf), dim=-1)
        mx = s.amax(dim=-1, keepdim=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        e = s.sub_(mx).exp_()  # in place: unnormalised probabilities, 0 where masked
        z = e.sum(-1)  # [b, hk, n_rep, C]
        lse = mx.squeeze(-1) + torch.log(z)
        zs = torch.where(z > 0, z, torch.ones_like(z))
        sums = torch.bmm(e.view(b, -1, kv_end), red[:, :kv_end]).view(b, hk, n_rep, nc, -1) / zs[..., None]
        share, other = sums[..., 0], sums[..., 1]
        if first_flags is not None:
            first_p, first_o = sums[..., 2], sums[..., 3]
        else:  # the first visible key of each query row
            fi = vis.expand(b, 1, nc, kv_end).to(torch.uint8).argmax(-1)  # [b, 1, C]
            pf = e.gather(-1, fi[:, :, None, :, None].expand(b, hk, n_rep, nc, 1)).squeeze(-1) / zs
            is_p = fp.gather(-1, fi[:, 0])[:, None, None, :]  # [b, 1, 1, C]
            first_p, first_o = pf * is_p, pf * ~is_p
        log_so = lse + torch.log(other)
        if reweight is not None and not reweight.is_identity():
            pik, r = reweight.factors(share, other)
            if reweight.heads is not None:  # other heads keep their shares
                sel = head_selection(reweight.heads, h, dev).view(1, hk, n_rep, 1)
                pik, r = torch.where(sel, pik, share), torch.where(sel, r, 1.0)
            up = torch.where(share > 0, pik / share.clamp_min(torch.finfo(share.dtype).tiny), torch.zeros_like(share))
            first = first_p * up + first_o * r
            share = torch.where(share > 0, pik, torch.zeros_like(share))
        else:
            first = first_p + first_o
        n_oc = n_o[:, :, None, :].expand_as(share)
        stats = torch.stack([share, first, log_sp, log_so, n_oc], dim=-1)  # [b, hk, n_rep, C, 5]
        out[:, :, c0:c1] = stats.reshape(b, h, nc, 5)
        del s, e, s_p  # free this chunk's buffer before the next one is allocated
    return out


class PromptShareRecorder:
    """Collects :func:`attention_stats` of every attention call, per layer, along the query axis.

    Put it in :func:`~personadrift.attention.context.attention_context` (``recorder=``). Several
    calls (e.g. KV-cached decoding) append along the query axis; ``reset()`` empties it.
    """

    fields = FIELDS

    def __init__(self, *, chunk_elements: int = 1 << 21, device: torch.device | str | None = "cpu"):
        self.chunk_elements = int(chunk_elements)
        self.device = device
        self._layers: dict[int, list[torch.Tensor]] = {}

    def add(self, layer_idx: int | None, stats: torch.Tensor) -> None:
        key = len(self._layers) if layer_idx is None else int(layer_idx)
        if self.device is not None:
            stats = stats.to(self.device)
        self._layers.setdefault(key, []).append(stats.detach())

    def reset(self) -> None:
        self._layers.clear()

    @property
    def layer_indices(self) -> list[int]:
        return sorted(self._layers)

    def result(self) -> torch.Tensor:
        """float32 [layers, batch, heads, queries, 5] in the order of ``FIELDS``."""
        if not self._layers:
            raise RuntimeError("the recorder has recorded nothing (was the model's attention 'prompt_share'?)")
        per_layer = [torch.cat(self._layers[i], dim=2) for i in self.layer_indices]
        return torch.stack(per_layer, dim=0)

    def nbytes(self) -> int:
        """Bytes held by the recorder (what is kept, across all layers)."""
        return sum(t.numel() * t.element_size() for ts in self._layers.values() for t in ts)


@dataclass
class Recording:
    """What :func:`record_prompt_share` returns."""

    stats: torch.Tensor  # float32 [layers, batch, heads, queries, 5], FIELDS order
    logits: torch.Tensor  # [batch, 1, vocab], the last position's logits
    layers: list[int]

    def field(self, name: str) -> torch.Tensor:
        return self.stats[..., FIELDS.index(name)]

    @property
    def prompt_share(self) -> torch.Tensor:
        return self.stats[..., 0]

    @property
    def first_share(self) -> torch.Tensor:
        return self.stats[..., 1]

    @property
    def log_S_prompt(self) -> torch.Tensor:
        return self.stats[..., 2]

    @property
    def log_S_other(self) -> torch.Tensor:
        return self.stats[..., 3]

    @property
    def n_other(self) -> torch.Tensor:
        return self.stats[..., 4]


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """cumsum(mask) - 1, clipped at 0: positions that skip left padding and holes."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def record_prompt_share(
    model: Any,  # a transformers PreTrainedModel
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prompt_mask: torch.Tensor,
    first_mask: torch.Tensor | None = None,
    *,
    reweight: PromptAttentionHook | None = None,
    position_ids: torch.Tensor | None = None,
    chunk_elements: int = 1 << 21,
) -> Recording:
    """One teacher-forced forward (``logits_to_keep=1``) with the ``"prompt_share"`` attention.

    The model's attention implementation is switched for the call and restored afterwards;
    ``reweight`` (a prompt-attention hook, e.g. split-softmax's) applies in its layers.
    ``position_ids`` default to :func:`default_position_ids` of the attention mask.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)
    recorder = PromptShareRecorder(chunk_elements=chunk_elements)
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        with attention_context(prompt_mask, first_mask=first_mask, reweight=reweight, recorder=recorder):
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=1,
            )
    finally:
        model.set_attn_implementation(previous)
    return Recording(stats=recorder.result(), logits=out.logits, layers=recorder.layer_indices)


_register(NAME)
