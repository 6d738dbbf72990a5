"""The one engine factory: the configured backend, built from a config and a fetched model."""

from __future__ import annotations

from pathlib import Path

from personadrift.errors import InputError


def sampling_from(config: dict):
    """The study's sampling (keys a rule's params do not carry keep their defaults: MMLU
    scores log-probabilities and never samples)."""
    from personadrift.generation.api import Sampling

    sc = config.get("selfchat", {})
    keys = ("temperature", "top_p", "top_k", "max_new_tokens", "min_new_tokens")
    return Sampling(**{k: sc[k] for k in keys if k in sc and k in Sampling.__dataclass_fields__})


def make_engine(config: dict, model_dir: str | Path, setting=None, *, threads: int | None = None,
                backend: str | None = None):
    """The backend of ``setting`` (its own ``backend`` key, else the study's): the HF engine on
    the fetched model, or the OpenAI-compatible client. ``backend`` overrides both."""
    backend = backend or (setting.backend_for(config["backend"]) if setting else config["backend"])
    sampling = sampling_from(config)
    if backend == "openai":
        if setting is not None and setting.needs_internals:
            raise InputError("config", f"interventions.{setting.family}.backend",
                             f"{setting.method} needs model internals; it cannot run with backend: openai")
        from personadrift.generation.openai_backend import OpenAIEngine

        return OpenAIEngine.from_config(config, sampling=sampling, cache_dir=Path(model_dir) / "openai-cache")
    import torch

    from personadrift.generation.models import load_model

    if threads:
        torch.set_num_threads(threads)
    return hf_engine_for(load_model(model_dir, config["model"]), config, setting)


def hf_engine_for(lm, config: dict, setting=None, *, progress: bool = True):
    """The HF engine of ``setting`` on a loaded model (``models.load_model``): the depth check,
    the chat format, sampling, intervention and ``model.max_batch`` of ``config``."""
    from personadrift.generation.api import Intervention
    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.engine import HFEngine

    sampling = sampling_from(config)
    if setting is not None:  # at job start, before any generation: a layer past the model's depth is an error
        from personadrift.interventions.base import EntryError

        try:
            setting.impl.check_depth(setting, lm.model.config.num_hidden_layers)
        except EntryError as e:
            raise InputError("config", f"interventions.{setting.family}.{e.key}", e.problem) from None
    intervention = setting.engine_intervention() if setting else Intervention()
    chat = ChatFormat(lm.tokenizer, fold=config["model"].get("fold_system_prompt"))
    engine = HFEngine(lm.model, lm.tokenizer, chat=chat, sampling=sampling,
                      intervention=intervention, max_batch=config["model"]["max_batch"], progress=progress)
    engine.identity = {**lm.identity, "chat_template_sha256": chat.template_sha256,
                       "system_prompt_folded": chat.fold}
    return engine


def model_identity(engine) -> dict:
    return getattr(engine, "identity", {})
