"""Batch-invariant attention, registered as the ``"batch_invariant"`` attention implementation
(decode steps blocked) and ``"batch_invariant_rows"`` (every row on its own: ``model.blocked_decode:
false``).

A row's attention must not depend on what shares its batch. Over a left-padded batch (or one
with masked holes between a re-used prefix and the new tokens) a fused kernel reduces over the
batch's key length and splits its work by the batch's query length, so the summation order of a
row's softmax and of its weighted sum of values changes with its mates, and its output with it
in the last bits.

Here every row is computed on its own: its real keys (the slots its mask shows) and its real
queries are cut out of the batch, so each call's shapes and contents are the row's alone, exactly
those it has when it runs alone, and the wrapped function (:func:`split_softmax_attention`: plain
SDPA outside an ``attention_context``, split-softmax inside one) computes the row as it would
alone. Padding queries get zeros (nothing reads them). The row's own causal mask is
bottom-right aligned: its queries are its last real slots.

A row with one real query outside an ``attention_context`` (every row of a plain decode step)
runs :mod:`personadrift.attention.blocked_decode` instead: a decode step's rows all in one
blocked call whose reductions are fixed by each row alone, and a row with one query in a prefill
the same computation on its own, so a row's path never depends on its mates.

What stays batch-dependent: a prompt-share recorder (``attention_context(recorder=...)``) sees
the whole batch, so calls with one run the wrapped function on the batch as it is.
What is not promised: the same row built in another number of forwards (its KV cache made turn
by turn versus re-encoded in one prefill, as after a resume) runs other query counts, so other
kernel splits; tests/test_batch_invariance.py measures that case.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from personadrift.attention.blocked_decode import blocked_decode_attention, compact_of, packed_row
from personadrift.attention.blocked_decode import take_row as _take
from personadrift.attention.context import _STATE, current_state
from personadrift.attention.split_softmax import split_softmax_attention

__all__ = ["NAME", "NAMES", "ROWS_NAME", "batch_invariant_attention", "row_by_row_attention", "row_slots"]

NAME = "batch_invariant"  # decode steps in one blocked call
ROWS_NAME = "batch_invariant_rows"  # every row on its own: no packed keys beside the cache
NAMES = (NAME, ROWS_NAME)


def row_slots(attention_mask: torch.Tensor | None, b: int, q_len: int,
              kv_len: int) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Per row, (key slots, query columns) that are real, as long index tensors; None means all
    of them (no mask: nothing is padded)."""
    if attention_mask is None:
        return [(None, None)] * b
    vis = attention_mask[..., :kv_len]
    if vis.dtype != torch.bool:
        vis = vis > torch.finfo(vis.dtype).min / 2
    vis = vis.expand(b, 1, q_len, kv_len)[:, 0]
    keys = vis.any(1)  # a padding slot is masked for every query; a real one is seen by the last real query
    diag = torch.arange(q_len, device=vis.device)
    queries = vis[:, diag, kv_len - q_len + diag]  # a query is real iff it sees its own slot
    out = []
    for i in range(b):
        out.append((_index(keys[i]), _index(queries[i])))
    return out


def _index(flags: torch.Tensor) -> torch.Tensor | None:
    if bool(flags.all()):
        return None
    return flags.nonzero().flatten()


_CAUSAL: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _bottom_right_causal(q: int, kv: int, device: torch.device) -> torch.Tensor | None:
    """The row's mask: query j (its slot kv - q + j) sees keys 0 .. kv - q + j; None when SDPA's
    own handling is that mask (q == kv: is_causal; q == 1: every key)."""
    if q == kv or q == 1:
        return None
    key = (q, kv, device)
    m = _CAUSAL.get(key)
    if m is None:
        if len(_CAUSAL) > 256:
            _CAUSAL.clear()
        m = (torch.arange(kv, device=device)[None, :] <= torch.arange(kv - q, kv, device=device)[:, None])[None, None]
        _CAUSAL[key] = m
    return m


def _row_state(state, i: int, key_idx: torch.Tensor | None, kv_len: int):
    """The attention context restricted to row ``i``'s real key slots (cached per forward)."""
    ck = ("invariant_row", i, kv_len, None if key_idx is None else key_idx.numel())
    hit = state._index_cache.get(ck)
    if hit is not None:
        return hit
    device = state.prompt_mask.device
    slots = torch.arange(kv_len, device=device) if key_idx is None else key_idx.to(device)

    def cut(mask):
        if mask is None:
            return None
        row = mask[i]
        inside = slots < row.shape[0]  # slots past the mask are never prompt, never first
        picked = torch.zeros(slots.shape[0], dtype=torch.bool, device=row.device)
        picked[inside] = row[slots[inside]]
        return picked[None]

    sub = dataclasses.replace(state, prompt_mask=cut(state.prompt_mask), first_mask=cut(state.first_mask),
                              cache=None, _seen={}, _index_cache={})
    if sum(1 for k in state._index_cache if k[0] == "invariant_row") > 4096:
        state._index_cache = {k: v for k, v in state._index_cache.items() if k[0] != "invariant_row"}
    state._index_cache[ck] = sub
    return sub


def _row_attention(module, state, i, k_idx, kv_len, q_i, k_i, v_i, dropout, scaling, softcap, kwargs):
    """One row's attention on its own keys: :func:`split_softmax_attention` under the row's cut
    of the attention context."""
    mask = _bottom_right_causal(q_i.shape[2], k_i.shape[2], q_i.device)
    token = None
    if state is not None:
        token = _STATE.set(_row_state(state, i, k_idx, kv_len))
    try:
        o_i, _ = split_softmax_attention(module, q_i, k_i, v_i, mask, dropout=dropout, scaling=scaling,
                                         softcap=softcap, **kwargs)
    finally:
        if token is not None:
            _STATE.reset(token)
    return o_i


_PLAN: list = [None, None, None]  # (mask object, its row slots, decode facts): every layer of a forward shares one mask


def _decode_facts(plan, kv_len: int) -> tuple[list, bool, list[int]]:
    """For a forward of one query per row: each row's key slots, whether the newest slot is real
    in every row (a decode step: the packed keys grow by it), and the rows whose query is padding."""
    key_slots = [k for k, _ in plan]
    last_real = all(k is None or (k.numel() and int(k[-1]) == kv_len - 1) for k in key_slots)
    padding = [i for i, (_, q) in enumerate(plan) if q is not None and q.numel() == 0]
    return key_slots, last_real, padding


def batch_invariant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """AttentionInterface function: :func:`split_softmax_attention` row by row on each row's real
    keys and queries, the blocked decode attention for rows with one query outside an attention
    context. Returns (attn_output [b, q, heads, head_dim], None)."""
    return _invariant(module, query, key, value, attention_mask, blocked_decode=True, **kwargs)


def row_by_row_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """AttentionInterface function: every row on its own (decode steps too), as
    :func:`batch_invariant_attention` computes prefill rows; keeps no packed keys (half the KV
    memory of a blocked decode)."""
    return _invariant(module, query, key, value, attention_mask, blocked_decode=False, **kwargs)


def _invariant(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    *,
    blocked_decode: bool,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    state = current_state()
    if sliding_window is not None or (state is not None and state.recorder is not None):
        # a window counts slots, not real keys; a recorder holds the batch's shape
        return split_softmax_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       softcap=softcap, sliding_window=sliding_window, **kwargs)
    b, h, q_len, d = query.shape
    kv_len = key.shape[2]
    if _PLAN[0] is attention_mask and attention_mask is not None and len(_PLAN[1]) == b:
        plan = _PLAN[1]
    else:
        plan = row_slots(attention_mask, b, q_len, kv_len)
        _PLAN[0], _PLAN[1], _PLAN[2] = attention_mask, plan, None
    blocked = blocked_decode and state is None and softcap is None and dropout == 0.0
    if blocked and q_len == 1:  # a decode step: every row in one blocked call
        if _PLAN[2] is None:
            _PLAN[2] = _decode_facts(plan, kv_len)
        key_slots, last_real, padding = _PLAN[2]
        packed = compact_of(key, value, key_slots, last_real, getattr(module, "layer_idx", None))
        out = blocked_decode_attention(query, packed, scaling)
        if padding:
            out[padding] = 0.0
        return out, None
    out = query.new_zeros(b, q_len, h, value.shape[-1])
    for i, (k_idx, q_idx) in enumerate(plan):
        q_i = _take(query, i, q_idx)
        n = q_i.shape[2]
        if n == 0:
            continue
        k_i, v_i = _take(key, i, k_idx), _take(value, i, k_idx)
        if blocked and n == 1:  # one real query: the decode steps' computation, in any batch
            o_i = blocked_decode_attention(q_i, packed_row(k_i, v_i), scaling)
        else:
            o_i = _row_attention(module, state, i, k_idx, kv_len, q_i, k_i, v_i, dropout, scaling, softcap, kwargs)
        if q_idx is None:
            out[i] = o_i[0]
        else:
            out[i, q_idx] = o_i[0]
    return out, None


def _mask(*args, **kwargs):
    """transformers' boolean SDPA mask, always materialised: the rows' real slots are read from it."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(NAME, batch_invariant_attention)
AttentionInterface.register(ROWS_NAME, row_by_row_attention)
for _name in NAMES:
    AttentionMaskInterface.register(_name, _mask)
