"""A toy intervention method in its own package, outside personadrift: guidance against a
neutral system prompt ("you are a helpful assistant") rather than against none, by a hook of its
own (the engine's branch hook: a second row whose logits are mixed with the request's).

Its pyproject.toml names the class in the entry point group ``personadrift.methods``; once the
package is installed, personadrift finds it (tests/test_registry.py installs it with pip into a
folder of its own, so it is known only to the processes given that folder). Everything the
workflow, the figures and ``serve`` need to know about it is said here.
"""

from __future__ import annotations

from dataclasses import dataclass

from personadrift.generation.api import Intervention
from personadrift.generation.hooks import LogitsBranchHook
from personadrift.interventions.base import Method

NEUTRAL = "You are a helpful assistant."


@dataclass(frozen=True)
class NeutralContrastHook(LogitsBranchHook):
    """log p_neutral + w (log p - log p_neutral), in float32."""

    weight: float = 1.0

    def mix(self, cond_logits, branch_logits):
        import torch

        lc = torch.log_softmax(cond_logits.float(), dim=-1)
        ln = torch.log_softmax(branch_logits.to(lc.device).float(), dim=-1)
        return ln + self.weight * (lc - ln)


class NeutralContrast(Method):
    name = "toy_contrast"
    label = "contrast with a neutral prompt"
    color = "#e377c2"
    grid_key = "weight"
    short = "w"
    needs_internals = True
    grid_item = {"type": "number", "minimum": 1}
    grid_description = "Guidance weight against the neutral prompt."
    serve_flags = {"--toy-weight": ("weight", {"type": float, "help": "toy: contrast weight >= 1"})}

    def intervention(self, setting):
        return Intervention((NeutralContrastHook(weight=float(setting.value)),))

    def negative_messages(self, setting, messages):
        return [{"role": "system", "content": NEUTRAL}] + [m for m in messages if m["role"] != "system"]

    def intervenes(self, setting, phase):
        return True

    def rows_per_sample(self, setting):
        return 2
