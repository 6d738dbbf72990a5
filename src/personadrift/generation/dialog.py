"""The self-chat protocol: who sees what, as message lists.

A dialog's history is the list of utterances ``[topic, a1, u2, a2, u3, a3, ...]``: the topic
(an opinion question) opens as the first user message, ``a`` are agent replies and ``u`` user
bot replies. ``turns`` counts these entries, so 16 turns are 8 rounds, and after each agent
turn ``t`` (t = 2, 4, ...) the agent is probed in a fork of ``history[:t]``.

* The agent sees its persona as the system prompt, then the history as user/assistant turns.
* The user bot sees its own persona (or none, in the length-only control), then a first user
  message that restates the opening exchange, then the rest with the roles swapped.
* System-prompt repetition (a baseline) re-inserts the agent's system prompt before user turns.
* When a dialog no longer fits the model's context, :func:`window` drops its oldest rounds
  (``selfchat.context_policy: drop_oldest``); the stored history always stays whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

# The project's default wording of the user bot's first input (``selfchat.opening``); the paper
# config uses a wording with upstream's meaning instead (a restatement with no instruction).
# ``$topic`` and ``$reply`` (string.Template): braces would be read as wildcards by Snakemake.
OPENING_RESTATEMENT = (
    'In the last round, you asked: "$topic" and I answered: "$reply". '
    "Continue the conversation: reply to my answer."
)


@dataclass(frozen=True)
class Repetition:
    """Re-insert the agent's system prompt before every ``every``-th user turn after the first.

    ``placement``: ``system_message`` adds a system message before the user turn (folded into
    the user text by templates without a system role); ``user_prefix`` prepends it to the user
    message's text.
    """

    every: int = 1
    placement: str = "system_message"

    def for_template(self, mid_dialog_system: bool) -> Repetition:
        """This repetition, or its ``user_prefix`` form if the template cannot render a system
        message in mid-dialog (Llama-2-chat raises on it; templates without a system role
        only fold the first one)."""
        if self.placement == "system_message" and not mid_dialog_system:
            return Repetition(every=self.every, placement="user_prefix")
        return self


def agent_messages(
    system_prompt: str, history: list[str], repetition: Repetition | None = None
) -> list[dict]:
    """The agent's view of ``history`` (which must start with the topic)."""
    msgs = [{"role": "system", "content": system_prompt}]
    user_turn = 0
    for i, text in enumerate(history):
        if i % 2 == 1:
            msgs.append({"role": "assistant", "content": text})
            continue
        user_turn += 1
        if repetition and user_turn > 1 and (user_turn - 1) % repetition.every == 0:
            if repetition.placement == "user_prefix":
                text = f"{system_prompt}\n\n{text}"
            else:
                msgs.append({"role": "system", "content": system_prompt})
        msgs.append({"role": "user", "content": text})
    return msgs


def user_messages(system_prompt: str | None, history: list[str],
                  opening: str = OPENING_RESTATEMENT) -> list[dict]:
    """The user bot's view: roles swapped, the opening exchange restated as its first input
    (``opening`` with ``$topic`` and ``$reply``: the first two entries of ``history``)."""
    if len(history) < 2:
        raise ValueError("the user bot speaks only after the agent's first reply")
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    text = Template(opening).substitute(topic=history[0], reply=history[1])
    msgs.append({"role": "user", "content": text})
    for i, text in enumerate(history[2:]):
        msgs.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return msgs


def probe_messages(
    system_prompt: str, history: list[str], probe: str, repetition: Repetition | None = None
) -> list[dict]:
    """A fork of the agent's view with ``probe`` asked as the next user message."""
    return agent_messages(system_prompt, list(history) + [probe], repetition)


def window(history: list[str], dropped_rounds: int) -> list[str]:
    """``history`` without its first ``dropped_rounds`` exchanges (topic and first reply, then
    each later user/agent pair), so it still starts with a user-side utterance and both views
    keep alternating; the user bot's restated opening becomes the oldest exchange kept."""
    return list(history[2 * dropped_rounds:])


def without_system(messages: list[dict]) -> list[dict]:
    """The unconditional branch for guidance: the same dialog with every system message removed."""
    return [m for m in messages if m["role"] != "system"]


def negative_branch(messages: list[dict], mode: str = "no_system") -> list[dict]:
    """The guidance branch without the persona.

    ``no_system`` drops the system messages (a template may then insert its own default system
    prompt, as SmolLM2's does); ``empty_system`` keeps one empty system message, which stops such
    templates from adding theirs.
    """
    rest = without_system(messages)
    if mode == "empty_system":
        return [{"role": "system", "content": ""}] + rest
    if mode != "no_system":
        raise ValueError(f"unknown guidance negative branch {mode!r}")
    return rest


WHITESPACE_MODES = ("collapse", "upstream")


def clean_reply(text: str, flatten_newlines: bool = True, whitespace: str = "collapse") -> str:
    """A reply as stored: stripped and, with ``flatten_newlines``, on one line.

    ``whitespace`` says how a reply is flattened: ``collapse`` turns every whitespace run into
    one space; ``upstream`` turns each newline into one space and keeps all other whitespace,
    as upstream's ``process_answer`` did ("a\n\nb" becomes "a  b"). The difference reaches the
    judges that count characters or split at ", ".
    """
    if whitespace not in WHITESPACE_MODES:
        raise ValueError(f"unknown whitespace mode {whitespace!r} (expected one of {', '.join(WHITESPACE_MODES)})")
    text = text.strip()
    if flatten_newlines:
        text = " ".join(text.split()) if whitespace == "collapse" else text.replace("\n", " ")
    return text
