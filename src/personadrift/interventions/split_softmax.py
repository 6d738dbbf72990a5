"""Split-softmax (the paper's method): the attention share of the system prompt, pi, becomes
pi^k in the chosen layers. Needs the model's internals."""

from __future__ import annotations

from personadrift.generation.api import Intervention
from personadrift.interventions.base import EntryError, Method, applies_to
from personadrift.interventions.layers import (
    check_layers_depth,
    layer_indices,
    layers_problem,
    parse_layers_flag,
)


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
        "apply_to": {"enum": ["dialog", "probes", "both"], "default": "both",
                     "description": "Agent generations the method applies to (MMLU: always)."},
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
        return Intervention(split_k=float(setting.value), split_layers=layers)

    def intervenes(self, setting, phase):
        return applies_to(setting, phase)
