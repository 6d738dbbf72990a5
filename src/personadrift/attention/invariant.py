"""Batch-invariant attention, registered as the ``"batch_invariant"`` attention implementation.

A row's attention must not depend on what shares its batch. Over a left-padded batch (or one
with masked holes between a re-used prefix and the new tokens) a fused kernel reduces over the
batch's key length and splits its work by the batch's query length, so the summation order of a
row's softmax and of its weighted sum of values changes with its mates, and its output with it
in the last bits.

Plain attention (no ``attention_context``: the self-chat's ordinary forward) runs on the whole
batch at once (:func:`batched_invariant_attention`): each row's real keys (the slots its mask shows)
are gathered to the front of a key axis cut into blocks of BLOCK keys, and every reduction over keys
runs block by block in an order fixed by the row's own keys; the matmuls have fixed depths and at
least ROWS query rows, whatever the batch. Padding queries get zeros (nothing reads them).

Inside an ``attention_context`` (split-softmax) every row is computed on its own: its real keys and
queries are cut out of the batch, so each call's shapes and contents are the row's alone, exactly
those it has when it runs alone, and :func:`split_softmax_attention` computes the row as it would
alone. The row's own causal mask is bottom-right aligned: its queries are its last real slots.

The two paths sum in different orders: a row's attention is the same in any batch on either, not
the same on both (they agree to float32 rounding).

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

from personadrift.attention.context import _STATE, current_state
from personadrift.attention.split_softmax import split_softmax_attention, visible_mask

__all__ = ["NAME", "batch_invariant_attention", "batched_invariant_attention", "row_slots"]

NAME = "batch_invariant"


def row_slots(attention_mask: torch.Tensor | None, b: int, q_len: int, kv_len: int) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
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


def _take(t: torch.Tensor, i: int, idx: torch.Tensor | None) -> torch.Tensor:
    row = t[i : i + 1]
    if idx is None:
        return row
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) + 1 == n:  # one contiguous run: a view, no copy
        s = int(idx[0])
        return row[:, :, s : s + n]
    return row.index_select(2, idx)


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
    slots = torch.arange(kv_len, device=state.prompt_mask.device) if key_idx is None else key_idx.to(state.prompt_mask.device)

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


BLOCK = 64  # keys per block of the batched path's fixed reduction order
ROWS = 8  # the batched path's matmuls get a multiple of this many query rows (at least this many)
CHUNK_ELEMENTS = 1 << 24  # the batched path's score matrix at most this big: longer batches run in row chunks
_PLAN: list = [None, None]  # (mask object, its plan): every layer of a forward shares one mask


@dataclasses.dataclass
class _KeyPlan:
    """Where each row's real keys are, for the batched path (one per forward: every layer shares it).

    ``flat`` [b * kv_heads * L]: row i's real key slots in slot order, then slot 0 as filler, as
    indices into a [b * kv_heads * kv_len] view of the keys or values; ``visible`` [b, 1, M, L]:
    which of them each query row sees (rows ordered as ``[b, kv_heads, groups * q, L]``, filler
    keys and padding rows never); ``real_query`` [b, q]: queries that see their own slot (the others
    get zeros). L is the longest row's count rounded up to BLOCK, M the rows rounded up to ROWS."""

    flat: torch.Tensor
    visible: torch.Tensor
    real_query: torch.Tensor
    rows: int
    kv_heads: int
    kv_len: int


def _key_plan(attention_mask: torch.Tensor | None, b: int, q_len: int, kv_len: int, heads: int, kv_heads: int,
              device: torch.device) -> _KeyPlan:
    vis = visible_mask(attention_mask, q_len, kv_len, device).expand(b, 1, q_len, kv_len)[:, 0]
    keys = vis.any(1)  # a padding slot is masked for every query; a real one is seen by the last real query
    counts = keys.sum(1)
    length = max(BLOCK, -(-int(counts.max()) // BLOCK) * BLOCK)
    rows, slots = keys.nonzero(as_tuple=True)  # row-major, slots ascending
    rank = keys.cumsum(1)[rows, slots] - 1
    index = torch.zeros(b, length, dtype=torch.long, device=device)
    index[rows, rank] = slots
    filled = torch.arange(length, device=device)[None, :] < counts[:, None]
    visible = vis.gather(2, index[:, None, :].expand(b, q_len, length)) & filled[:, None, :]
    m = (heads // kv_heads) * q_len
    padded = max(ROWS, -(-m // ROWS) * ROWS)
    visible_rows = torch.zeros(b, 1, padded, length, dtype=torch.bool, device=device)
    visible_rows[:, 0, :m] = visible.repeat(1, heads // kv_heads, 1)
    diag = torch.arange(q_len, device=device)
    real_query = vis[:, diag, kv_len - q_len + diag]
    base = (torch.arange(b, device=device)[:, None] * kv_heads + torch.arange(kv_heads, device=device)[None, :]) * kv_len
    flat = (base[:, :, None] + index[:, None, :]).reshape(-1)
    return _KeyPlan(flat, visible_rows, real_query, padded, kv_heads, kv_len)


def batched_invariant_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: _KeyPlan,
                                scaling: float | None) -> torch.Tensor:
    """Plain attention of every row at once, each row's reductions in an order fixed by its real keys.

    Each row's real keys and values are gathered to the front of a key axis of length L (a multiple
    of BLOCK), its query rows padded to M (a multiple of ROWS, at least ROWS), so every matmul has a
    fixed depth and no shape that a row alone lacks: the kernels picked for 1 to 3 rows, or for a key
    count that is not a multiple of BLOCK, sum in other orders (measured on an AMD EPYC, AVX2-pinned).

    * Scores: [M, head_dim] x [head_dim, L], one dot product of depth head_dim per (query, key).
    * Softmax max: exact in any order. exp: elementwise on a tensor whose size is a multiple of BLOCK,
      so every element takes the same vectorised path.
    * Weighted sum of values and softmax denominator (the values carry a channel of ones): BLOCK keys
      at a time, one matmul of depth BLOCK per block, the block partials added left to right. Keys
      past a row's count weigh exactly 0, so neither the batch's key length nor its number of rows
      changes a row's sums.

    Returns [b, q, heads, head_dim_v]."""
    b, h, q_len, d = query.shape
    kvh, dv = key.shape[1], value.shape[-1]
    length = plan.flat.numel() // (b * kvh)
    per_row = kvh * plan.rows * length
    step = max(1, CHUNK_ELEMENTS // per_row)
    if b > step:  # rows are independent: chunks give every row the same sums
        parts = [batched_invariant_attention(query[i:i + step], key[i:i + step], value[i:i + step],
                                             _chunk(plan, i, i + step, length), scaling) for i in range(0, b, step)]
        return torch.cat(parts)
    m = (h // kvh) * q_len
    scale = d ** -0.5 if scaling is None else scaling
    queries = query.new_zeros(b, kvh, plan.rows, d)
    torch.mul(query.reshape(b, kvh, m, d), scale, out=queries[:, :, :m])
    keys = torch.index_select(key.reshape(-1, d), 0, plan.flat).view(b, kvh, length, d)
    values = value.new_empty(b * kvh * length, dv + 1)
    torch.index_select(value.reshape(-1, dv), 0, plan.flat, out=values[:, :dv])
    values[:, dv] = 1.0
    scores = torch.matmul(queries, keys.transpose(-1, -2))
    hidden = ~plan.visible
    top = scores.masked_fill(hidden, float("-inf")).amax(3, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row that sees nothing
    # exp of finite numbers only (its vectorised path is several times slower on -inf), then exact zeros
    weights = torch.exp_(scores.sub_(top).masked_fill_(hidden, 0.0)).masked_fill_(hidden, 0.0)
    nb = length // BLOCK
    blocks = torch.matmul(weights.view(b, kvh, plan.rows, nb, BLOCK).transpose(2, 3),
                          values.view(b, kvh, nb, BLOCK, dv + 1))  # [b, kvh, nb, M, dv + 1]
    acc = blocks[:, :, 0, :m]
    for j in range(1, nb):
        acc = acc + blocks[:, :, j, :m]
    out = (acc[..., :dv] / acc[..., dv:]).reshape(b, h, q_len, dv).transpose(1, 2)
    return torch.where(plan.real_query[:, :, None, None], out, out.new_zeros(()))


def _chunk(plan: _KeyPlan, start: int, stop: int, length: int) -> _KeyPlan:
    n = plan.kv_heads * length
    flat = plan.flat[start * n:stop * n] - start * plan.kv_heads * plan.kv_len
    return dataclasses.replace(plan, flat=flat, visible=plan.visible[start:stop], real_query=plan.real_query[start:stop])


def batch_invariant_attention(
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
    """AttentionInterface function: :func:`batched_invariant_attention` for plain attention, else
    :func:`split_softmax_attention` row by row on each row's real keys and queries. Returns
    (attn_output [b, q, heads, head_dim], None)."""
    state = current_state()
    if sliding_window is not None or (state is not None and state.recorder is not None):
        # a window counts slots, not real keys; a recorder holds the batch's shape
        return split_softmax_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       softcap=softcap, sliding_window=sliding_window, **kwargs)
    b, h, q_len, d = query.shape
    kv_len = key.shape[2]
    if state is None and softcap is None and (dropout == 0.0 or not module.training):
        plan = _PLAN[1]
        if not (_PLAN[0] is attention_mask and attention_mask is not None and isinstance(plan, _KeyPlan)
                and plan.real_query.shape == (b, q_len) and plan.kv_len == kv_len and plan.kv_heads == key.shape[1]):
            plan = _key_plan(attention_mask, b, q_len, kv_len, h, key.shape[1], query.device)
            _PLAN[0], _PLAN[1] = attention_mask, plan
        return batched_invariant_attention(query, key, value, plan, scaling).contiguous(), None
    if _PLAN[0] is attention_mask and attention_mask is not None and isinstance(_PLAN[1], list) and len(_PLAN[1]) == b:
        plan = _PLAN[1]
    else:
        plan = row_slots(attention_mask, b, q_len, kv_len)
        _PLAN[0], _PLAN[1] = attention_mask, plan
    out = query.new_zeros(b, q_len, h, value.shape[-1])
    for i, (k_idx, q_idx) in enumerate(plan):
        q_i = _take(query, i, q_idx)
        n = q_i.shape[2]
        if n == 0:
            continue
        k_i, v_i = _take(key, i, k_idx), _take(value, i, k_idx)
        mask = _bottom_right_causal(n, k_i.shape[2], query.device)
        token = None
        if state is not None:
            token = _STATE.set(_row_state(state, i, k_idx, kv_len))
        try:
            o_i, _ = split_softmax_attention(module, q_i, k_i, v_i, mask, dropout=dropout, scaling=scaling,
                                             softcap=softcap, **kwargs)
        finally:
            if token is not None:
                _STATE.reset(token)
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
AttentionMaskInterface.register(NAME, _mask)
