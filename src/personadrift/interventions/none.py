"""No intervention: the baseline ``none``, and the length-only control.

``control: {method: none, user_persona: false}`` is the control setting: the user bot talks
without a persona, so drift caused by dialog length alone is told apart from drift toward a
competing persona.
"""

from __future__ import annotations

from personadrift.interventions.base import Method


class NoIntervention(Method):
    name = "none"
    label = "no intervention"
    color = "#000000"
    options = {"user_persona": {"type": "boolean", "default": True, "description":
               "false = the length-only control: the user bot gets no persona."}}

    def user_persona(self, setting):
        return bool(setting.options.get("user_persona", True))

    def is_control(self, setting):
        return setting.name != BASELINE  # e.g. the length-only control


BASELINE = "none"  # the setting every other is compared with (interventions.none is required)
