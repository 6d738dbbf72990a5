"""Batch-invariant attention for rows with one query (decode steps), all rows in one call.

Row by row (:mod:`personadrift.attention.invariant`), a decode step costs one SDPA call per row and
layer, much of it call overhead. Here every row of the step runs in the same few tensor operations,
and still each row's result depends on its own keys alone, because every reduction over keys runs
in blocks of ``BLOCK`` keys that start at the row's first real key:

* each row's real keys and values are kept in blocks of ``BLOCK`` positions (a row's position p in
  its block p // BLOCK, zeros past its last key), the blocks of all rows in one pool, as vLLM's
  paged attention keeps them, beside the engine's left-padded buffer: packed once after a prefill,
  then one column appended per decode step; a step computes the blocks rows own, not a rectangle
  padded to the longest row;
* scores and the weighted sum of values are batched matrix products of one fixed shape per
  (block, KV head): (queries per KV head x head_dim) by (head_dim x ``BLOCK``), and
  (queries per KV head x ``BLOCK``) by (``BLOCK`` x head_dim); MKL's strict reproducible mode
  (``MKL_CBWR``, pinned numerics) gives a product the same bits whatever else is in the batch;
* a row's maximum score is a max (exact in any order); ``exp`` runs over tensors whose size is a
  multiple of 64, so no element falls in a vectorised loop's scalar tail; a block's sum is a
  reduction of 64 contiguous elements; a row's blocks are added in their order in a pairwise tree
  padded with zero blocks, and a zero block adds exactly nothing, so its mates' longer rows never
  change its sums.

Only for rows outside an ``attention_context`` (plain attention): split-softmax, the recorder and
sliding windows stay row by row. The tests (tests/test_blocked_decode.py, and the engine's in
tests/test_batch_invariance.py) check the bits: a row alone against beside mates, 1 and 2 threads.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar

import torch

__all__ = ["BLOCK", "CompactKV", "blocked_decode_attention", "compact_of", "packed_beside", "packed_row", "take_row"]

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
    """Each row's real keys and values in blocks of ``BLOCK`` positions from its first key: a pool
    ``k``/``v`` [blocks, kv_heads, BLOCK, head_dim] (zeros where no key is), ``table`` [b, most
    blocks] the pool index of each row's j-th block (``-1`` past its last), ``owner`` the row of
    each used block, ``start`` its first position in that row; ``width`` buffer columns absorbed."""

    __slots__ = ("k", "v", "used", "counts", "longest", "width", "rows", "table", "lookup", "owner", "start",
                 "values_of")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, rows_blocks: list[list[int]], counts: list[int],
                 width: int, values_of: int):
        self.k, self.v, self.width, self.values_of = k, v, width, values_of
        self.used = sum(len(r) for r in rows_blocks)
        self.counts = torch.tensor(counts, dtype=torch.long, device=k.device)
        self.longest = max(counts) if counts else 0
        self.rows = torch.arange(len(counts), device=k.device)
        owner, start = [0] * self.used, [0] * self.used
        for i, blocks in enumerate(rows_blocks):
            for j, p in enumerate(blocks):
                owner[p], start[p] = i, j * BLOCK
        self.owner = torch.tensor(owner, dtype=torch.long, device=k.device)
        self.start = torch.tensor(start, dtype=torch.long, device=k.device)
        most = max((len(r) for r in rows_blocks), default=0)
        self.table = torch.tensor([r + [-1] * (most - len(r)) for r in rows_blocks], dtype=torch.long,
                                  device=k.device).view(len(rows_blocks), most)
        self._derive_lookup()

    def _derive_lookup(self) -> None:
        """``table`` with ``-1`` pointing one past the used blocks (the extra block of -inf and
        zeros the attention appends)."""
        self.lookup = self.table.masked_fill(self.table < 0, self.used)

    def append_last(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Absorb the buffer's newest column, real in every row (a decode step)."""
        block, offset = self.counts // BLOCK, self.counts % BLOCK
        starts = offset == 0
        if bool(starts.any()):  # some row's new key starts a block
            self._open_blocks(starts.nonzero().flatten(), block)
        where = self.table[self.rows, block]
        self.k[where, :, offset] = key[:, :, -1]
        self.v[where, :, offset] = value[:, :, -1]
        self.counts += 1
        self.longest += 1
        self.width += 1

    def _open_blocks(self, rows: torch.Tensor, block: torch.Tensor) -> None:
        """A new pool block for each of ``rows`` (their next position starts block ``block[i]``)."""
        n = rows.numel()
        if not n:
            return
        if self.used + n > self.k.shape[0]:
            grow = max(self.used + n, 2 * self.k.shape[0]) - self.k.shape[0]
            self.k = torch.cat([self.k, self.k.new_zeros((grow,) + self.k.shape[1:])])
            self.v = torch.cat([self.v, self.v.new_zeros((grow,) + self.v.shape[1:])])
        ids = torch.arange(self.used, self.used + n, device=self.k.device)
        self.used += n
        j = block[rows]
        if int(j.max()) >= self.table.shape[1]:
            self.table = torch.cat([self.table, self.table.new_full((self.table.shape[0], 1), -1)], dim=1)
        self.table[rows, j] = ids
        self.owner = torch.cat([self.owner, rows])
        self.start = torch.cat([self.start, j * BLOCK])
        self._derive_lookup()

    def row_keys(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``i``'s keys and values [kv_heads, count, head_dim], in order (for checks)."""
        blocks = [int(p) for p in self.table[i] if int(p) >= 0]
        n = int(self.counts[i])
        k = torch.cat([self.k[p] for p in blocks], dim=1) if blocks else self.k.new_zeros(self.k.shape[1], 0, 0)
        v = torch.cat([self.v[p] for p in blocks], dim=1) if blocks else self.v.new_zeros(self.v.shape[1], 0, 0)
        return k[:, :n], v[:, :n]


def take_row(t: torch.Tensor, i: int, idx: torch.Tensor | None) -> torch.Tensor:
    """Row ``i`` of ``t`` ([b, heads, slots, dim]) at the slots ``idx`` (None: all), as
    [1, heads, n, dim]: a view where they are one contiguous run, a copy otherwise."""
    row = t[i : i + 1]
    if idx is None:
        return row
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) + 1 == n:
        s = int(idx[0])
        return row[:, :, s : s + n]
    return row.index_select(2, idx)


def _blocks(n: int) -> int:
    return math.ceil(n / BLOCK)


def _packed(key: torch.Tensor, value: torch.Tensor, key_slots: list[torch.Tensor | None],
            capacity: int) -> CompactKV:
    b, h, kv_len, d = key.shape
    rows = [(take_row(key, i, idx)[0], take_row(value, i, idx)[0]) for i, idx in enumerate(key_slots)]
    counts = [rk.shape[1] for rk, _ in rows]
    # room for the rows to grow to ``capacity`` keys (the buffer's) before the pool must grow
    room = sum(_blocks(max(c, 1) + capacity - kv_len) for c in counts)
    k = key.new_zeros((max(room, 1), h, BLOCK, d))
    v = value.new_zeros((max(room, 1), h, BLOCK, value.shape[3]))
    rows_blocks, used = [], 0
    for rk, rv in rows:
        n = rk.shape[1]
        full, rest = divmod(n, BLOCK)
        if full:  # [h, full * BLOCK, d] -> [full, h, BLOCK, d]
            k[used : used + full] = rk[:, : full * BLOCK].unflatten(1, (full, BLOCK)).transpose(0, 1)
            v[used : used + full] = rv[:, : full * BLOCK].unflatten(1, (full, BLOCK)).transpose(0, 1)
        if rest:
            k[used + full, :, :rest] = rk[:, full * BLOCK :]
            v[used + full, :, :rest] = rv[:, full * BLOCK :]
        own = _blocks(n)
        rows_blocks.append(list(range(used, used + own)))
        used += own
    return CompactKV(k, v, rows_blocks, counts, kv_len, value.data_ptr())


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
    """Sum over dim 1 in a pairwise tree, an odd level padded with a zero block at its end: a row
    whose blocks past its own are zeros gets the sum it gets alone."""
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = torch.cat([x, x.new_zeros(x.shape[:1] + (1,) + x.shape[2:])], dim=1)
        x = x[:, 0::2] + x[:, 1::2]
    return x[:, 0]


def blocked_decode_attention(query: torch.Tensor, compact: CompactKV, scaling: float | None) -> torch.Tensor:
    """Attention of one query per row ([b, heads, 1, head_dim]) over each row's blocks of keys;
    returns [b, 1, heads, head_dim]. Grouped-query heads: query head j reads KV head j // groups."""
    b, h, _, d = query.shape
    kv_heads = compact.k.shape[1]
    groups = h // kv_heads
    used = compact.used
    keys, values = compact.k[:used], compact.v[:used]  # [blocks, kvh, BLOCK, d]
    q = query.reshape(b, kv_heads, groups, d).index_select(0, compact.owner)  # each block's row's query
    scores = torch.matmul(q, keys.transpose(-1, -2))  # [blocks, kvh, groups, BLOCK]
    scores.mul_(d**-0.5 if scaling is None else scaling)
    past = (compact.start[:, None] + torch.arange(BLOCK, device=query.device)) >= compact.counts[compact.owner][:, None]
    scores.masked_fill_(past[:, None, None, :], float("-inf"))
    # per row, over its blocks (a -1 of the table reads an extra block of -inf, zeros): max, then sums
    table = compact.lookup
    block_top = torch.cat([scores.amax(-1), scores.new_full((1, kv_heads, groups), float("-inf"))])
    top = block_top[table].amax(1)  # [b, kvh, groups]
    weights = scores.sub_(top.index_select(0, compact.owner)[..., None]).exp_()
    sums = torch.cat([weights.sum(-1), weights.new_zeros((1, kv_heads, groups))])
    parts = torch.matmul(weights, values)  # [blocks, kvh, groups, d]
    parts = torch.cat([parts, parts.new_zeros((1,) + parts.shape[1:])])
    out = _tree_sum(parts[table]) / _tree_sum(sums[table])[..., None]
    return out.reshape(b, 1, h, values.shape[-1])
