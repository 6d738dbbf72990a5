"""Classifier-free guidance: logits = uncond + g (cond - uncond), the unconditional branch being
the same messages without the persona. Needs the model's logits for both branches: a branch hook
(:class:`~personadrift.generation.hooks.LogitsBranchHook`)."""

from __future__ import annotations

from dataclasses import dataclass

from personadrift.generation.api import Intervention
from personadrift.generation.hooks import LogitsBranchHook
from personadrift.interventions.base import APPLY_TO, Method, applies_to


@dataclass(frozen=True)
class GuidanceHook(LogitsBranchHook):
    """log p_u + g (log p_c - log p_u), in float32 (``generation/guidance.py``)."""

    scale: float = 1.0

    def mix(self, cond_logits, branch_logits):
        from personadrift.generation.guidance import guidance_mix

        return guidance_mix(cond_logits, branch_logits, self.scale)


class Guidance(Method):
    name = "cfg"
    label = "classifier-free guidance"
    color = "#d62728"
    grid_key = "guidance_scale"
    short = "g"
    needs_internals = True
    grid_item = {"type": "number", "minimum": 1}
    grid_description = "Guidance scales g >= 1: logits = uncond + g (cond - uncond)."
    options = {
        "apply_to": APPLY_TO,
        "negative": {"enum": ["no_system", "empty_system"], "default": "no_system",
                     "description": "The unconditional branch: the messages without system messages (a "
                                    "template may insert its default one), or with an empty system message."},
    }
    serve_flags = {
        "--guidance-scale": ("guidance_scale", {"type": float, "help": "classifier-free guidance scale g >= 1 "
                                                "(the unconditional branch: --guidance-negative)"}),
        "--guidance-negative": ("negative", {"choices": ["no_system", "empty_system"], "default": "no_system",
                                             "help": "guidance's unconditional branch: the messages without system "
                                                     "messages, or with an empty one (as interventions.<name>.negative "
                                                     "in the config)"}),
    }

    def intervention(self, setting):
        return Intervention((GuidanceHook(scale=float(setting.value)),))

    def negative_messages(self, setting, messages):
        from personadrift.generation.dialog import negative_branch

        return negative_branch(messages, setting.options.get("negative", "no_system"))

    def intervenes(self, setting, phase):
        return applies_to(setting, phase)

    def rows_per_sample(self, setting):
        return 2  # the conditional and the unconditional branch
