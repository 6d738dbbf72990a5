"""Rendering dialogs through the tokenizer's own chat template.

Every prompt the model sees goes through ``tokenizer.apply_chat_template``; nothing here
hand-writes a model's format. Two facts of real templates are handled:

* Some templates have no system role (Gemma): they raise or drop it. Then the system prompt is
  folded into the first user turn and the fold is recorded.
* Some accept a system message only first (Llama-2-chat: "roles must alternate"), so a system
  message in mid-dialog (the repetition baseline's default placement) cannot be rendered;
  :attr:`ChatFormat.mid_dialog_system` says whether it can, so the protocol can fall back.
* Analyses and split-softmax need the token span of the system prompt; it is located from the
  rendered text with the tokenizer's offset mapping, so it is right for any template.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SENTINEL = "\u2063persona-sentinel\u2063"


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: token ids, the system-prompt token span, whether it was folded."""

    ids: list[int]
    prompt_span: tuple[int, int] | None  # [start, end) token indices of the system prompt text
    system_folded: bool


def fold_system(messages: list[dict]) -> list[dict]:
    """Merge a leading system message into the first user message (for templates without one)."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    if rest and rest[0]["role"] == "user":
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


class ChatFormat:
    """Renders message lists to token ids with a tokenizer's chat template."""

    def __init__(self, tokenizer, *, fold: bool | None = None):
        if getattr(tokenizer, "chat_template", None) in (None, ""):
            raise ValueError(
                "the tokenizer has no chat template; personadrift needs a chat (instruct) model"
            )
        self.tokenizer = tokenizer
        self.fold = (not self._template_keeps_system()) if fold is None else fold

    @property
    def template_sha256(self) -> str:
        return hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()

    def _template_keeps_system(self) -> bool:
        probe = [
            {"role": "system", "content": SENTINEL},
            {"role": "user", "content": "hello"},
        ]
        try:
            text = self.tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # templates signal "no system role" by raising
            return False
        return SENTINEL in text

    @property
    def mid_dialog_system(self) -> bool:
        """Whether a system message after the first turns renders (as a system message)."""
        if not hasattr(self, "_mid_dialog_system"):
            probe = [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "system", "content": SENTINEL},
                {"role": "user", "content": "again"},
            ]
            try:
                self._mid_dialog_system = SENTINEL in self.text(probe)
            except Exception:  # e.g. Llama-2-chat: "Conversation roles must alternate"
                self._mid_dialog_system = False
        return self._mid_dialog_system

    def count(self, messages: list[dict]) -> int:
        """The rendered prompt's length in tokens (generation prompt included)."""
        return len(self.render(messages).ids)

    def text(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        msgs = fold_system(messages) if self.fold else messages
        return self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> Rendered:
        text = self.text(messages, add_generation_prompt)
        has_system = bool(messages) and messages[0]["role"] == "system"
        enc = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=has_system,
        )
        ids = list(enc["input_ids"])
        span = None
        if has_system and messages[0]["content"]:
            span = _token_span(text, messages[0]["content"], enc["offset_mapping"])
        return Rendered(ids=ids, prompt_span=span, system_folded=self.fold and has_system)


def _token_span(text: str, needle: str, offsets) -> tuple[int, int] | None:
    """Token indices [start, end) whose characters overlap the first occurrence of ``needle``."""
    start = text.find(needle)
    if start < 0:
        return None
    end = start + len(needle)
    hit = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    return (hit[0], hit[-1] + 1) if hit else None
