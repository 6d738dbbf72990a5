"""Per-call state of the custom attention functions, set by a context manager.

Whoever runs the model says which KEY slots hold system-prompt tokens (and, optionally, which
slot is the first real token of each row) for the duration of a ``with`` block, and which
reweighting of the prompt's attention share applies (a
:class:`~personadrift.generation.hooks.PromptAttentionHook`, e.g. split-softmax's)::

    with attention_context(prompt_mask, reweight=SplitSoftmaxHook(k=0.5)):
        model.generate(...)

The registered attention functions (``"split_softmax"``, ``"prompt_share"``) read this state on
every call. Outside any context they behave exactly like plain SDPA attention.

Slots are indices along the key axis of the attention call (the KV-cache slot), not positions:
rows are left padded and may contain masked holes. Slots beyond ``prompt_mask.shape[1]`` (tokens
generated later) are never prompt and never "first".

Sliding-window layers whose cache returns only the last keys (``DynamicSlidingWindowLayer``)
see fewer keys than slots; the state counts the tokens each layer has seen to recover the slot
offset: from the layer's ``cumulative_length`` when the context is given the ``cache``, else by
counting the tokens each layer has seen inside the context, which assumes the context was entered
before the forward pass that filled the cache (a call whose query length equals its key length is
a fresh prefill and restarts the count).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from personadrift.attention.recorder import PromptShareRecorder
    from personadrift.generation.hooks import PromptAttentionHook

__all__ = ["AttentionState", "attention_context", "current_state"]



@dataclass
class AttentionState:
    """What the attention functions need for one ``with attention_context(...)`` block."""

    prompt_mask: torch.Tensor  # bool [batch, n_slots]
    first_mask: torch.Tensor | None = None  # bool [batch, n_slots]
    reweight: PromptAttentionHook | None = None  # the reweighting of the prompt's share; None: none
    recorder: PromptShareRecorder | None = None
    cache: object | None = None  # a transformers Cache, to read sliding layers' cumulative_length
    _seen: dict[int, int] = field(default_factory=dict)
    _index_cache: dict = field(default_factory=dict)

    def intervenes(self, layer_idx: int | None) -> bool:
        """True if the prompt's attention share is reweighted in this layer."""
        return self.reweight is not None and self.reweight.applies_to(layer_idx)

    # -- slot bookkeeping -------------------------------------------------------------------
    def slot_offset(self, layer_idx: int | None, q_len: int, kv_len: int, sliding: bool) -> int:
        """Slot index of key 0 in this call (non-zero only for truncated sliding-window caches)."""
        key = -1 if layer_idx is None else layer_idx
        seen = q_len if q_len == kv_len else self._seen.get(key, 0) + q_len
        self._seen[key] = seen
        if not sliding:
            return 0
        if self.cache is not None and layer_idx is not None:
            layers = getattr(self.cache, "layers", None)
            total = getattr(layers[layer_idx], "cumulative_length", None) if layers is not None else None
            if total is not None:  # already includes this call's tokens (update precedes attention)
                return max(0, int(total) - kv_len)
        return max(0, seen - kv_len)

    def prompt_span(self) -> tuple[int, int] | None:
        """(start, end) if every row's prompt slots are the same contiguous range, else None."""
        if "span" not in self._index_cache:
            pm = self.prompt_mask
            span = None
            if pm.numel() and bool(pm.any()):
                cols = pm.any(0).nonzero().flatten()
                s, e = int(cols[0]), int(cols[-1]) + 1
                ref = torch.zeros_like(pm)
                ref[:, s:e] = True
                if torch.equal(ref, pm):
                    span = (s, e)
            self._index_cache["span"] = span
        return self._index_cache["span"]

    def key_flags(self, kv_len: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(is_prompt, is_first) as bool [batch, kv_len] for key slots offset .. offset+kv_len-1."""
        need = offset + kv_len
        buf = self._index_cache.get(("flags", device))
        if buf is None or buf[0].shape[1] < need:
            cap = max(need * 2, self.prompt_mask.shape[1], 64)
            buf = (
                _window(self.prompt_mask, cap, 0, device),
                None if self.first_mask is None else _window(self.first_mask, cap, 0, device),
            )
            self._index_cache[("flags", device)] = buf
        return buf[0][:, offset:need], None if buf[1] is None else buf[1][:, offset:need]

    def prompt_index(self, kv_len: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt key indices per row, padded: (idx long [batch, P], valid bool [batch, P]), P >= 1."""
        n_slots = self.prompt_mask.shape[1]
        eff = min(kv_len, max(n_slots - offset, 0))  # slots past the prompt mask are never prompt
        ck = ("index", eff, offset, device)
        hit = self._index_cache.get(ck)
        if hit is not None:
            return hit
        if len(self._index_cache) > 64:  # sliding-window decoding changes offset every step
            self._index_cache = {k: v for k, v in self._index_cache.items() if k[0] != "index"}
        flags, _ = self.key_flags(max(eff, 1), offset, device)
        counts = flags.sum(-1)
        p = max(int(counts.max().item()) if flags.numel() else 0, 1)
        # stable sort puts prompt slots first, in slot order
        order = torch.sort((~flags).to(torch.int8), dim=-1, stable=True).indices[:, :p]
        valid = torch.arange(p, device=device)[None, :] < counts[:, None]
        out = (order, valid)
        self._index_cache[ck] = out
        return out


def _window(mask: torch.Tensor, kv_len: int, offset: int, device: torch.device) -> torch.Tensor:
    """mask[:, offset:offset+kv_len], extended with False past its end."""
    mask = mask.to(device=device, dtype=torch.bool)
    b, n = mask.shape
    part = mask[:, offset : offset + kv_len]
    if part.shape[1] < kv_len:
        part = torch.cat([part, part.new_zeros(b, kv_len - part.shape[1])], dim=1)
    return part


_STATE: contextvars.ContextVar[AttentionState | None] = contextvars.ContextVar("personadrift_attention", default=None)


def current_state() -> AttentionState | None:
    """The active state, or None outside any ``attention_context``."""
    return _STATE.get()


@contextmanager
def attention_context(
    prompt_mask: torch.Tensor,
    *,
    first_mask: torch.Tensor | None = None,
    reweight: PromptAttentionHook | None = None,
    recorder: PromptShareRecorder | None = None,
    cache: object | None = None,
) -> Iterator[AttentionState]:
    """Set the prompt slots (and optionally a reweighting / a recorder) for the enclosed model calls.

    Args:
        prompt_mask: bool [batch, n_slots], True where the KEY slot holds a system-prompt token.
        first_mask: bool [batch, n_slots], True at the first real token of each row (the
            attention sink). Only the recorder uses it; if None, the first visible key of each
            query row is taken.
        reweight: the prompt-attention hook to apply (split-softmax's, say:
            ``interventions/split_softmax.SplitSoftmaxHook``); it names its own layers. None: plain
            attention. The recorder always records every layer.
        recorder: a :class:`~personadrift.attention.recorder.PromptShareRecorder` to fill.
        cache: optional, the transformers ``Cache`` the model uses. Only sliding-window layers
            whose cache keeps just the last keys need it: their slot offset is then read from
            the layer's ``cumulative_length`` instead of being counted from the calls seen inside
            this context (pass it whenever the cache was filled outside the context).
    """
    if prompt_mask.ndim != 2:
        raise ValueError(f"prompt_mask must be [batch, n_slots], got shape {tuple(prompt_mask.shape)}")
    if first_mask is not None and first_mask.shape[0] != prompt_mask.shape[0]:
        raise ValueError("first_mask and prompt_mask must have the same batch size")
    state = AttentionState(
        prompt_mask=prompt_mask.to(torch.bool),
        first_mask=None if first_mask is None else first_mask.to(torch.bool),
        reweight=reweight,
        recorder=recorder,
        cache=cache,
    )
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)
