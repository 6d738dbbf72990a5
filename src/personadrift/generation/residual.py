"""Residual hooks on a Hugging Face model: forward hooks on the decoder layers a
:class:`~personadrift.generation.hooks.ResidualHook` names, acting on the rows the running batch
marks (:func:`residual_rows`).

PyTorch's forward hooks on the layer modules, not a patched model class: installed once per model
(:func:`install_residual_hook`), they do nothing outside a ``with residual_rows(...)`` block, so
the model's other users (a judge, the attention analysis) run it as it is.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from personadrift.generation.hooks import ResidualHook

_ROWS: contextvars.ContextVar[tuple[list[str | None], torch.Tensor] | None] = contextvars.ContextVar(
    "personadrift_residual_rows", default=None)


@contextmanager
def residual_rows(personas: list[str | None], active: torch.Tensor) -> Iterator[None]:
    """The rows of the enclosed forwards: their personas and which are intervened (bool [rows])."""
    token = _ROWS.set((personas, active))
    try:
        yield
    finally:
        _ROWS.reset(token)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's decoder layers (``model.model.layers`` for Llama-like models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers where a residual hook could act")
    return layers


def install_residual_hook(model, hook: ResidualHook) -> None:
    """Register ``hook`` on its layers of ``model`` (once: a second install replaces the first)."""
    layers = decoder_layers(model)
    past = [i for i in hook.layers if i >= len(layers)]
    if past:
        raise ValueError(f"residual hook on layer {past[0]}: the model has {len(layers)} layers")
    for handle in getattr(model, "_personadrift_residual_handles", []):
        handle.remove()
    weight = model.get_input_embeddings().weight
    hook.prepare(model.config.hidden_size, weight.device, weight.dtype)
    handles = []
    for i in hook.layers:
        handles.append(layers[i].register_forward_hook(_layer_hook(hook, i)))
    model._personadrift_residual_handles = handles


def _layer_hook(hook: ResidualHook, layer_idx: int):
    def run(module, args, output):
        rows = _ROWS.get()
        if rows is None:
            return None
        personas, active = rows
        hidden = output[0] if isinstance(output, tuple) else output
        edited = hook.edit(layer_idx, hidden, personas, active.to(hidden.device))
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    return run
