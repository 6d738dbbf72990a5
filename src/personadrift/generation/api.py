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
    """Inference-time drift control applied to rows whose request has ``intervene=True``."""

    split_k: float | None = None  # split-softmax exponent; None = off
    split_layers: object = "all"  # "all", list of layer indices
    guidance_scale: float | None = None  # classifier-free guidance; None = off


@dataclass
class GenRequest:
    messages: list[dict]
    seed: int
    key: str | None = None  # cache key whose prefix may be re-used
    n: int = 1  # samples
    persist: bool = True  # store the resulting prefix under ``key`` (dialog turns, not forks)
    intervene: bool = False  # apply the engine's intervention to this request
    negative_messages: list[dict] | None = None  # unconditional branch for guidance
    # this request's reply budget, overriding the call's: requests with different budgets (a
    # round's probes and the next user turn) can then share one batched call
    max_new_tokens: int | None = None


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
