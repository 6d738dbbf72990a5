"""KV-cache storage of the batched engine: one layer's pre-allocated buffer, and the store of
conversation prefixes kept between calls.

Device placement: under a device map each decoder layer runs on its own GPU, so each layer's
buffer is created from (and indexed on the device of) the keys that layer computes; a re-used
prefix is written into it when the forward first reaches the layer, wherever it was stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer


@dataclass
class Prefix:
    """The token ids and KV of one stored conversation prefix."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [kv_heads, length, head_dim]


class PrefixStore:
    """Per cache key (e.g. ``"c0007/agent"``), the last prefix stored under it.

    Prefixes are kept on ``device`` (host memory by default: a 70B model's KV for 50 dialogs of
    4k tokens would not fit beside the weights on the GPU); the engine copies them over per turn.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._items: dict[str, Prefix] = {}

    def get(self, key: str | None) -> Prefix | None:
        return None if key is None else self._items.get(key)

    def put(self, key: str, prefix: Prefix) -> None:
        self._items[key] = prefix

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def forget(self, start: str = "") -> None:
        """Drop the prefixes whose key starts with ``start`` (all by default)."""
        for key in [k for k in self._items if k.startswith(start)]:
            del self._items[key]

    def items(self):
        return self._items.items()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


def left_padded(prefix: Prefix | None, like: Prefix, layer: int, which: int, reuse: int, length: int) -> torch.Tensor:
    """The first ``reuse`` cached positions of a row's prefix (``which``: 0 keys, 1 values) at
    ``layer``, left-padded with zeros to ``length`` (zeros, not garbage: a masked score is never NaN)."""
    ref = like.kv[layer][which]
    if prefix is None or reuse == 0:
        return ref.new_zeros((ref.shape[0], length, ref.shape[2]))
    t = prefix.kv[layer][which][:, :reuse]
    if reuse == length:
        return t
    pad = t.new_zeros((t.shape[0], length - reuse, t.shape[2]))
    return torch.cat([pad, t.to(pad.device)], dim=1)


class BufferLayer(DynamicLayer):
    """A layer cache in a pre-allocated [batch, kv_heads, capacity, head_dim] buffer.

    Lock-step decoding writes one column per step for all rows, so the keys are a view of the
    filled columns; nothing is concatenated per step (``DynamicLayer`` copies the whole cache
    every step, which at 128 rows and 600 positions moves gigabytes per token).
    """

    def __init__(self, capacity: int = 0, pending: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.buf_k = self.buf_v = None
        # re-used prefix keys and values [batch, kv_heads, length, head_dim], wherever they were
        # stored: written into the buffer on the device of the first keys this layer computes
        self.pending = pending
        self.length = 0 if pending is None else pending[0].shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.pending is not None:
            k, v = self.pending
            self.pending, self.length = None, 0
            self.update(k.to(key_states.device, key_states.dtype), v.to(value_states.device, value_states.dtype))
        n = key_states.shape[-2]
        need = self.length + n
        if self.buf_k is None or self.buf_k.shape[-2] < need:
            self._grow(key_states, max(need, self.capacity, 2 * self.length))
        self.buf_k[:, :, self.length : need] = key_states
        self.buf_v[:, :, self.length : need] = value_states
        self.length = need
        self.keys, self.values = self.buf_k[:, :, :need], self.buf_v[:, :, :need]
        return self.keys, self.values

    def _grow(self, like: torch.Tensor, capacity: int) -> None:
        b, h, _, d = like.shape
        k = like.new_empty((b, h, capacity, d))
        v = like.new_empty((b, h, capacity, d))
        if self.buf_k is not None and self.length:
            k[:, :, : self.length] = self.buf_k[:, :, : self.length]
            v[:, :, : self.length] = self.buf_v[:, :, : self.length]
        self.buf_k, self.buf_v = k, v

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buf_k is None:
            return
        indices = indices.to(self.buf_k.device)
        n = self.length
        k = self.buf_k.new_empty((len(indices),) + self.buf_k.shape[1:])
        v = self.buf_v.new_empty((len(indices),) + self.buf_v.shape[1:])
        k[:, :, :n] = self.buf_k[:, :, :n].index_select(0, indices)
        v[:, :, :n] = self.buf_v[:, :, :n].index_select(0, indices)
        self.buf_k, self.buf_v = k, v
        self.keys, self.values = k[:, :, :n], v[:, :, :n]

    def row(self, i: int, columns: torch.Tensor, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of row ``i``'s keys and values [kv_heads, kept, head_dim] at the filled
        ``columns`` (bool [length], on any device), on ``device`` (None: this layer's)."""
        m = columns.to(self.keys.device)
        device = self.keys.device if device is None else device
        return self.keys[i][:, m].to(device, copy=True), self.values[i][:, m].to(device, copy=True)

    @classmethod
    def gather(cls, parts: list[tuple[list[int], BufferLayer]], n: int, width: int, capacity: int) -> BufferLayer:
        """One layer of ``n`` rows from ``parts`` ((row indices, layer) each), each part's filled
        columns right-aligned at ``width``; the columns before them are zeros (masked: zeros,
        not the buffer's garbage, so a masked score is never NaN)."""
        ref = parts[0][1]
        layer = cls(capacity=capacity)
        layer.lazy_initialization(ref.buf_k, ref.buf_v)
        layer.buf_k = ref.buf_k.new_empty((n, ref.buf_k.shape[1], capacity, ref.buf_k.shape[3]))
        layer.buf_v = ref.buf_v.new_empty((n, ref.buf_v.shape[1], capacity, ref.buf_v.shape[3]))
        for idx, part in parts:
            i = torch.tensor(idx, dtype=torch.long, device=ref.buf_k.device)
            a = width - part.length
            for buf, src in ((layer.buf_k, part.buf_k), (layer.buf_v, part.buf_v)):
                buf[i, :, :a] = 0
                buf[i, :, a:width] = src[:, :, : part.length]
        layer.length = width
        layer.keys, layer.values = layer.buf_k[:, :, :width], layer.buf_v[:, :, :width]
        return layer
