"""Split-softmax attention, registered as the ``"split_softmax"`` attention implementation.

Per head and query row, with pi the attention mass on system-prompt keys, split-softmax rescales
the prompt keys by pi^k / pi and all other keys by (1 - pi^k) / (1 - pi), k in (0, 1]; the
prompt's share becomes pi^k, rows still sum to 1, and k = 1 is the identity.

Implementation (no full attention matrix, no eager attention for the whole run). With O_p the
softmax-attention output restricted to prompt keys and O_all the ordinary output over all
visible keys, the split-softmax output is

    out = pi^k * O_p + r * (O_all - pi * O_p),     r = (1 - pi^k) / (1 - pi)  in [k, 1].

* O_p is computed explicitly on the prompt keys only (the span is short: P << kv_len), with a
  log-sum-exp so that it is an exactly normalised softmax over the visible prompt keys.
* O_all, pi and 1 - pi come from ONE fused SDPA call (q, k and v zero-padded to one width, a
  multiple of 8: :func:`fused_width`) over all keys whose values carry two extra channels,
  1[key is prompt] and 1[key is not prompt]: the extra outputs are exactly the row's attention
  mass on prompt and on other keys, each accurate to float rounding relative to its own size
  (so 1 - pi is not obtained by cancellation when pi -> 1).
* Why this is exact: softmax over all keys = pi * softmax(prompt) (+) (1 - pi) * softmax(other),
  so O_all = pi O_p + (1 - pi) O_o, and the intervened row is pi^k O_p + (1 - pi^k) O_o
  = pi^k O_p + r (O_all - pi O_p). Why stable: r is computed as -expm1(k log pi) / (1 - pi)
  from the two channels, is bounded in [k, 1] (clamped), and multiplies a quantity of size
  (1 - pi)|O_o|, so nothing is divided by a small number. pi = 0 (no visible prompt key, e.g. a
  sliding window) gives r = 1 and out = O_all exactly: such rows are untouched. pi = 1 (only prompt
  keys visible) gives out = O_p = O_all.

Decoding (one query per row, the hot path of generation) uses :func:`split_softmax_decode`, which
forms the single score row explicitly (O(kv_len) memory) with far fewer kernel launches.

GQA is handled without copying keys: the prompt part groups the queries per KV head, the single
decoding query is packed per KV head, and the fused calls (split-softmax's and the ordinary
attention of layers it leaves alone) pass grouped keys to SDPA as they are (``enable_gqa``) where
torch runs them so on a fused kernel, else ``repeat_kv`` (:func:`takes_grouped_keys`).
``softcap`` is not supported (raises); ``dropout > 0`` in an intervened layer falls back to the
eager reference (training only; models pass 0.0 in eval).

The mask registered for this name is transformers' ``sdpa_mask``: a boolean [b, 1, q, kv] mask,
or None when SDPA's own causal handling suffices (then: upper-left causal for q > 1, nothing
masked for q == 1, exactly what ``sdpa_attention_forward`` does). Without a registered mask
function the model passes ``attention_mask=None`` and attention silently becomes non-causal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from personadrift.attention.context import AttentionState, current_state

if TYPE_CHECKING:  # pragma: no cover  (attention applies the hooks generation defines)
    from personadrift.generation.hooks import PromptAttentionHook

__all__ = ["split_softmax_attention", "split_softmax_core", "split_softmax_decode", "visible_mask", "split_factors",
           "fused_width", "grouped_sdpa", "takes_grouped_keys", "plain_attention", "NAME"]

NAME = "split_softmax"


def visible_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """Boolean visibility [b or 1, 1, q_len, kv_len] of keys for queries, as SDPA would apply it."""
    if attention_mask is None:
        if q_len == 1:
            return torch.ones(1, 1, 1, kv_len, dtype=torch.bool, device=device)
        # upper-left aligned causal mask, like SDPA's is_causal (keys past q_len are cache padding)
        qi = torch.arange(q_len, device=device)[:, None]
        ki = torch.arange(kv_len, device=device)[None, :]
        return (ki <= qi)[None, None]
    m = attention_mask[..., :kv_len]
    if m.dtype == torch.bool:
        return m
    # additive float mask: 0 where visible, the dtype's minimum where not
    return m > torch.finfo(m.dtype).min / 2


def split_factors(pi: torch.Tensor, po: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pi^k, r) with r = (1 - pi^k) / (1 - pi) in [k, 1], computed stably from pi and po = 1 - pi.

    Both inputs are clamped to [0, 1]. log pi is taken as log1p(-po) when pi > 1/2 (accurate near
    pi = 1) and log(pi) otherwise; pi = 0 gives (0, 1), po = 0 gives (1, k).
    """
    pi = pi.clamp(0.0, 1.0)
    po = po.clamp(0.0, 1.0)
    log_pi = torch.where(pi > 0.5, torch.log1p(-po.clamp(max=0.5)), torch.log(pi.clamp(max=0.5)))
    pik = torch.exp(k * log_pi)
    r = torch.where(po > 0, -torch.expm1(k * log_pi) / po.clamp_min(torch.finfo(po.dtype).tiny), torch.full_like(po, k))
    return pik, r.clamp(k, 1.0)


def split_decode_factors(pi: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, r) with a = pi^k / pi = pi^(k-1) and r = (1 - pi^k) / (1 - pi), for one query per row
    (:func:`prompt_reweight_decode`). pi is a float in [0, 1], so 1 - pi is exact for pi >= 1/2
    (Sterbenz) and log(pi) is accurate; r = -expm1(k log pi) / (1 - pi) is clamped to its range
    [k, 1] (pi = 1 gives 0 / 0 -> k via the clamp of a tiny denominator; pi = 0 gives r = 1); a is
    clamped to 1e30, which only matters when pi < 1e-30, where u = pi O_p = 0 or tiny, so a * u
    stays <= pi^k |V|."""
    log_pi = torch.log(pi)
    a = torch.exp((k - 1.0) * log_pi).clamp_max(1e30)
    r = (torch.expm1(k * log_pi).neg_() / (1.0 - pi).clamp_min(1e-30)).clamp_(k, 1.0)
    return a, r


def head_selection(heads, n_heads: int, device: torch.device) -> torch.Tensor:
    """bool [n_heads]: True at the query heads a hook acts on."""
    sel = torch.zeros(n_heads, dtype=torch.bool, device=device)
    sel[[h for h in heads if h < n_heads]] = True
    return sel


def fused_width(d: int, dv: int) -> int:
    """Head width of split-softmax's fused SDPA call: the values and their two indicator
    channels (dv + 2) and the queries/keys (d) padded to one width, a multiple of 8."""
    e = max(d, dv + 2)
    return -(-e // 8) * 8


def takes_grouped_keys(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                       is_causal: bool, scale: float | None = None) -> bool:
    """Whether torch's SDPA runs this call with grouped keys as they are (``enable_gqa=True``) on
    a fused kernel. Asks torch's own kernel choice under the SDPA backends enabled now: the CPU's
    flash kernel takes grouped keys with or without a mask; on CUDA flash takes them but no mask,
    cuDNN takes both where it applies, and the memory-efficient kernel never takes them, so a
    masked call there would fall back to the math kernel (which repeats the keys itself and
    materialises every score): such calls repeat the keys and stay on a fused kernel."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is not None:
        try:
            from torch.nn.attention import SDPBackend

            picked = choose(query, key, value, mask, 0.0, is_causal, scale=scale, enable_gqa=True)
            return picked not in (SDPBackend.MATH.value, SDPBackend.ERROR.value)
        except (RuntimeError, TypeError, ImportError):
            pass
    return mask is None  # transformers' rule: flash takes grouped keys when nothing is masked


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, *,
                 scale: float | None, is_causal: bool) -> torch.Tensor:
    """SDPA of query [b, h, q, d] over keys/values with h / hk grouped heads: the keys as they
    are where a fused kernel takes them so (:func:`takes_grouped_keys`), else repeated."""
    n_rep = query.shape[1] // key.shape[1]
    if n_rep == 1:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, is_causal=is_causal)
    if takes_grouped_keys(query, key, value, mask, is_causal, scale):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, is_causal=is_causal,
                                              enable_gqa=True)
    return F.scaled_dot_product_attention(query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), attn_mask=mask,
                                          scale=scale, is_causal=is_causal)


def _gather_prompt_visibility(vis: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """vis [b|1, 1, q, kv] gathered at prompt slots idx [b, P] -> [b, 1, q, P] (& valid)."""
    b, p = idx.shape
    q = vis.shape[2]
    vis = vis.expand(b, 1, q, vis.shape[-1])
    out = vis.gather(-1, idx[:, None, None, :].expand(b, 1, q, p))
    return out & valid[:, None, None, :]


def split_softmax_core(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    prompt_flags: torch.Tensor,
    prompt_idx: torch.Tensor,
    prompt_valid: torch.Tensor,
    scale: float,
    reweight: PromptAttentionHook,
) -> torch.Tensor:
    """Split-softmax attention output [b, heads, q, dv] (see the module docstring for the math),
    or that of any other ``reweight`` hook.

    query [b, h, q, d]; key/value [b, hk, kv, d|dv] (not repeated); attention_mask as the model
    passes it (bool/float [b|1, 1, q, kv] or None); prompt_flags bool [b, kv]; prompt_idx/valid
    [b, P] the prompt slots per row (padded, ``valid`` marks real entries).
    """
    b, h, q_len, d = query.shape
    hk, kv_len, dv = key.shape[1], key.shape[2], value.shape[-1]
    n_rep = h // hk
    p = prompt_idx.shape[1]
    dev = query.device

    # -- prompt-only part: exact softmax over the (few) prompt keys, queries grouped per KV head
    gi = prompt_idx[:, None, :, None]
    k_p = key.gather(2, gi.expand(b, hk, p, d))
    v_p = value.gather(2, gi.expand(b, hk, p, dv))
    qg = query.reshape(b, hk, n_rep, q_len, d)
    # float32 scores whatever the model's dtype (SDPA's own kernels keep scores in float32)
    s_p = torch.matmul(qg.float(), k_p[:, :, None].transpose(-1, -2).float()) * scale  # [b, hk, n_rep, q, P]
    vis = visible_mask(attention_mask, q_len, kv_len, dev)
    vis_p = _gather_prompt_visibility(vis, prompt_idx, prompt_valid)[:, :, None]  # [b, 1, 1, q, P]
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        bias = attention_mask[..., :kv_len].expand(b, 1, q_len, kv_len).gather(
            -1, prompt_idx[:, None, None, :].expand(b, 1, q_len, p)
        )
        s_p = s_p + bias[:, :, None].float()
    s_p = s_p.masked_fill(~vis_p, float("-inf"))
    lse_p = torch.logsumexp(s_p, dim=-1, keepdim=True)
    lse_p = torch.where(torch.isfinite(lse_p), lse_p, torch.zeros_like(lse_p))
    w_p = torch.exp(s_p - lse_p)  # rows without a visible prompt key: all zeros
    o_p = torch.matmul(w_p.to(value.dtype), v_p[:, :, None]).reshape(b, h, q_len, dv)

    # -- one fused SDPA over all keys, values carrying 1[prompt] and 1[other]. Queries, keys and
    # values are zero-padded to one width, a multiple of 8 (136 for d = 128): the fused CPU/CUDA
    # kernels need equal head dims, and CUDA's flash and memory-efficient kernels a multiple of 8;
    # otherwise SDPA falls back to its math kernel, which materialises every score. Zero channels
    # add nothing to a score (the scale is passed explicitly) and their outputs are dropped.
    ind = prompt_flags.to(value.dtype)[:, None, :, None].expand(b, hk, kv_len, 1)
    e = fused_width(d, dv)
    pad = [value.new_zeros(b, hk, kv_len, e - dv - 2)] if e > dv + 2 else []
    v_aug = torch.cat([value, ind, 1.0 - ind, *pad], -1)
    q_aug = torch.cat([query, query.new_zeros(b, h, q_len, e - d)], -1) if e > d else query
    k_aug = torch.cat([key, key.new_zeros(b, hk, kv_len, e - d)], -1) if e > d else key
    mask = attention_mask[..., :kv_len] if attention_mask is not None else None
    is_causal = mask is None and q_len > 1
    if is_causal and kv_len > q_len:  # same as sdpa_attention_forward: keys past q_len are padding
        k_aug, v_aug = k_aug[:, :, :q_len], v_aug[:, :, :q_len]
    if n_rep > 1 and q_len == 1:  # one query per row: its heads are a KV head's query rows
        o_aug = F.scaled_dot_product_attention(
            q_aug.reshape(b, hk, n_rep, e), k_aug, v_aug, attn_mask=mask, scale=scale, is_causal=False
        ).reshape(b, h, 1, e)
    else:
        o_aug = grouped_sdpa(q_aug, k_aug, v_aug, mask, scale=scale, is_causal=is_causal)
    o_all, pi, po = o_aug[..., :dv], o_aug[..., dv : dv + 1], o_aug[..., dv + 1 : dv + 2]
    pik, r = reweight.factors(pi.float(), po.float())
    if reweight.heads is not None:  # other heads: share pi, r = 1, out = O_all
        sel = head_selection(reweight.heads, h, dev).view(1, h, 1, 1)
        pik, r = torch.where(sel, pik, pi.float().clamp(0, 1)), torch.where(sel, r, 1.0)
    out = pik * o_p + r * (o_all - pi.clamp(0, 1) * o_p)
    return out.to(query.dtype)


def split_softmax_decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scale: float,
    span: tuple[int, int] | None,
    prompt_idx: torch.Tensor | None = None,
    prompt_valid: torch.Tensor | None = None,
    reweight: PromptAttentionHook,
) -> torch.Tensor:
    """Split-softmax (or any ``reweight`` hook's reweighting) for ONE query per row (KV-cached
    decoding): output [b, heads, 1, dv].

    A single query row is only O(kv_len) (the same memory as SDPA's own math kernel), so the row
    is formed explicitly, which needs far fewer kernel launches than the prefill decomposition:
    p = softmax(row), pi = sum of p over prompt keys, and with u = p_prompt @ V_prompt
    (= pi * O_p) and O_all = p @ V,

        out = r * O_all + (a - r) * u,   a = pi^(k-1) = pi^k / pi,   r = (1 - pi^k) / (1 - pi)

    (a hook gives its own a = share(pi) / pi and r: ``decode_factors``; split-softmax's, and why
    they are stable: :func:`split_decode_factors`).
    """
    b, h, _, d = query.shape
    hk, kv_len, dv = key.shape[1], key.shape[2], value.shape[-1]
    n_rep = h // hk
    # scores in float32 whatever the model's dtype, as SDPA's kernels form them: a bfloat16 score
    # of 16-32 is rounded to steps of 0.125, which moves the row's probabilities by up to 6%
   # [b, hk, n_rep, kv]
    s = torch.matmul(query.reshape(b, hk, n_rep, d).float() * scale, key.float().transpose(-1, -2))
    if attention_mask is not None:
        m = attention_mask[..., :kv_len]  # [b|1, 1, 1, kv] broadcasts over (hk, n_rep)
        if m.dtype == torch.bool:
            s = s.masked_fill(~m, float("-inf"))
        else:
            s = s + m
    p = torch.softmax(s, dim=-1, dtype=torch.float32)
    if attention_mask is not None:
        p = p.nan_to_num(0.0)  # a fully masked row gives zeros, as in SDPA
    if span is not None:
        p_p, v_p = p[..., span[0] : span[1]], value[:, :, span[0] : span[1]]
    else:
        assert prompt_idx is not None and prompt_valid is not None  # given whenever span is None
        pp = prompt_idx.shape[1]
        p_p = p.gather(-1, prompt_idx[:, None, None, :].expand(b, hk, n_rep, pp))
        p_p = p_p * prompt_valid[:, None, None, :]
        v_p = value.gather(2, prompt_idx[:, None, :, None].expand(b, hk, pp, dv))
    pi = p_p.sum(-1, keepdim=True).clamp(0.0, 1.0)
    a, r = reweight.decode_factors(pi)
    if reweight.heads is not None:  # other heads: a = r = 1, out = O_all
        sel = head_selection(reweight.heads, h, pi.device).view(1, hk, n_rep, 1)
        a, r = torch.where(sel, a, 1.0), torch.where(sel, r, 1.0)
    vd = value.dtype
    o_all = torch.matmul(p.to(vd), value)  # [b, hk, n_rep, dv]
    u = torch.matmul(p_p.to(vd), v_p)
    out = r * o_all + (a - r) * u
    return out.to(query.dtype).reshape(b, h, 1, dv)


def _prompt_args(state: AttentionState, kv_len: int, offset: int, device: torch.device) -> dict:
    flags, _ = state.key_flags(kv_len, offset, device)
    idx, valid = state.prompt_index(kv_len, offset, device)
    return {"prompt_flags": flags, "prompt_idx": idx, "prompt_valid": valid}


def plain_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """Ordinary attention: transformers' SDPA forward, except a masked multi-query call over grouped
    keys (a left-padded prefill, a re-used prefix), which transformers always repeats; here the keys
    go as they are where a fused kernel takes them (:func:`takes_grouped_keys`)."""
    n_rep = query.shape[1] // key.shape[1]
    if (n_rep > 1 and query.shape[2] > 1 and attention_mask is not None and dropout == 0.0
            and kwargs.get("position_bias") is None and kwargs.get("cache") is None
            and takes_grouped_keys(query, key, value, attention_mask, False, scaling)):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             is_causal=False, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def split_softmax_attention(
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
) -> tuple[torch.Tensor, None]:
    """AttentionInterface function: plain SDPA outside an ``attention_context``; split-softmax in
    the context's layers when ``split_k`` is set; fills the context's recorder if one is set.

    Returns (attn_output [b, q, heads, head_dim], None).
    """
    if softcap is not None:
        raise NotImplementedError("split_softmax attention does not support softcap")
    state = current_state()
    if state is None:
        return plain_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )
    layer_idx = getattr(module, "layer_idx", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    offset = state.slot_offset(layer_idx, q_len, kv_len, sliding_window is not None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    active = state.intervenes(layer_idx)

    if state.recorder is not None:
        from personadrift.attention.recorder import attention_stats

        flags, first = state.key_flags(kv_len, offset, query.device)
        stats = attention_stats(
            query, key, attention_mask, prompt_flags=flags, first_flags=first, scale=scale,
            reweight=state.reweight if active else None, chunk_elements=state.recorder.chunk_elements,
        )
        state.recorder.add(layer_idx, stats)

    if not active:
        return plain_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )
    hook = state.reweight
    assert hook is not None  # intervenes() holds only with a hook
    if dropout > 0.0:
        from personadrift.attention.reference import split_softmax_reference

        out, _ = split_softmax_reference(
            query, key, value, attention_mask, prompt_flags=state.key_flags(kv_len, offset, query.device)[0],
            reweight=hook, scale=scale, dropout=dropout, training=module.training,
        )
        return out.transpose(1, 2).contiguous(), None
    if q_len == 1:
        span = state.prompt_span() if offset == 0 else None
        if span is not None and span[1] <= kv_len:
            out = split_softmax_decode(query, key, value, attention_mask, reweight=hook, scale=scale, span=span)
        else:
            idx, valid = state.prompt_index(kv_len, offset, query.device)
            out = split_softmax_decode(
                query, key, value, attention_mask, reweight=hook, scale=scale, span=None,
                prompt_idx=idx, prompt_valid=valid,
            )
    else:
        out = split_softmax_core(
            query, key, value, attention_mask, reweight=hook, scale=scale,
            **_prompt_args(state, kv_len, offset, query.device),
        )
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> None:
    """Register the function and its mask (transformers' ``sdpa_mask``) under ``name``."""
    AttentionInterface.register(name, split_softmax_attention)
    AttentionMaskInterface.register(name, sdpa_mask)  # REQUIRED, else attention_mask is None


register()
