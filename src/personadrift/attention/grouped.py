"""Ordinary attention over grouped keys as they are, registered as ``"grouped_sdpa"``.

A grouped-query model (Llama-2-70B: 64 query heads over 8 KV heads; SmolLM2-135M: 9 over 3)
keeps one key and value head per group. transformers' ``sdpa`` forward repeats them for every
query head whenever a mask is passed and more than one query is asked (the engine's batches are
left-padded, so a mask is always passed): each prefill forward then copies the layer's whole KV
cache ``n_rep`` times. With a single query per row (decoding) transformers 5.23 already packs the
query heads per KV head instead (``pack_gqa``); :func:`plain_attention` hands such calls to it.

This name runs :func:`~personadrift.attention.split_softmax.plain_attention`, the attention of
the layers split-softmax leaves alone: one query per row packed per KV head; several queries
with the grouped keys passed to SDPA as they are (``enable_gqa``) where a fused kernel takes
them so, else repeated as before (``takes_grouped_keys``: CUDA's memory-efficient kernel never
takes them). The engine switches a grouped-query model from ``sdpa`` to this name
(:func:`use_grouped_keys`); the mask function is transformers' ``sdpa_mask``, as for ``sdpa``.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from personadrift.attention.split_softmax import plain_attention

NAME = "grouped_sdpa"


def query_groups(config) -> int:
    """Query heads per KV head of a transformers config (1: multi-head attention)."""
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    return heads // (getattr(config, "num_key_value_heads", None) or heads)


def use_grouped_keys(model) -> bool:
    """Switch ``model`` from ``sdpa`` to ``grouped_sdpa`` when it groups its query heads; True if
    it did. Any other attention (eager, split-softmax, batch-invariant) is left as it is."""
    if query_groups(model.config) > 1 and getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
        return True
    return False


AttentionInterface.register(NAME, plain_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # without it the model would pass no mask
