"""The blocked decode attention (personadrift.attention.blocked_decode): it is attention, a row's
result has the same bits beside any mates, and the packed keys a decode step extends equal those
packed afresh. The engine-level bitwise checks are in tests/test_batch_invariance.py."""

import math

import pytest
import torch

from personadrift.attention.blocked_decode import (
    BLOCK,
    blocked_decode_attention,
    compact_of,
    packed_beside,
    packed_row,
)

KV_HEADS, GROUPS, DIM = 3, 3, 64
# a row's own key counts around block edges, and mates that add up to five blocks past them
COUNTS = (1, 2, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 7, 3 * BLOCK)
MATES = (1, BLOCK + 3, 3 * BLOCK - 1, 5 * BLOCK, 5 * BLOCK + 1)


def _row(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, KV_HEADS * GROUPS, 1, DIM, generator=g),
            torch.randn(1, KV_HEADS, n, DIM, generator=g), torch.randn(1, KV_HEADS, n, DIM, generator=g))


def _left_padded(rows):
    """The rows as the engine's buffer holds them: left-padded to the longest, zeros before."""
    width = max(k.shape[2] for _, k, _ in rows)
    keys = torch.zeros(len(rows), KV_HEADS, width, DIM)
    values = torch.zeros_like(keys)
    slots = []
    for i, (_, k, v) in enumerate(rows):
        n = k.shape[2]
        keys[i, :, width - n :], values[i, :, width - n :] = k[0], v[0]
        slots.append(torch.arange(width - n, width))
    return torch.cat([q for q, _, _ in rows]), keys, values, slots


def _reference(q, k, v):
    scores = (q.double().view(KV_HEADS, GROUPS, DIM) @ k[0].double().transpose(-1, -2)) / math.sqrt(DIM)
    return (scores.softmax(-1) @ v[0].double()).reshape(1, 1, KV_HEADS * GROUPS, DIM)


@pytest.mark.parametrize("n", COUNTS)
def test_it_is_attention(n):
    q, k, v = _row(n, seed=n)
    out = blocked_decode_attention(q, packed_row(k, v), None)
    torch.testing.assert_close(out.double(), _reference(q, k, v), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_has_the_same_bits_beside_any_mates(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in COUNTS:
            row = _row(n, seed=n)
            alone = blocked_decode_attention(row[0], packed_row(row[1], row[2]), None)
            for m, mate in enumerate(MATES):
                mates = [_row(c, seed=100 + m + c) for c in (mate, max(1, mate // 3))]
                for position in (0, 2):
                    rows = mates[:position] + [row] + mates[position:]
                    q, keys, values, slots = _left_padded(rows)
                    out = blocked_decode_attention(q, compact_of(keys, values, slots, last_real=True), None)
                    assert torch.equal(out[position], alone[0]), (n, mate, position)
    finally:
        torch.set_num_threads(before)


def _buffer_cache(keys, values, capacity):
    """A stand-in for the engine's cache: one layer whose ``buf_k``/``buf_v`` hold the columns."""

    class Layer:
        pass

    class Cache:
        layers = [Layer()]

    layer = Cache.layers[0]
    layer.buf_k = torch.zeros(keys.shape[:2] + (capacity, DIM))
    layer.buf_v = torch.zeros_like(layer.buf_k)
    layer.buf_k[:, :, : keys.shape[2]], layer.buf_v[:, :, : keys.shape[2]] = keys, values
    return Cache()


def test_a_decode_step_extends_the_packed_keys_as_packing_afresh_would():
    rows = [_row(c, seed=c) for c in (5, BLOCK - 1, 2 * BLOCK)]
    q, keys, values, slots = _left_padded(rows)
    width = keys.shape[2]
    cache = _buffer_cache(keys, values, capacity=width + 3 * BLOCK)
    layer = cache.layers[0]
    with packed_beside(cache):
        held = compact_of(layer.buf_k[:, :, :width], layer.buf_v[:, :, :width], slots, True, 0)
        for step in range(BLOCK + 2):  # every row opens a block, one widens the table
            new = torch.randn(len(rows), KV_HEADS, 1, DIM, generator=torch.Generator().manual_seed(step))
            layer.buf_k[:, :, width : width + 1], layer.buf_v[:, :, width : width + 1] = new, -new
            width += 1
            slots = [torch.cat([s, torch.tensor([width - 1])]) for s in slots]
            kept = compact_of(layer.buf_k[:, :, :width], layer.buf_v[:, :, :width], slots, True, 0)
            assert kept is held  # extended in place, not packed again
        afresh = compact_of(layer.buf_k[:, :, :width], layer.buf_v[:, :, :width], slots, True)  # no cache: packs
    assert afresh is not held
    assert torch.equal(held.counts, afresh.counts)
    for i, (_, k, v) in enumerate(rows):
        n = k.shape[2]
        for packed in (held, afresh):
            row_k, row_v = packed.row_keys(i)
            assert torch.equal(row_k[:, :n], k[0]) and torch.equal(row_v[:, :n], v[0])
            assert torch.equal(packed.row_keys(i)[0], afresh.row_keys(i)[0])
    for packed in (held, afresh):  # past each row's last key, and in the pool's unused blocks: zeros
        n = packed.counts[packed.owner] - packed.start
        filled = torch.arange(BLOCK)[None, :] < n[:, None]
        assert not packed.k[: packed.used].masked_fill(filled[:, None, :, None], 0).any()
        assert not packed.k[packed.used :].any()
    assert torch.equal(blocked_decode_attention(q, held, None), blocked_decode_attention(q, afresh, None))


def test_a_step_that_is_not_one_real_column_packs_again():
    rows = [_row(c, seed=c) for c in (3, 9)]
    _, keys, values, slots = _left_padded(rows)
    cache = _buffer_cache(keys, values, capacity=64)
    layer, width = cache.layers[0], keys.shape[2]
    with packed_beside(cache):
        first = compact_of(layer.buf_k[:, :, :width], layer.buf_v[:, :, :width], slots, True, 0)
        layer.buf_k[:, :, width : width + 2] = 1.0  # two columns at once (a prefill), then a padded one
        again = compact_of(layer.buf_k[:, :, : width + 2], layer.buf_v[:, :, : width + 2],
                           [torch.cat([s, torch.tensor([width, width + 1])]) for s in slots], True, 0)
        assert again is not first and again.counts.tolist() == [5, 11]
        padded = compact_of(layer.buf_k[:, :, : width + 3], layer.buf_v[:, :, : width + 3],
                            [torch.cat([s, torch.tensor([width, width + 1])]) for s in slots], False, 0)
        assert padded is not again and padded.counts.tolist() == [5, 11]
