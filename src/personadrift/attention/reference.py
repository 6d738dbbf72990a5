"""Eager reference for split-softmax: full softmax matrix in float64, then rescale. Tests only.

Registered as ``"split_softmax_eager"`` with transformers' ``eager_mask`` (an always materialised
additive float mask), so it shares no mask handling with the efficient implementation. It
returns the post-intervention attention weights, which ``output_attentions=True`` reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from personadrift.attention.context import current_state

if TYPE_CHECKING:  # pragma: no cover  (attention applies the hooks generation defines)
    from personadrift.generation.hooks import PromptAttentionHook

__all__ = ["split_softmax_reference", "split_softmax_eager_attention", "NAME"]

NAME = "split_softmax_eager"


def split_softmax_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    prompt_flags: torch.Tensor | None,
    k: float | None = None,
    scale: float,
    reweight: PromptAttentionHook | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [b, h, q, dv], weights [b, h, q, kv]) of split-softmax attention, computed eagerly.

    attention_mask: additive float or bool [b|1, 1, q, kv], or None (= upper-left causal for
    q > 1, as SDPA). prompt_flags: bool [b, kv]. k None or 1: plain softmax attention. Any other
    prompt-attention hook (``reweight``) rescales the weights by its own factors (in float64).
    """
    n_rep = query.shape[1] // key.shape[1]
    q_len, kv_len = query.shape[2], key.shape[2]
    k_ = repeat_kv(key, n_rep).double()
    v_ = repeat_kv(value, n_rep).double()
    s = torch.matmul(query.double(), k_.transpose(2, 3)) * scale
    if attention_mask is None:
        if q_len > 1:
            causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=s.device).tril()
            s = s.masked_fill(~causal, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        s = s.masked_fill(~attention_mask[..., :kv_len], float("-inf"))
    else:
        m = attention_mask[..., :kv_len]
        s = s.masked_fill(m <= torch.finfo(m.dtype).min / 2, float("-inf")) + torch.where(
            m <= torch.finfo(m.dtype).min / 2, torch.zeros_like(m), m
        ).double()
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully masked rows (padding queries) -> zeros, like SDPA
    if k is not None and k != 1.0 and prompt_flags is not None:
        fl = prompt_flags[:, None, None, :kv_len].to(torch.bool)
        pi = (p * fl).sum(-1, keepdim=True).clamp(0.0, 1.0)
        po = (p * ~fl).sum(-1, keepdim=True).clamp(0.0, 1.0)
        pik = pi**k
        up = torch.where(pi > 0, pik / pi.clamp_min(1e-300), torch.zeros_like(pi))
        down = torch.where(po > 0, (1 - pik) / po.clamp_min(1e-300), torch.full_like(po, k))
        p = torch.where(fl, p * up, p * down)
    elif reweight is not None and not reweight.is_identity() and prompt_flags is not None:
        fl = prompt_flags[:, None, None, :kv_len].to(torch.bool)
        pi = (p * fl).sum(-1, keepdim=True).clamp(0.0, 1.0)
        po = (p * ~fl).sum(-1, keepdim=True).clamp(0.0, 1.0)
        share, down = reweight.factors(pi, po)
        up = torch.where(pi > 0, share / pi.clamp_min(1e-300), torch.zeros_like(pi))
        if reweight.heads is not None:
            sel = torch.zeros(p.shape[1], dtype=torch.bool, device=p.device)
            sel[[h for h in reweight.heads if h < p.shape[1]]] = True
            up, down = torch.where(sel[:, None, None], up, 1.0), torch.where(sel[:, None, None], down, 1.0)
        p = torch.where(fl, p * up, p * down)
    if dropout > 0.0:
        p = torch.nn.functional.dropout(p, p=dropout, training=training)
    out = torch.matmul(p, v_)
    return out.to(query.dtype), p.to(query.dtype)


def split_softmax_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AttentionInterface function (eager, returns weights): reference for ``"split_softmax"``."""
    if softcap is not None:
        raise NotImplementedError("split_softmax_eager attention does not support softcap")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    state = current_state()
    flags, hook = None, None
    if state is not None:
        layer_idx = getattr(module, "layer_idx", None)
        offset = state.slot_offset(layer_idx, query.shape[2], key.shape[2], sliding_window is not None)
        if state.intervenes(layer_idx):
            flags, hook = state.key_flags(key.shape[2], offset, query.device)[0], state.reweight
    out, w = split_softmax_reference(
        query, key, value, attention_mask, prompt_flags=flags, reweight=hook, scale=scale,
        dropout=dropout, training=module.training,
    )
    return out.transpose(1, 2).contiguous(), w


def register() -> None:
    AttentionInterface.register(NAME, split_softmax_eager_attention)
    AttentionMaskInterface.register(NAME, eager_mask)


register()
