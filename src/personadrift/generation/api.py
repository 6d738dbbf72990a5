"""What every engine takes and returns, without torch: the workflow, ``serve``, MMLU and the
benchmarks build requests from these types, and parsing the workflow never imports torch.

An engine is anything with :class:`Engine`'s methods: the batched Hugging Face engine
(``generation/engine.py``, needs torch) and the OpenAI-compatible client
(``generation/openai_backend.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0  # 0 = off; the transformers pipeline upstream used adds top-k 50
    max_new_tokens: int = 64
    do_sample: bool = True
    min_new_tokens: int = 0  # end-of-turn is suppressed before this many tokens (benchmarks)


@dataclass(frozen=True)
class Intervention:
    """What the engine does inside the model for rows whose request has ``intervene=True``: the
    methods' hooks (:mod:`personadrift.generation.hooks`), at most one of each kind. No hooks:
    the model runs as it is."""

    hooks: tuple = ()

    def __post_init__(self):
        kinds = [getattr(h, "kind", None) for h in self.hooks]
        for h, kind in zip(self.hooks, kinds):
            if kind not in HOOK_KINDS:
                raise TypeError(f"{h!r} is not an engine hook (kind {kind!r}; known: {HOOK_KINDS})")
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"an engine takes one hook of each kind; {twice[0]!r} is given twice: {self.hooks}")

    def hook(self, kind: str):
        """The hook of ``kind`` (one of :data:`HOOK_KINDS`), or None."""
        return next((h for h in self.hooks if h.kind == kind), None)


# what an engine offers a method (generation/hooks.py): a reweighting of the attention paid to the
# system prompt's keys, a second branch whose logits are mixed with the request's, an edit of the
# residual stream at chosen layers
HOOK_KINDS = ("attention", "branch", "residual")


@dataclass
class GenRequest:
    messages: list[dict]
    seed: int
    key: str | None = None  # cache key whose prefix may be re-used
    n: int = 1  # samples
    persist: bool = True  # store the resulting prefix under ``key`` (dialog turns, not forks)
    intervene: bool = False  # apply the engine's intervention to this request
    negative_messages: list[dict] | None = None  # the messages of the second branch (a branch hook)
    # this request's reply budget, overriding the call's: requests with different budgets (a
    # round's probes and the next user turn) can then share one batched call
    max_new_tokens: int | None = None
    persona: str | None = None  # the agent persona's id, for hooks that act per persona (steering vectors)


@dataclass(frozen=True)
class Completion:
    """One sampled reply and what a reader needs to judge it."""

    text: str
    prompt_tokens: int  # the rendered prompt's length in tokens (for the context-length check)
    new_tokens: int  # generated tokens, end-of-turn excluded
    finish_reason: str  # "stop": the model ended its turn; "length": it hit max_new_tokens


@runtime_checkable
class Engine(Protocol):
    """The contract shared by all backends."""

    sampling: Sampling
    identity: dict  # model identity for provenance (file sha256 or revision, template hash)
    max_context: int | None  # positions the model supports (prompt + reply); None if unknown

    def generate(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[str]]:
        """``n`` sampled reply texts per request, in request order. A request's own
        ``max_new_tokens`` wins over the call's, which wins over ``sampling.max_new_tokens``."""
        ...

    def complete(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """Like :meth:`generate`, with token counts and why each reply ended."""
        ...
