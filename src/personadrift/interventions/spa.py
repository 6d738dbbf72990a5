"""Selective prompt anchoring (SPA; Tian & Zhang, ICML 2025, arXiv 2408.09121), with the system
prompt as the anchored text.

Each next-token logit vector is computed twice: from the conversation as it is (o), and from the
same conversation with the system prompt's tokens masked (m): each of them enters the model as a
mask token's embedding, at its own position, the rest of the row unchanged. The scores are

    m + omega (o - m)  =  o + (omega - 1) (o - m)

on raw logits, in float32 (the second form is exactly ``o`` at omega = 1). omega = 1 is the model
as it is; omega > 1 amplifies what the system prompt contributes to the next token.

Masking. SPA's own code writes a mask token in place of the anchored text (the tokenizer's mask
token, else a model's pad or unk token); its paper describes the anchored tokens' embeddings
replaced by mask embeddings. Here each system-prompt token keeps its position and enters as the
embedding of the tokenizer's special token the ``mask`` option names (``pad``: the engine's
padding token; ``unk``), or as a zero vector (``zero``); the engine's branch hook does it
(:class:`~personadrift.generation.hooks.LogitsBranchHook`, ``blank_token``). The released package's
later extras (a weight modulated by the token's probability, clamped logits) are not part of it.

Relation to classifier-free guidance (``guidance.py``): guidance mixes log-probabilities,
log p_u + g (log p_c - log p_u). Since log_softmax(x) = x - logsumexp(x), that equals the same mix
of raw logits plus one constant per row, so both are the same distribution for the same two rows
(to float32 rounding); SPA is guidance with omega as g whose second row is the same conversation
with the prompt masked instead of left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from personadrift.generation.api import Intervention
from personadrift.generation.hooks import LogitsBranchHook
from personadrift.interventions.base import APPLY_TO, EntryError, Method, applies_to

# the ``mask`` option: what each system-prompt token enters the second pass as
MASKS = {"pad": "pad", "unk": "unk", "zero": None}  # option value -> the branch hook's blank_token


def spa_mix(logits, masked_logits, omega: float):
    """SPA's scores (float32 [..., vocab]) from the logits with the prompt as it is and masked
    (any dtype): o + (omega - 1) (o - m), which is m + omega (o - m)."""
    o = logits.float()
    m = masked_logits.to(o.device).float()
    return o + (float(omega) - 1.0) * (o - m)


@dataclass(frozen=True)
class SPAHook(LogitsBranchHook):
    """The branch is the request's own messages with the system prompt blanked; scores are
    :func:`spa_mix`."""

    omega: float = 1.0
    blank_prompt: bool = True

    def mix(self, cond_logits, branch_logits):
        return spa_mix(cond_logits, branch_logits, self.omega)


class SelectivePromptAnchoring(Method):
    name = "spa"
    label = "selective prompt anchoring (SPA)"
    color = "#ff7f0e"
    grid_key = "omega"
    short = "o"
    needs_internals = True
    grid_item = {"type": "number", "minimum": 1}
    grid_description = ("Anchoring strengths omega >= 1: logits = masked + omega (original - masked), the masked "
                        "pass with the system prompt's tokens masked; 1 is the model as it is.")
    options = {
        "apply_to": APPLY_TO,
        "mask": {"enum": sorted(MASKS), "default": "pad",
                 "description": "What each system-prompt token enters the masked pass as: the embedding of the "
                                "tokenizer's pad token (the end-of-sequence token where it has none) or unk token, "
                                "or a zero vector; its position is kept."},
    }
    serve_flags = {
        "--spa-omega": ("omega", {"type": float, "help": "selective prompt anchoring strength omega >= 1 (the "
                                  "system prompt is the anchored text; masked with --spa-mask)"}),
        "--spa-mask": ("mask", {"choices": sorted(MASKS), "default": "pad",
                                "help": "what SPA's masked pass puts in place of each system-prompt token (as "
                                        "interventions.<name>.mask in the config)"}),
    }
    # MMLU's prompt is the persona as system prompt and one user question: SPA masks that system
    # prompt and amplifies its contribution, so its scores are its own, not the baseline's
    single_turn_as_baseline = False

    def check_tokenizer(self, setting, tokenizer):
        token = MASKS[setting.options.get("mask", "pad")]
        if token not in (None, "pad") and getattr(tokenizer, f"{token}_token_id", None) is None:
            raise EntryError("mask", f"{token!r}: the model's tokenizer has no {token} token (use pad or zero)")

    def intervention(self, setting):
        mask = setting.options.get("mask", "pad")
        return Intervention((SPAHook(omega=float(setting.value), blank_token=MASKS[mask]),))

    def negative_messages(self, setting, messages):
        return list(messages)  # the same conversation: the branch hook masks its system prompt

    def intervenes(self, setting, phase):
        return applies_to(setting, phase)

    def rows_per_sample(self, setting):
        return 2  # the conversation as it is and with the system prompt masked
