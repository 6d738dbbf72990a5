"""A tiny, randomly initialised Llama model with a real tokenizer, built locally.

Tests, benchmarks and smoke workflows use it: no download, loads in well under a second,
and it exercises exactly the code paths of a real chat model (chat template, KV cache,
attention dispatch, GQA). Its text is gibberish by design.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Like Gemma's template: no system role at all (it raises), so the system prompt must be folded.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-2-chat's prompt format, written for this project from the format's public description:
# ``<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]``.
# Like the official template it accepts a system message only first, and raises unless the rest
# alternates user/assistant starting with user; there is no generation prompt to add.
LLAMA2_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] not in ['user', 'assistant'] or (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set text = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + m['content'] -%}"
    "{%- else -%}{%- set text = m['content'] -%}{%- endif -%}"
    "{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}"
    "{%- else -%}"
    "{{ ' ' + m['content'] | trim + ' ' + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# The templates a tiny model can carry (config ``model.tiny_template``).
TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE, "no_system": NO_SYSTEM_TEMPLATE}

_CORPUS = [
    "You love playing tennis and talk about it whenever you can.",
    "Always answer in French. Bonjour, je suis content de parler avec vous.",
    "What is your favourite food? I think pizza is the best food in the world.",
    "Tell me about your hobbies. I like reading books, hiking and painting.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
    "Do you prefer cats or dogs? Why? Cats are calm; dogs are loyal friends!",
]
# Multiple-choice answers as a reply after a space (Llama-2-chat's "[/INST] A"): repeated so the
# tokenizer learns " A".." D" as single tokens, as real tokenizers have them (MMLU letter scoring).
_ANSWERS = ["The answer is A. The answer is B. The answer is C. The answer is D."] * 6


def build_tiny_model(
    out_dir: str | Path,
    *,
    template: str = CHATML_TEMPLATE,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 512,
    seed: int = 0,
    max_positions: int = 4096,
) -> Path:
    """Write a tiny Llama chat model (tokenizer + safetensors) to ``out_dir`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, bos, eos
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + _ANSWERS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = template
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    return out
