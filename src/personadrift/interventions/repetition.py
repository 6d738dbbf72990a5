"""System-prompt repetition (a baseline): the agent's persona re-inserted every n user turns.
Works behind any backend (it only changes the messages)."""

from __future__ import annotations

from personadrift.interventions.base import Method


class PromptRepetition(Method):
    name = "repetition"
    label = "prompt repetition"
    color = "#2ca02c"
    grid_key = "every"
    short = "every"
    grid_item = {"type": "integer", "minimum": 1}
    grid_description = "Re-insert the system prompt every n user turns."
    single_turn_as_baseline = True  # the prompt is re-inserted from the second user turn on
    options = {"placement": {"enum": ["system_message", "user_prefix"], "default": "system_message",
                             "description": "How the prompt is re-inserted."}}

    def repetition(self, setting):
        from personadrift.generation.dialog import Repetition

        return Repetition(every=int(setting.value), placement=setting.options.get("placement", "system_message"))
