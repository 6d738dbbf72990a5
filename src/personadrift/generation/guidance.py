"""Classifier-free guidance as paired rows: which rows pair, and how their distributions mix.

A guided request runs as two rows of one batch: the conditional row (its messages) and the
unconditional row (its ``negative_messages``), which follows the conditional row's sampled
tokens and is never sampled itself. The next-token distribution is the mix

    log p_u + g (log p_c - log p_u)

of the two rows' log-probabilities, computed in float32 whatever the model's dtype (the scale
multiplies the difference of the top tokens' log-probabilities, where low-precision steps would be
amplified g times). Sampling takes it as it is (softmax is shift-invariant); scoring renormalises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch


def guidance_mix(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """The guided scores (float32, not renormalised) of rows whose conditional and unconditional
    logits (any dtype, [..., vocab]) are given."""
    lc = torch.log_softmax(cond_logits.float(), dim=-1)
    lu = torch.log_softmax(uncond_logits.to(lc.device).float(), dim=-1)
    return lu + scale * (lc - lu)


@dataclass(frozen=True)
class Pairing:
    """The guidance pairs of a batch: ``uncond_of[i]`` is the unconditional partner of the
    conditional row ``i``. Rows that are neither are plain (unguided) rows."""

    uncond_of: dict[int, int] = field(default_factory=dict)

    def partner(self, row: int) -> int | None:
        """The unconditional partner of a conditional row, None for any other row."""
        return self.uncond_of.get(row)

    def is_unconditional(self, row: int) -> bool:
        return row in self._unconditional

    @cached_property
    def _unconditional(self) -> frozenset[int]:
        return frozenset(self.uncond_of.values())

    def sampled(self, rows: list[int]) -> list[int]:
        """The rows among ``rows`` that draw tokens (all but unconditional ones)."""
        unc = self._unconditional
        return [i for i in rows if i not in unc]

    def select(self, idx: list[int]) -> Pairing:
        """The pairing after the rows are re-indexed: new row ``j`` is old row ``idx[j]``; rows
        may repeat (samples) or go (finished rows): the k-th copy of a conditional row pairs
        with the k-th copy of its partner."""
        copies: dict[int, list[int]] = {}
        for j, i in enumerate(idx):
            copies.setdefault(i, []).append(j)
        out = {}
        for c, u in self.uncond_of.items():
            for a, b in zip(copies.get(c, ()), copies.get(u, ())):
                out[a] = b
        return Pairing(out)

    @staticmethod
    def concat(parts: list[tuple[int, Pairing]]) -> Pairing:
        """One pairing from ``parts`` ((offset of its first row, pairing) each)."""
        return Pairing({c + o: u + o for o, p in parts for c, u in p.uncond_of.items()})
