"""The one engine factory: the configured backend, built from a config and a fetched model."""

from __future__ import annotations

from pathlib import Path


def make_engine(config: dict, model_dir: str | Path, setting=None, *, threads: int | None = None):
    """The configured backend (HF engine on the fetched model, or the OpenAI client)."""
    from personadrift.generation.api import Intervention, Sampling

    intervention = setting.engine_intervention() if setting else Intervention()
    sc = config["selfchat"]
    sampling = Sampling(temperature=sc["temperature"], top_p=sc["top_p"], max_new_tokens=sc["max_new_tokens"],
                        top_k=sc.get("top_k", 0), min_new_tokens=sc.get("min_new_tokens", 0))
    if config["backend"] == "openai":
        from personadrift.generation.openai_backend import OpenAIEngine

        return OpenAIEngine.from_config(config, sampling=sampling, cache_dir=Path(model_dir) / "openai-cache")
    import torch

    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.engine import HFEngine
    from personadrift.generation.models import load_model

    if threads:
        torch.set_num_threads(threads)
    lm = load_model(model_dir, config["model"])
    chat = ChatFormat(lm.tokenizer, fold=config["model"].get("fold_system_prompt"))
    engine = HFEngine(lm.model, lm.tokenizer, chat=chat, sampling=sampling,
                      intervention=intervention, max_batch=config["model"]["max_batch"], progress=True)
    engine.identity = {**lm.identity, "chat_template_sha256": chat.template_sha256,
                       "system_prompt_folded": chat.fold}
    return engine


def model_identity(engine) -> dict:
    return getattr(engine, "identity", {})
