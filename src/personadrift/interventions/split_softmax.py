"""Split-softmax (the paper's method): the attention share of the system prompt, pi, becomes
pi^k in the chosen layers. Needs the model's internals: an attention hook
(:class:`~personadrift.generation.hooks.PromptAttentionHook`)."""

from __future__ import annotations

from dataclasses import dataclass

from personadrift.generation.api import Intervention
from personadrift.generation.hooks import PromptAttentionHook
from personadrift.interventions.base import APPLY_TO, EntryError, Method, applies_to
from personadrift.interventions.layers import (
    check_layers_depth,
    layer_indices,
    layers_problem,
    parse_layers_flag,
)


@dataclass(frozen=True)
class SplitSoftmaxHook(PromptAttentionHook):
    """share(pi) = pi^k, k in (0, 1]; the stable factorisations live with the attention math
    (``attention/split_softmax.py``: :func:`split_factors`, :func:`split_decode_factors`)."""

    k: float = 1.0

    def __post_init__(self):
        if not 0.0 < float(self.k) <= 1.0:
            raise ValueError(f"split_k must be in (0, 1], got {self.k}")

    def is_identity(self):
        return self.k == 1.0

    def factors(self, pi, po):
        from personadrift.attention.split_softmax import split_factors

        return split_factors(pi, po, self.k)

    def decode_factors(self, pi):
        from personadrift.attention.split_softmax import split_decode_factors

        return split_decode_factors(pi, self.k)


class SplitSoftmax(Method):
    name = "split_softmax"
    label = "split-softmax"
    color = "#1f77b4"
    grid_key = "k"
    short = "k"
    needs_internals = True
    grid_item = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    grid_description = "Exponents k in (0, 1]; the prompt share pi becomes pi^k."
    options = {
        "layers": {"default": "all",
                   "description": 'Layers: "all", a list of indices, or {start, stop} (stop exclusive).'},
        "apply_to": APPLY_TO,
    }
    serve_flags = {
        "--split-k": ("k", {"type": float, "help": "split-softmax exponent k in (0, 1] (off by default)"}),
        "--split-layers": ("layers", {"type": parse_layers_flag, "default": "all",
                                      "help": "split-softmax layers: all, 0,1,2 or start:stop"}),
    }

    def check(self, family, entry):
        problem = layers_problem(entry.get("layers", "all"))
        if problem:
            raise EntryError("layers", problem)

    def check_depth(self, setting, n_layers):
        check_layers_depth(setting.options.get("layers", "all"), n_layers)

    def intervention(self, setting):
        layers = layer_indices(setting.options.get("layers", "all"))
        hook = SplitSoftmaxHook(k=float(setting.value), layers=None if layers == "all" else tuple(layers))
        return Intervention((hook,))

    def intervenes(self, setting, phase):
        return applies_to(setting, phase)
