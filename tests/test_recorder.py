"""Prompt-share recorder: equals eager attention probabilities, leaves logits alone, small memory."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from personadrift.attention import (
    FIELDS,
    PromptShareRecorder,
    attention_context,
    record_prompt_share,
)
from personadrift.attention.recorder import default_position_ids
from support.interventions import split_hook

SCORES: list[torch.Tensor] = []


def _score_spy(module, query, key, value, attention_mask, scaling=None, **kw):
    """Eager attention that also keeps the masked scores (test-only, independent of the recorder)."""
    s = torch.matmul(query, repeat_kv(key, module.num_key_value_groups).transpose(2, 3)) * scaling
    s = s.masked_fill(attention_mask[..., : key.shape[2]] < -1, float("-inf"))
    SCORES.append(s)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kw)


AttentionInterface.register("test_score_spy", _score_spy)
AttentionMaskInterface.register("test_score_spy", eager_mask)


def _load(d, impl="sdpa"):
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation=impl).eval()
    return model, tok


def _dialog_batch(tok, system: bool, sys_text: str):
    """Two rows rendered by the chat template (system role, or system text folded into the first
    user message), left padded; the second row has a masked hole. Returns ids, mask, prompt span
    mask (explicit token ranges: the system text's tokens) and first-token mask."""
    turns = [("user", "What is your favourite food?"), ("assistant", "I like pizza."), ("user", "Why?")]
    rows, spans = [], []
    for extra in ("", " Tell me about your hobbies."):
        if system:
            msgs = [{"role": "system", "content": sys_text}] + [{"role": r, "content": c} for r, c in turns]
            head = tok.apply_chat_template(msgs[:1], tokenize=False)
        else:
            msgs = [{"role": "user", "content": sys_text + "\n\n" + turns[0][1] + extra}] + [
                {"role": r, "content": c} for r, c in turns[1:]
            ]
            head = "<|im_start|>user\n" + sys_text
        if system:
            msgs[1]["content"] += extra
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        n_head = len(tok(head, add_special_tokens=False).input_ids)
        rows.append(ids)
        spans.append(n_head)
    T = max(len(r) for r in rows) + 3
    ids = torch.full((2, T), tok.pad_token_id)
    am = torch.zeros(2, T, dtype=torch.long)
    pm = torch.zeros(2, T, dtype=torch.bool)
    fm = torch.zeros(2, T, dtype=torch.bool)
    for i, (r, n_head) in enumerate(zip(rows, spans)):
        if i == 1:  # a hole of 3 masked pad tokens after the prompt span
            r = r[:n_head] + [tok.pad_token_id] * 3 + r[n_head:]
        start = T - len(r)
        ids[i, start:] = torch.tensor(r)
        am[i, start:] = 1
        if i == 1:
            am[i, start + n_head : start + n_head + 3] = 0
        pm[i, start : start + n_head] = True
        fm[i, start] = True
    return ids, am, pm, fm


@pytest.fixture(scope="module", params=["chatml", "nosys"])
def pair(request, tiny_model_dir, tiny_nosys_model_dir):
    d = tiny_model_dir if request.param == "chatml" else tiny_nosys_model_dir
    model, tok = _load(d)
    with torch.no_grad():  # sharpen attention so that shares are far from uniform
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    spy, _ = _load(d, "test_score_spy")
    spy.load_state_dict(model.state_dict())
    return model, spy, tok, request.param == "chatml"


@pytest.mark.parametrize("sys_text", ["You love tennis.", "Always answer in French. Bonjour, je suis content."])
def test_recorder_equals_eager(pair, sys_text):
    model, spy, tok, system = pair
    ids, am, pm, fm = _dialog_batch(tok, system, sys_text)
    pos = default_position_ids(am)
    SCORES.clear()
    with torch.no_grad():
        eager = spy(input_ids=ids, attention_mask=am, position_ids=pos, output_attentions=True)
    rec = record_prompt_share(model, ids, am, pm, fm)
    L, h = model.config.num_hidden_layers, model.config.num_attention_heads
    assert rec.stats.shape == (L, 2, h, ids.shape[1], len(FIELDS))
    valid = am.bool()[:, None, :]  # [b, 1, q]
    vis = eager_mask_bool(am)
    for li, (w, s) in enumerate(zip(eager.attentions, SCORES)):
        v = valid.expand(-1, h, -1)
        share = (w * pm[:, None, None, :]).sum(-1)
        first = (w * fm[:, None, None, :]).sum(-1)
        lsp = torch.logsumexp(s.masked_fill(~pm[:, None, None, :], float("-inf")), -1)
        lso = torch.logsumexp(s.masked_fill(pm[:, None, None, :], float("-inf")), -1)
        n_o = (vis & ~pm[:, None, None, :]).sum(-1).expand(-1, h, -1).float()
        got = rec.stats[li]
        assert (got[..., 0] - share)[v].abs().max() < 1e-5
        assert (got[..., 1] - first)[v].abs().max() < 1e-5
        assert (got[..., 2] - lsp)[v].abs().max() < 1e-4
        fin = v & torch.isfinite(lso)
        assert (got[..., 3] - lso)[fin].abs().max() < 1e-4
        assert torch.equal(got[..., 4][v], n_o[v])
        assert (share[v] > 0.05).any() and (share[v] < 0.95).any()
    # first_mask=None: the first visible key of each row is the sink
    rec2 = record_prompt_share(model, ids, am, pm)
    assert (rec2.first_share - rec.first_share)[valid[None].expand(L, -1, h, -1)].abs().max() < 1e-6


def eager_mask_bool(am: torch.Tensor) -> torch.Tensor:
    """[b, 1, T, T] visibility: causal, key not padding."""
    T = am.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal[None, None] & am.bool()[:, None, None, :]


def test_logits_identical_with_recorder(pair):
    model, _, tok, system = pair
    ids, am, pm, fm = _dialog_batch(tok, system, "You love tennis.")
    pos = default_position_ids(am)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=am, position_ids=pos, logits_to_keep=1).logits
    rec = record_prompt_share(model, ids, am, pm, fm)
    assert torch.equal(rec.logits, plain)
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("k", [0.3, 0.7])
def test_recorder_with_split_k(pair, k):
    model, _, tok, system = pair
    ids, am, pm, fm = _dialog_batch(tok, system, "You love tennis.")
    pos = default_position_ids(am)
    h = model.config.num_attention_heads
    v = am.bool()[:, None, :].expand(-1, h, -1)
    plain = record_prompt_share(model, ids, am, pm, fm)
    rec = record_prompt_share(model, ids, am, pm, fm, reweight=split_hook(k))
    # layer 0 sees the same inputs: its share is pi^k, the raw log-weights are unchanged
    assert (rec.prompt_share[0] - plain.prompt_share[0] ** k)[v].abs().max() < 1e-5
    assert (rec.log_S_prompt[0] - plain.log_S_prompt[0])[v].abs().max() < 1e-5
    # every layer agrees with the eager reference's post-intervention weights
    model.set_attn_implementation("split_softmax_eager")
    try:
        with torch.no_grad(), attention_context(pm, reweight=split_hook(k)):
            out = model(input_ids=ids, attention_mask=am, position_ids=pos, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    for li, w in enumerate(out.attentions):
        assert (rec.prompt_share[li] - (w * pm[:, None, None, :]).sum(-1))[v].abs().max() < 1e-5
        assert (rec.first_share[li] - (w * fm[:, None, None, :]).sum(-1))[v].abs().max() < 1e-5
    # only the chosen layers are intervened
    rec1 = record_prompt_share(model, ids, am, pm, fm, reweight=split_hook(k, [1]))
    assert (rec1.prompt_share[0] - plain.prompt_share[0])[v].abs().max() < 1e-6
    assert (rec1.prompt_share[1] - plain.prompt_share[1] ** k)[v].abs().max() < 1e-5


def test_recorder_streams_through_kv_cached_decoding(pair):
    """Recording during generate() equals one teacher-forced pass over the generated sequence."""
    model, _, tok, system = pair
    ids, am, pm, fm = _dialog_batch(tok, system, "You love tennis.")
    T = ids.shape[1]
    am[1] = (am[1].cumsum(0) > 0).long()  # generate() derives positions from the mask: no hole here
    rec = PromptShareRecorder()
    model.set_attn_implementation("prompt_share")
    try:
        with torch.no_grad(), attention_context(pm, first_mask=fm, recorder=rec):
            seq = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    finally:
        model.set_attn_implementation("sdpa")
    streamed = rec.result()
    n = seq.shape[1] - 1  # the last generated token is never fed back
    assert streamed.shape[3] == n
    full_am = torch.cat([am, torch.ones(2, seq.shape[1] - T, dtype=am.dtype)], 1)[:, :n]
    once = record_prompt_share(model, seq[:, :n], full_am, pm, fm)
    h = model.config.num_attention_heads
    v = full_am.bool()[None, :, None, :].expand(streamed.shape[0], -1, h, -1)
    for f in (0, 1, 4):
        assert (streamed[..., f] - once.stats[..., f])[v].abs().max() < 1e-5
    for f in (2, 3):
        a, b = streamed[..., f][v], once.stats[..., f][v]
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        assert (a - b)[torch.isfinite(a)].abs().max() < 1e-4
    rec.reset()
    with pytest.raises(RuntimeError):
        rec.result()


def test_memory_kept_is_linear_in_tokens(tiny_model_dir):
    """At T=2048 the recorder keeps layers*batch*heads*T*5 floats; output_attentions keeps T^2."""
    model, _ = _load(tiny_model_dir)
    T = 2048
    ids = torch.randint(3, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    am = torch.ones(1, T, dtype=torch.long)
    pm = torch.zeros(1, T, dtype=torch.bool)
    pm[0, :40] = True
    L, h = model.config.num_hidden_layers, model.config.num_attention_heads
    rec = PromptShareRecorder(chunk_elements=1 << 20)
    model.set_attn_implementation("prompt_share")
    try:
        with torch.no_grad(), attention_context(pm, recorder=rec):
            model(input_ids=ids, attention_mask=am, logits_to_keep=1)
    finally:
        model.set_attn_implementation("sdpa")
    stats = rec.result()
    assert stats.shape == (L, 1, h, T, 5)
    kept = rec.nbytes()
    assert kept == L * 1 * h * T * 5 * 4
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=am, output_attentions=True, logits_to_keep=1)
    finally:
        model.set_attn_implementation("sdpa")
    eager_kept = sum(a.numel() * a.element_size() for a in out.attentions)
    assert eager_kept == L * h * T * T * 4
    assert kept * 100 < eager_kept  # T / 5 = 409x smaller here
    # the transient per-layer buffer is bounded by chunk_elements, not T^2
    assert (1 << 20) < h * T * T
    # sanity: the shares are probabilities and the prompt is the first 40 tokens
    assert ((stats[..., 0] >= 0) & (stats[..., 0] <= 1 + 1e-6)).all()
    assert torch.allclose(stats[..., 0, :40, 0], torch.ones(()))
