"""The ``openai`` backend: an OpenAI-compatible chat-completions API (generation/openai_backend.py).
A server holds the model: no weights are fetched (``model.source: api`` for a study on it)."""

from __future__ import annotations

from pathlib import Path

from personadrift.errors import InputError
from personadrift.runtime.backends.base import Backend, register


@register
class OpenAICompatible(Backend):
    name = "openai"
    description = "an OpenAI-compatible chat-completions API (vLLM's or TGI's server, llama.cpp, OpenAI)"
    local_weights = False
    section = "openai"

    def check(self, config, path):
        if not (config.get("openai") or {}).get("model"):
            raise InputError(path, "openai.model", "required with backend: openai")

    def engine(self, config, model_dir, setting=None, *, sampling, threads=None):
        from personadrift.generation.openai_backend import OpenAIEngine

        return OpenAIEngine.from_config(config, sampling=sampling, cache_dir=Path(model_dir) / "openai-cache")
