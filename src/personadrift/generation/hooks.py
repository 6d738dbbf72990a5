"""Engine hooks: what a method may do inside the model, and the one place the engine asks.

A method that acts inside the model returns an :class:`~personadrift.generation.api.Intervention`
of hooks (``Method.intervention``); the engine applies them to the rows of intervened requests
without knowing which method made them. Three kinds, one of each per engine:

* :class:`PromptAttentionHook` (``"attention"``): in chosen layers and query heads, the share pi
  of a query's attention paid to the system prompt's keys becomes ``share(pi)``, and the other
  keys are rescaled by ``(1 - share(pi)) / (1 - pi)`` so the row still sums to one. Split-softmax
  (pi^k) is one; a constant bias b on the prompt keys' scores is another (share = e^b pi / (e^b pi
  + 1 - pi)). The registered attention function (``attention/split_softmax.py``) computes it
  without forming the attention matrix, from the two factors the hook gives.
* :class:`LogitsBranchHook` (``"branch"``): every intervened request runs a second row, its
  ``negative_messages`` (optionally with the system prompt's tokens blanked: each enters as a zero
  vector or as a chosen special token's embedding), which follows the request's sampled tokens;
  the next-token scores are ``mix(request's logits, the branch's logits)``. Classifier-free
  guidance is one; selective prompt anchoring (the same messages, the prompt blanked) another.
* :class:`ResidualHook` (``"residual"``): the hidden states leaving chosen decoder layers are
  edited, per row (each row knows its request's persona). Activation steering is one.

Methods that only change messages (repetition) need no hook: the dialog applies them.

Hooks are frozen dataclasses (their fields are their parameters: equal hooks are the same
intervention, which ``serve`` and provenance rely on); this module imports no torch, so methods
can build hooks while the workflow is parsed. Tensors reach their methods at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

Tensor = Any  # torch.Tensor, without importing torch here


@dataclass(frozen=True)
class PromptAttentionHook:
    """Reweights the attention paid to the system prompt's keys (see the module docstring).

    Subclasses give the two factorisations the attention function uses; both must agree with
    ``share``, and both get float32 tensors of one shape ([..., 1] per query row and head):

    * :meth:`factors` (prefill, where pi and 1 - pi are computed separately as two attention
      channels, each accurate relative to its own size): ``(share(pi), r)`` with
      ``r = (1 - share(pi)) / (1 - pi)``;
    * :meth:`decode_factors` (one query per row): ``(share(pi) / pi, r)``.
    """

    kind: ClassVar[str] = "attention"
    layers: tuple[int, ...] | None = None  # decoder layers (``module.layer_idx``); None: all
    heads: tuple[int, ...] | None = None  # query heads; None: all

    def is_identity(self) -> bool:
        """True when the hook changes nothing (then the layers run plain attention)."""
        return False

    def applies_to(self, layer_idx: int | None) -> bool:
        if self.is_identity():
            return False
        return self.layers is None or (layer_idx is not None and layer_idx in self.layers)

    def factors(self, pi: Tensor, po: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode_factors(self, pi: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class LogitsBranchHook:
    """A second branch per intervened request whose logits are mixed with the request's."""

    kind: ClassVar[str] = "branch"
    # the branch row's system-prompt tokens are blanked (their positions and the rest of the row
    # unchanged): the model reads the same text with the prompt masked
    blank_prompt: bool = False
    # what a blanked token enters as: None, a zero embedding; else the name of a special token of
    # the tokenizer ("pad", "unk", "mask", ...: its ``<name>_token_id``; "pad" is the engine's
    # padding token, the end-of-sequence token where the tokenizer has no pad token), whose
    # embedding takes each blanked token's place, as if that token stood there
    blank_token: str | None = None

    def mix(self, cond_logits: Tensor, branch_logits: Tensor) -> Tensor:
        """float32 scores [..., vocab] (sampling takes them as they are; scoring renormalises)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ResidualHook:
    """Edits the hidden states leaving chosen decoder layers, for intervened rows."""

    kind: ClassVar[str] = "residual"
    layers: tuple[int, ...] = ()

    def prepare(self, hidden_size: int, device, dtype) -> None:
        """Called once by the engine before the first forward (load what the hook needs)."""

    def edit(self, layer_idx: int, hidden: Tensor, personas: list[str | None], active: Tensor) -> Tensor:
        """The edited hidden states [rows, tokens, hidden] of layer ``layer_idx``'s output;
        ``personas`` the rows' request personas, ``active`` bool [rows] (intervened rows).
        Must act on each row alone (batch invariance)."""
        raise NotImplementedError
