"""Batch-invariant attention for rows with one query (decode steps), all rows in one call.

Row by row (:mod:`personadrift.attention.invariant`), a decode step costs one SDPA call per row and
layer, most of it call overhead. Here every row of the step runs in the same few tensor operations,
and still each row's result depends on its own keys alone, because every reduction over keys runs
in blocks of ``BLOCK`` keys that start at the row's first real key:

* each row's real keys and values are kept packed from position 0 (zeros after), in a
  :class:`CompactKV` beside the engine's left-padded buffer: built once after a prefill, then one
  column appended per decode step;
* scores and the weighted sum of values are batched matrix products of one fixed shape per
  (row, KV head, block): (queries per KV head x head_dim) by (head_dim x ``BLOCK``), and
  (queries per KV head x ``BLOCK``) by (``BLOCK`` x head_dim); MKL's strict reproducible mode
  (``MKL_CBWR``, pinned numerics) gives a product the same bits whatever else is in the batch;
* the maximum score is a max (exact in any order); ``exp`` runs over tensors whose size is a
  multiple of 64, so no element falls in a vectorised loop's scalar tail; a block's sum is a
  reduction of 64 contiguous elements; blocks are added in a pairwise tree padded with zero
  blocks, and a zero block adds exactly nothing, so the keys a row's batch-mates add past its
  own never change its sums.

Only for rows outside an ``attention_context`` (plain attention): split-softmax, the recorder and
sliding windows stay row by row. The tests (tests/test_batch_invariance.py) check the bits: a row
alone against beside mates, batch sizes 1 to 48, one and two threads.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar

import torch

__all__ = ["BLOCK", "CompactKV", "blocked_decode_attention", "compact_of", "packed_row", "packed_beside"]

BLOCK = 64
_ATTR = "_personadrift_compact"  # where a key buffer keeps its CompactKV (it goes when the buffer does)
# the cache of the forward running now (its layers' ``buf_k`` hold the packed keys between steps)
_CACHE: ContextVar = ContextVar("personadrift_packed_cache", default=None)


@contextlib.contextmanager
def packed_beside(cache):
    """Keep the packed keys of the enclosed forwards beside ``cache``'s layer buffers (a
    transformers Cache whose layers have ``buf_k``), so that a decode step appends one column to
    them instead of packing every row again."""
    token = _CACHE.set(cache)
    try:
        yield
    finally:
        _CACHE.reset(token)


class CompactKV:
    """Per row, its real keys and values packed from position 0, block-major: ``k``/``v``
    [blocks, b, kv_heads, BLOCK, head_dim] (position p of row i at ``[p // BLOCK, i, :, p % BLOCK]``,
    zeros past ``counts[i]``), so that the blocks a step reads are one contiguous prefix and the
    batched products need no copy; ``width`` buffer columns absorbed so far."""

    __slots__ = ("k", "v", "counts", "longest", "width", "rows", "values_of")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, counts: list[int], width: int, values_of: int):
        self.k, self.v, self.width = k, v, width
        self.counts = torch.tensor(counts, dtype=torch.long, device=k.device)
        self.longest = max(counts) if counts else 0
        self.rows = torch.arange(len(counts), device=k.device)
        self.values_of = values_of  # where the values it was built from start (a check, not a reference)

    def append_last(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Absorb the buffer's newest column, real in every row (a decode step)."""
        self._reserve(self.longest + 1)
        block, offset = self.counts // BLOCK, self.counts % BLOCK
        self.k[block, self.rows, :, offset] = key[:, :, -1]
        self.v[block, self.rows, :, offset] = value[:, :, -1]
        self.counts += 1
        self.longest += 1
        self.width += 1

    def _reserve(self, positions: int) -> None:
        blocks = _blocks(positions)
        if blocks > self.k.shape[0]:
            grow = max(blocks, 2 * self.k.shape[0]) - self.k.shape[0]
            self.k = torch.cat([self.k, self.k.new_zeros((grow,) + self.k.shape[1:])])
            self.v = torch.cat([self.v, self.v.new_zeros((grow,) + self.v.shape[1:])])


def _blocks(n: int) -> int:
    return max(1, math.ceil(n / BLOCK))


def _packed(key: torch.Tensor, value: torch.Tensor, key_slots: list[torch.Tensor | None],
            capacity: int) -> CompactKV:
    b, h, kv_len, d = key.shape
    blocks = _blocks(capacity)
    k = key.new_zeros((blocks, b, h, BLOCK, d))
    v = value.new_zeros((blocks, b, h, BLOCK, value.shape[3]))
    counts = []
    for i, idx in enumerate(key_slots):
        if idx is None:
            rk, rv = key[i], value[i]
        elif idx.numel() and int(idx[-1]) - int(idx[0]) + 1 == idx.numel():  # one contiguous run
            s = int(idx[0])
            rk, rv = key[i, :, s : s + idx.numel()], value[i, :, s : s + idx.numel()]
        else:
            rk, rv = key[i].index_select(1, idx), value[i].index_select(1, idx)
        n = rk.shape[1]
        counts.append(n)
        full, rest = divmod(n, BLOCK)
        if full:  # [h, full * BLOCK, d] -> [full, h, BLOCK, d]
            k[:full, i] = rk[:, : full * BLOCK].unflatten(1, (full, BLOCK)).transpose(0, 1)
            v[:full, i] = rv[:, : full * BLOCK].unflatten(1, (full, BLOCK)).transpose(0, 1)
        if rest:
            k[full, i, :, :rest] = rk[:, full * BLOCK :]
            v[full, i, :, :rest] = rv[:, full * BLOCK :]
    return CompactKV(k, v, counts, kv_len, value.data_ptr())


def packed_row(key: torch.Tensor, value: torch.Tensor) -> CompactKV:
    """One row's keys and values ([1, kv_heads, n, head_dim], all real), packed."""
    return _packed(key, value, [None], key.shape[2])


def _buffer_of(key: torch.Tensor, layer_idx: int | None) -> torch.Tensor | None:
    """The buffer ``key`` is a view of: layer ``layer_idx``'s ``buf_k`` in :func:`packed_beside`'s
    cache, if its storage starts where ``key`` does (else None: nothing is kept between calls)."""
    cache = _CACHE.get()
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx is None or layer_idx >= len(layers):
        return None
    buf = getattr(layers[layer_idx], "buf_k", None)
    if buf is None or buf.data_ptr() != key.data_ptr() or buf.shape[:2] != key.shape[:2]:
        return None
    return buf


def compact_of(key: torch.Tensor, value: torch.Tensor, key_slots: list[torch.Tensor | None],
               last_real: bool, layer_idx: int | None = None) -> CompactKV:
    """The packed keys of ``key``/``value`` ([b, kv_heads, kv_len, head_dim]): where they are a
    view of a layer buffer of :func:`packed_beside`'s cache, kept on that buffer and extended by
    the newest column when it is real in every row (``last_real``) and the only one added since;
    packed from the rows' real slots otherwise."""
    buf = _buffer_of(key, layer_idx)
    kv_len = key.shape[2]
    held = getattr(buf, _ATTR, None) if buf is not None else None
    if held is not None and last_real and held.width == kv_len - 1 and held.values_of == value.data_ptr():
        held.append_last(key, value)
        return held
    compact = _packed(key, value, key_slots, buf.shape[2] if buf is not None else kv_len)
    if buf is not None:
        setattr(buf, _ATTR, compact)
    return compact


def _tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 in a pairwise tree, an odd level padded with a zero block at its end: a row
    whose blocks past its own are zeros gets the sum it gets alone."""
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = torch.cat([x, x.new_zeros((1,) + x.shape[1:])])
        x = x[0::2] + x[1::2]
    return x[0]


def blocked_decode_attention(query: torch.Tensor, compact: CompactKV, scaling: float | None) -> torch.Tensor:
    """Attention of one query per row ([b, heads, 1, head_dim]) over each row's packed keys;
    returns [b, 1, heads, head_dim]. Grouped-query heads: query head j reads KV head j // groups."""
    b, h, _, d = query.shape
    kv_heads = compact.k.shape[2]
    groups = h // kv_heads
    n_blocks = _blocks(compact.longest)
    compact._reserve(n_blocks * BLOCK)
    keys, values = compact.k[:n_blocks], compact.v[:n_blocks]  # [nb, b, kvh, BLOCK, d]
    q = query.reshape(1, b, kv_heads, groups, d)
    scores = torch.matmul(q, keys.transpose(-1, -2))  # [nb, b, kvh, groups, BLOCK]
    scores.mul_(d**-0.5 if scaling is None else scaling)
    past = torch.arange(n_blocks * BLOCK, device=query.device).view(n_blocks, 1, BLOCK) >= compact.counts[:, None]
    scores.masked_fill_(past[:, :, None, None, :], float("-inf"))
    top = scores.amax(dim=(0, 4), keepdim=True)
    weights = scores.sub_(top).exp_()
    total = _tree_sum(weights.sum(-1))  # [b, kvh, groups]
    out = _tree_sum(torch.matmul(weights, values))  # [b, kvh, groups, d]
    out = out / total[..., None]
    return out.reshape(b, 1, h, values.shape[-1])
