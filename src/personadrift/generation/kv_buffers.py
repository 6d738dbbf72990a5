"""KV-cache storage of the batched engine: one layer's pre-allocated buffer, and the store of
conversation prefixes kept between calls.

Device placement: under a device map each decoder layer runs on its own GPU, so each layer's
buffer is created from (and indexed on the device of) the keys that layer computes; a stored
prefix stays on its layers' devices while the store's budget allows, and is stacked for a batch
on each layer's device.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer


@dataclass
class Prefix:
    """The token ids and KV of one stored conversation prefix."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [kv_heads, length, head_dim]
    # per layer, the device its keys were computed on (where they go back to when spilled)
    # (empty: where the keys are now)
    homes: list[torch.device] = field(default_factory=list)

    _bytes: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.homes:
            self.homes = [k.device for k, _ in self.kv]

    def bytes_by_device(self) -> dict[torch.device, int]:
        if self._bytes is None:  # counted once per placement (the store asks at every put)
            out: dict[torch.device, int] = {}
            for k, v in self.kv:
                out[k.device] = out.get(k.device, 0) + k.numel() * k.element_size() + v.numel() * v.element_size()
            self._bytes = out
        return self._bytes

    def layer(self, layer: int, which: int) -> torch.Tensor:
        """Keys (``which`` 0) or values (1) of ``layer`` on that layer's device: a spilled prefix
        comes back from pinned host memory asynchronously (ordered before the kernels that read
        it on the device's stream)."""
        t = self.kv[layer][which]
        home = self.homes[layer]
        return t if t.device == home else t.to(home, non_blocking=True)


# the share of a device's memory (free, plus what the store holds there) that stored prefixes
# may keep: the rest stays for the batches that re-use them
PREFIX_SHARE = 0.5


class PrefixStore:
    """Per cache key (e.g. ``"c0007/agent"``), the last prefix stored under it.

    Each layer's prefix stays on that layer's device (a GPU under a device map) while the
    store's budget there allows, so a dialog's next turn re-uses it without crossing the bus.
    Over budget, the least recently used prefixes are spilled to ``host`` memory (pinned where
    CUDA is available, so that they come back with asynchronous copies). The budget per device
    is ``budget_bytes`` if given, else what the engine's last call left beside its rows
    (:meth:`limit`, from ``generation/memory.py``: a stored prefix never displaces a batch row),
    else, before any call, ``PREFIX_SHARE`` of the device's free memory plus what the store
    already holds there. A host has no budget: on the CPU every prefix simply stays where it is.

    Spilled tensors are only ever read by copying them back on the device's stream, so their
    device-to-host copies need not be waited for either.
    """

    def __init__(self, host: torch.device | str = "cpu", *, budget_bytes: int | None = None, free=None,
                 host_bytes: int | None = None):
        from personadrift.generation.memory import free_bytes
        from personadrift.job import current

        self.device = torch.device(host)  # where spilled prefixes live
        self.budget_bytes = budget_bytes
        # spilled prefixes (pinned host memory) stay under this (default: the job's share of its
        # mem_mb, job.py): beyond it the least recently used are dropped, to be encoded
        # again when their conversation comes back, rather than the job killed for its memory
        self.host_bytes = host_bytes if host_bytes is not None else current().host_spill_bytes()
        self.dropped = 0  # spilled prefixes dropped to stay under host_bytes
        self._free = free or free_bytes
        self._items: OrderedDict[str, Prefix] = OrderedDict()  # least recently used first
        self.spills = 0  # prefixes moved to the host to make room
        self.peak: dict[str, int] = {}  # the most bytes held at once, per device
        self.limits: dict[torch.device, int] = {}  # per device, what a call's rows leave (``limit``)

    # ------------------------------------------------------------------ mapping
    def get(self, key: str | None) -> Prefix | None:
        if key is None or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def peek(self, key: str | None) -> Prefix | None:
        """The prefix under ``key`` without marking it used."""
        return None if key is None else self._items.get(key)

    def put(self, key: str, prefix: Prefix) -> None:
        self._items.pop(key, None)  # the key's previous prefix no longer counts
        self._items[key] = prefix
        self._fit(prefix)

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

    # ------------------------------------------------------------------ placement
    def held_bytes(self) -> dict[torch.device, int]:
        """Bytes of stored prefixes on each device other than the host."""
        out: dict[torch.device, int] = {}
        for p in self._items.values():
            for d, n in p.bytes_by_device().items():
                if d != self.device:
                    out[d] = out.get(d, 0) + n
        return out

    def budget(self, device: torch.device, held: int) -> int | None:
        """Bytes the store may hold on ``device`` (None: no limit, a host)."""
        if self.budget_bytes is not None:
            return self.budget_bytes
        if device in self.limits:  # what the last call's rows left (generation/memory.py)
            return self.limits[device]
        free = self._free(device)
        return None if free is None else int((free + held) * PREFIX_SHARE)

    def _fit(self, new: Prefix) -> None:
        """Spill least recently used prefixes (``new`` last) until every device is within budget."""
        held = self.held_bytes()
        for device in [d for d in held if d in new.bytes_by_device()]:
            cap = self.budget(device, held[device])
            if cap is None:
                continue
            for key in list(self._items):
                if held.get(device, 0) <= cap:
                    break
                p = self._items.get(key)  # None: dropped by a spill (``host_bytes``)
                if p is None or p is new or device not in p.bytes_by_device():
                    continue
                self._spill(p, held)
            if held.get(device, 0) > cap:
                self._spill(new, held)
        for device, n in held.items():
            self.peak[str(device)] = max(self.peak.get(str(device), 0), n)

    def limit(self, keep: dict[torch.device, int]) -> None:
        """Hold at most ``keep[device]`` bytes on each device from now on (the memory a call's
        rows leave), spilling the least recently used prefixes now to get there."""
        self.limits.update(keep)
        held = self.held_bytes()
        for device, cap in keep.items():
            for key in list(self._items):
                if held.get(device, 0) <= cap:
                    break
                p = self._items.get(key)
                if p is not None and device in p.bytes_by_device():
                    self._spill(p, held)

    def _spill(self, prefix: Prefix, held: dict[torch.device, int]) -> None:
        for d, n in prefix.bytes_by_device().items():
            if d in held:
                held[d] -= n
        pin = torch.cuda.is_available()
        prefix.kv = [(_to_host(k, self.device, pin), _to_host(v, self.device, pin)) for k, v in prefix.kv]
        prefix._bytes = None
        self.spills += 1
        self._trim_host(keep=prefix)

    def spilled_bytes(self) -> int:
        """Host bytes of prefixes spilled there from a device."""
        return sum(n for p in self._items.values() if any(h != self.device for h in p.homes)
                   for d, n in p.bytes_by_device().items() if d == self.device)

    def _trim_host(self, keep: Prefix) -> None:
        """Drop the least recently used spilled prefixes (``keep`` last) while the spilled bytes
        exceed ``host_bytes``."""
        if self.host_bytes is None:
            return
        spilled = self.spilled_bytes()
        for key in list(self._items):
            if spilled <= self.host_bytes:
                break
            p = self._items[key]
            if p is keep or all(h == self.device for h in p.homes):
                continue
            spilled -= p.bytes_by_device().get(self.device, 0)
            del self._items[key]
            self.dropped += 1
        if spilled > self.host_bytes:  # the newest alone is over: it goes too
            for key, p in list(self._items.items()):
                if p is keep:
                    del self._items[key]
                    self.dropped += 1

    def spill_all(self) -> None:
        """Move every stored prefix to the host (frees the devices' memory, e.g. after running out)."""
        held = self.held_bytes()
        for p in list(self._items.values()):
            if any(d != self.device for d in p.bytes_by_device()) and any(q is p for q in self._items.values()):
                self._spill(p, held)


def _to_host(t: torch.Tensor, host: torch.device, pin: bool) -> torch.Tensor:
    if t.device == host:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, device=host, pin_memory=pin)
    out.copy_(t, non_blocking=pin)  # asynchronous into pinned memory (see PrefixStore)
    return out


def left_padded(prefix: Prefix | None, like: Prefix, layer: int, which: int, reuse: int, length: int) -> torch.Tensor:
    """The first ``reuse`` cached positions of a row's prefix (``which``: 0 keys, 1 values) at
    ``layer``, on that layer's device, left-padded with zeros to ``length`` (zeros, not garbage:
    a masked score is never NaN)."""
    ref = like.kv[layer][which]
    home = like.homes[layer]
    if prefix is None or reuse == 0:
        return torch.zeros((ref.shape[0], length, ref.shape[2]), dtype=ref.dtype, device=home)
    t = prefix.layer(layer, which)[:, :reuse]
    if reuse == length:
        return t
    pad = t.new_zeros((t.shape[0], length - reuse, t.shape[2]))
    return torch.cat([pad, t], dim=1)


class BufferLayer(DynamicLayer):
    """A layer cache in a pre-allocated [batch, kv_heads, capacity, head_dim] buffer.

    Lock-step decoding writes one column per step for all rows, so the keys are a view of the
    filled columns; nothing is concatenated per step (``DynamicLayer`` copies the whole cache
    every step, which at 128 rows and 600 positions moves gigabytes per token).
    """

    def __init__(self, capacity: int = 0, pending: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None
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
        buf_k, buf_v = self.buf_k, self.buf_v
        assert buf_k is not None and buf_v is not None  # grown above
        buf_k[:, :, self.length : need] = key_states
        buf_v[:, :, self.length : need] = value_states
        self.length = need
        self.keys, self.values = buf_k[:, :, :need], buf_v[:, :, :need]
        return self.keys, self.values

    def _grow(self, like: torch.Tensor, capacity: int) -> None:
        b, h, _, d = like.shape
        k = like.new_empty((b, h, capacity, d))
        v = like.new_empty((b, h, capacity, d))
        if self.buf_k is not None and self.buf_v is not None and self.length:
            k[:, :, : self.length] = self.buf_k[:, :, : self.length]
            v[:, :, : self.length] = self.buf_v[:, :, : self.length]
        self.buf_k, self.buf_v = k, v

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buf_k is None or self.buf_v is None:
            return
        indices = indices.to(self.buf_k.device)
        n = self.length
        k = self.buf_k.new_empty((len(indices),) + self.buf_k.shape[1:])
        v = self.buf_v.new_empty((len(indices),) + self.buf_v.shape[1:])
        k[:, :, :n] = self.buf_k[:, :, :n].index_select(0, indices)
        v[:, :, :n] = self.buf_v[:, :, :n].index_select(0, indices)
        self.buf_k, self.buf_v = k, v
        self.keys, self.values = k[:, :, :n], v[:, :, :n]

    def row(self, i: int, columns: torch.Tensor,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of row ``i``'s keys and values [kv_heads, kept, head_dim] at the filled
        ``columns`` (bool [length], on any device), on ``device`` (None: this layer's)."""
        assert self.keys is not None and self.values is not None  # a filled layer
        m = columns.to(self.keys.device)
        device = self.keys.device if device is None else device
        return self.keys[i][:, m].to(device, copy=True), self.values[i][:, m].to(device, copy=True)

    @classmethod
    def gather(cls, parts: list[tuple[list[int], BufferLayer]], n: int, width: int, capacity: int) -> BufferLayer:
        """One layer of ``n`` rows from ``parts`` ((row indices, layer) each), each part's filled
        columns right-aligned at ``width``; the columns before them are zeros (masked: zeros,
        not the buffer's garbage, so a masked score is never NaN)."""
        ref_k, ref_v = parts[0][1].buf_k, parts[0][1].buf_v
        assert ref_k is not None and ref_v is not None  # prefilled parts
        layer = cls(capacity=capacity)
        layer.lazy_initialization(ref_k, ref_v)
        buf_k = ref_k.new_empty((n, ref_k.shape[1], capacity, ref_k.shape[3]))
        buf_v = ref_v.new_empty((n, ref_v.shape[1], capacity, ref_v.shape[3]))
        for idx, part in parts:
            i = torch.tensor(idx, dtype=torch.long, device=ref_k.device)
            a = width - part.length
            for buf, src in ((buf_k, part.buf_k), (buf_v, part.buf_v)):
                assert src is not None
                buf[i, :, :a] = 0
                buf[i, :, a:width] = src[:, :, : part.length]
        layer.buf_k, layer.buf_v, layer.length = buf_k, buf_v, width
        layer.keys, layer.values = buf_k[:, :, :width], buf_v[:, :, :width]
        return layer
