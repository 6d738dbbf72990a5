"""The one engine factory: the configured backend (runtime/backends/), built from a config and
a fetched model.

The workflow's steps (:func:`make_engine`), ``personadrift serve`` (:func:`hf_engine`) and the
benchmarks (:func:`engine_on`, :func:`hf_engine_for`) all build engines here, so an engine's identity
(weights, chat template, whether the system prompt is folded) is written in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from personadrift.errors import InputError


def sampling_from(config: dict):
    """The study's sampling (keys a rule's params do not carry keep their defaults: MMLU
    scores log-probabilities and never samples)."""
    from personadrift.generation.api import Sampling

    sc = config.get("selfchat", {})
    keys = ("temperature", "top_p", "top_k", "max_new_tokens", "min_new_tokens")
    return Sampling(**{k: sc[k] for k in keys if k in sc and k in Sampling.__dataclass_fields__})


def combined_intervention(settings: Sequence):
    """One engine intervention from the settings' own: their hooks together (split-softmax and
    guidance can run together in ``serve``; two hooks of one kind are an error)."""
    from personadrift.generation.api import Intervention

    return Intervention(tuple(h for st in settings for h in st.engine_intervention().hooks))


def hf_engine(model_dir: str | Path, model_config: dict, *, settings: Sequence = (), sampling=None,
              intervention=None, max_batch: int | None = None, progress: bool = False,
              threads: int | None = None, where: str = "config"):
    """An :class:`~personadrift.generation.engine.HFEngine` on a fetched model folder, with the
    engine intervention of ``settings`` (or ``intervention`` as given) and its identity.

    ``model_config``: the config's ``model`` section (``dtype``, ``fold_system_prompt``,
    ``max_batch``; the others are the fetch's).
    """
    import torch

    from personadrift.generation.models import load_model

    if threads:
        torch.set_num_threads(threads)
    lm = load_model(model_dir, model_config)
    return engine_on(lm.model, lm.tokenizer, model_config, model_identity=lm.identity, settings=settings,
                     sampling=sampling, intervention=intervention, max_batch=max_batch, progress=progress,
                     where=where)


def engine_on(model, tokenizer, model_config: dict | None = None, *, model_identity: dict | None = None,
              settings: Sequence = (), sampling=None, intervention=None, max_batch: int | None = None,
              progress: bool = False, where: str = "config"):
    """An HFEngine on a model already loaded (the benchmarks build several engines on one).

    A setting whose layers are past the model's depth, whose heads past its head count, or that
    needs what the tokenizer lacks, is an error here, at job start, before any generation;
    ``where`` is the file such an error names.
    """
    from personadrift.generation.api import Sampling
    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.engine import HFEngine
    from personadrift.interventions.base import EntryError

    model_config = model_config or {}
    for setting in settings:
        try:
            setting.impl.check_depth(setting, model.config.num_hidden_layers)
            setting.impl.check_heads(setting, model.config.get_text_config().num_attention_heads)
            setting.impl.check_tokenizer(setting, tokenizer)
        except EntryError as e:
            raise InputError(where, f"interventions.{setting.family}.{e.key}", e.problem) from None
    chat = ChatFormat(tokenizer, fold=model_config.get("fold_system_prompt"))
    identity = {**(model_identity or {}), "chat_template_sha256": chat.template_sha256,
                "system_prompt_folded": chat.fold}
    return HFEngine(model, tokenizer, chat=chat, sampling=sampling or Sampling(),
                    intervention=intervention if intervention is not None else combined_intervention(settings),
                    max_batch=max_batch or model_config.get("max_batch", 16), progress=progress,
                    identity=identity)


def make_engine(config: dict, model_dir: str | Path, setting=None, *, threads: int | None = None,
                backend: str | None = None):
    """The engine of ``setting`` on its backend (its own ``backend`` key, else the study's;
    ``backend`` overrides both): the backend builds it (runtime/backends/). A setting that needs
    what its backend cannot give is refused first, with the key to change."""
    from personadrift.runtime.backends import BACKENDS, backend_of

    chosen = BACKENDS[backend] if backend else backend_of(config, setting)
    chosen.refuse(setting)
    return chosen.engine(config, model_dir, setting, sampling=sampling_from(config), threads=threads)


def hf_engine_for(lm, config: dict, setting=None, *, progress: bool = True):
    """The HF engine of ``setting`` on a loaded model (``models.load_model``): the depth check,
    the chat format, sampling, intervention and ``model.max_batch`` of ``config``."""
    return engine_on(lm.model, lm.tokenizer, config["model"], model_identity=lm.identity,
                     settings=[setting] if setting is not None else [], sampling=sampling_from(config),
                     max_batch=config["model"]["max_batch"], progress=progress)


def model_identity(engine) -> dict:
    return getattr(engine, "identity", {})
