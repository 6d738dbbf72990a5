"""A plain Hugging Face reference for MMLU's letter form (tests compare the engine's scorer
with it): one left-padded forward per batch, no engine, no prefix cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from personadrift.capability.mmlu.scoring import letter_token_ids


def render_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation through the tokenizer's own chat template, with the generation prompt."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template writes any BOS itself, so the tokenizer must not add one again.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def hf_letter_logprobs(
    model,
    tokenizer,
    *,
    chat_render: Callable[[list[dict]], list[int]] | None = None,
    letter_ids: Sequence[int] | None = None,
) -> Callable:
    """A plain Hugging Face ``letter_logprobs`` for ``evaluate``.

    Renders each conversation with ``chat_render`` (default: the tokenizer's chat template
    with the generation prompt, no extra special tokens), left-pads the batch (attention
    mask plus matching position ids, so padding changes nothing), runs one forward with
    ``logits_to_keep=1``, takes ``log_softmax`` over the whole vocabulary in float32 and
    gathers the ids of A..D (``letter_token_ids`` unless ``letter_ids`` is given).
    Returns a float32 CPU tensor ``[batch, 4]``.
    """
    import torch

    render = chat_render or (lambda messages: render_ids(tokenizer, messages))
    ids_ad = torch.tensor(list(letter_ids) if letter_ids is not None else letter_token_ids(tokenizer))
    if ids_ad.shape != (4,):
        raise ValueError(f"letter_ids must be 4 token ids, got {ids_ad.tolist()}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def letter_logprobs(batch: list[list[dict]]) -> torch.Tensor:
        seqs = [list(render(messages)) for messages in batch]
        if not seqs:
            return torch.empty(0, 4)
        if any(len(s) == 0 for s in seqs):
            raise ValueError("a conversation rendered to zero tokens")
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            attention[i, width - len(s):] = 1
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                logits_to_keep=1,
                use_cache=False,
            )
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            return logp[:, ids_ad.to(device)].cpu()

    return letter_logprobs
