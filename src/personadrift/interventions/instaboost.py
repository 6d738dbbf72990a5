"""InstABoost (instruction attention boosting): the attention paid to the system prompt's keys is
boosted by a constant factor alpha in the chosen layers and query heads. Needs the model's
internals: an attention hook (:class:`~personadrift.generation.hooks.PromptAttentionHook`).

Reference: V. Guardieiro, A. Stein, A. Khare, E. Wong, "Instruction Following by (Principled)
Boosting Attention of Large Language Models", arXiv:2506.13734. Its abstract (v3) defines the
method as "a constant additive bias to instruction-key attention logits across all layers and
heads". A bias b on the prompt keys' scores before the softmax is the same as multiplying their
attention weights by alpha = e^b and renormalising every row; here the parameter is alpha >= 1
(the config's ``boost``), the instruction is the system prompt, and the default is every layer
and every head, as in the paper. The per-task values of the paper's bias were not available to
us; the grid is the config's.

With pi the share of a query row's attention on the prompt keys, the boosted row is

    prompt keys: alpha p_j / (alpha pi + 1 - pi),   other keys: p_j / (alpha pi + 1 - pi),

so the prompt's share becomes share(pi) = alpha pi / (alpha pi + 1 - pi) and the other keys
are rescaled by r = 1 / (alpha pi + 1 - pi). Split-softmax maps the same share by pi -> pi^k:
both raise a small share, split-softmax most where pi is smallest (pi^k / pi grows without bound
as pi -> 0), InstABoost by at most the factor alpha (share / pi -> alpha as pi -> 0).
"""

from __future__ import annotations

import math
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
from personadrift.names import short_repr


@dataclass(frozen=True)
class InstABoostHook(PromptAttentionHook):
    """share(pi) = alpha pi / (alpha pi + 1 - pi), alpha > 0 (the method's grid asks alpha >= 1).

    Stability: every denominator is alpha pi + 1 - pi >= min(alpha, 1) (pi + po), never small;
    pi = 0 gives share 0 and r = 1 exactly (the row is plain attention), pi = 1 gives share 1
    exactly; a row with neither (a fully masked padding query: pi = po = 0) keeps share 0, r = 1.
    """

    alpha: float = 1.0

    def __post_init__(self):
        a = float(self.alpha)
        if not (math.isfinite(a) and a > 0.0):
            raise ValueError(f"the InstABoost factor alpha must be a finite number > 0, got {self.alpha}")

    def is_identity(self):
        return float(self.alpha) == 1.0

    def factors(self, pi, po):
        """(share, r) from the prompt's and the other keys' masses, each computed as its own
        attention channel: share = alpha pi / (alpha pi + po) and r = (pi + po) / (alpha pi + po),
        which are the definitions when pi + po = 1 and stay exact at the ends (pi = 0: r = po / po
        = 1; po = 0: share = 1)."""
        import torch

        pi = pi.clamp(0.0, 1.0)
        po = po.clamp(0.0, 1.0)
        boosted = pi * float(self.alpha)
        den = boosted + po
        empty = den <= 0  # no visible key at all (padding query): leave the row alone
        safe = torch.where(empty, torch.ones_like(den), den)
        share = torch.where(empty, pi, boosted / safe)
        r = torch.where(empty, torch.ones_like(den), (pi + po) / safe)
        return share, r

    def decode_factors(self, pi):
        """(share / pi, r) = (alpha / D, 1 / D), D = alpha pi + (1 - pi) >= min(alpha, 1): 1 - pi
        is exact for pi >= 1/2 (Sterbenz) and within one rounding of 1 otherwise; pi = 0 gives
        D = 1 exactly (r = 1: the row is plain attention), pi = 1 gives D = alpha (share / pi = 1)."""
        pi = pi.clamp(0.0, 1.0)
        den = pi * float(self.alpha) + (1.0 - pi)
        return float(self.alpha) / den, 1.0 / den


def heads_problem(spec) -> str | None:
    """None if ``spec`` is "all" or a non-empty list of distinct query-head indices, else the problem."""
    if spec in (None, "all"):
        return None
    if not isinstance(spec, list):
        return f'expected "all" or a list of query-head indices, got {short_repr(spec)}'
    if not spec:
        return "an empty list selects no head"
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in spec):
        return f"expected query-head indices (integers >= 0), got {short_repr(spec)}"
    if len(set(spec)) != len(spec):
        return f"a head is listed twice in {short_repr(spec)}"
    return None


def head_indices(spec) -> tuple[int, ...] | None:
    """None ("all") or the sorted indices of a checked head set."""
    return None if spec in (None, "all") else tuple(sorted(int(h) for h in spec))


def parse_heads_flag(text: str):
    """A command-line head set (``all`` or ``0,3,5``) as "all" or a list of indices
    (``personadrift serve --instaboost-heads``)."""
    import argparse

    text = text.strip()
    if text in ("", "all"):
        return "all"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all or a comma list of head indices, got {text!r}") from None


class InstABoost(Method):
    name = "instaboost"
    label = "InstABoost"
    color = "#17becf"
    grid_key = "boost"
    short = "b"
    needs_internals = True
    grid_item = {"type": "number", "minimum": 1}
    grid_description = ("Boost factors alpha >= 1: the system prompt's attention weights are multiplied by "
                        "alpha (a bias log alpha on their scores) and every row renormalised; the prompt "
                        "share pi becomes alpha pi / (alpha pi + 1 - pi). alpha = 1 is plain attention.")
    options = {
        "layers": {"default": "all",
                   "description": 'Layers: "all", a list of indices, or {start, stop} (stop exclusive).'},
        "heads": {"default": "all",
                  "description": 'Query heads boosted in those layers: "all" or a non-empty list of indices.'},
        "apply_to": APPLY_TO,
    }
    serve_flags = {
        "--instaboost": ("boost", {"type": float, "help": "InstABoost factor alpha >= 1 on the system prompt's "
                                   "attention weights (off by default)"}),
        "--instaboost-layers": ("layers", {"type": parse_layers_flag, "default": "all",
                                           "help": "InstABoost layers: all, 0,1,2 or start:stop"}),
        "--instaboost-heads": ("heads", {"type": parse_heads_flag, "default": "all",
                                         "help": "InstABoost query heads: all or 0,1,2"}),
    }

    def check(self, family, entry):
        for key, problem in (("layers", layers_problem(entry.get("layers", "all"))),
                             ("heads", heads_problem(entry.get("heads", "all")))):
            if problem:
                raise EntryError(key, problem)

    def check_depth(self, setting, n_layers):
        check_layers_depth(setting.options.get("layers", "all"), n_layers)

    def check_heads(self, setting, n_heads):
        heads = head_indices(setting.options.get("heads", "all"))
        past = [h for h in heads or () if h >= n_heads]
        if past:
            raise EntryError("heads", f"head {past[0]} does not exist: the model has {n_heads} query heads "
                                      f"per layer (0..{n_heads - 1})")

    def intervention(self, setting):
        layers = layer_indices(setting.options.get("layers", "all"))
        hook = InstABoostHook(alpha=float(setting.value), layers=None if layers == "all" else tuple(layers),
                              heads=head_indices(setting.options.get("heads", "all")))
        return Intervention((hook,))

    def intervenes(self, setting, phase):
        return applies_to(setting, phase)
