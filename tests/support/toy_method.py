"""A toy intervention method defined outside the package, in this one module: guidance against
a neutral system prompt ("you are a helpful assistant") rather than against none.

It is registered only where a test asks for it: in-process by importing this module (the
``toy_method`` fixture of tests/test_registry.py, which unregisters it afterwards), in the
workflow's processes by ``PERSONADRIFT_METHODS=support.toy_method``. Everything the workflow,
the figures and ``serve`` need to know about it is said here.
"""

from __future__ import annotations

from personadrift.generation.api import Intervention
from personadrift.interventions.base import Method, register

NEUTRAL = "You are a helpful assistant."


@register
class NeutralContrast(Method):
    name = "toy_contrast"
    label = "contrast with a neutral prompt"
    color = "#ff7f0e"
    grid_key = "weight"
    short = "w"
    needs_internals = True
    grid_item = {"type": "number", "minimum": 1}
    grid_description = "Guidance weight against the neutral prompt."
    serve_flags = {"--toy-weight": ("weight", {"type": float, "help": "toy: contrast weight >= 1"})}

    def intervention(self, setting):
        return Intervention(guidance_scale=float(setting.value))

    def negative_messages(self, setting, messages):
        return [{"role": "system", "content": NEUTRAL}] + [m for m in messages if m["role"] != "system"]

    def intervenes(self, setting, phase):
        return True

    def rows_per_sample(self, setting):
        return 2
