"""Split-softmax attention: identity at k=1, equals the eager reference, shares become pi^k, causal."""

from __future__ import annotations

import pytest
import torch

from personadrift.attention import attention_context, split_factors
from personadrift.attention.split_softmax import split_softmax_attention
from support.interventions import split_hook


def _batch(seed: int = 0, T: int = 40, vocab: int = 300):
    """3 rows: full, left padded, left padded with a masked hole in the middle."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, T), generator=g)
    am = torch.ones(3, T, dtype=torch.long)
    am[1, :5] = 0
    am[2, :3] = 0
    am[2, 20:23] = 0
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    pm = torch.zeros(3, T, dtype=torch.bool)
    pm[0, 0:8] = True
    pm[1, 5:15] = True
    pm[2, 3:10] = True
    return ids, am, pos, pm


def _logits(model, impl, ids, am, pos, **ctx):
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            if ctx:
                with attention_context(**ctx):
                    return model(input_ids=ids, attention_mask=am, position_ids=pos).logits
            return model(input_ids=ids, attention_mask=am, position_ids=pos).logits
    finally:
        model.set_attn_implementation("sdpa")


def test_k1_equals_sdpa_prefill(models):
    ids, am, pos, pm = _batch()
    for model in models:
        base = _logits(model, "sdpa", ids, am, pos)
        assert torch.allclose(_logits(model, "split_softmax", ids, am, pos), base, atol=1e-5, rtol=0)
        got = _logits(model, "split_softmax", ids, am, pos, prompt_mask=pm, reweight=split_hook(1.0))
        assert torch.allclose(got, base, atol=1e-5, rtol=0)


def _generate(model, impl, ids, am, n=6, **ctx):
    model.set_attn_implementation(impl)
    try:
        kw = dict(max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
        if ctx:
            with attention_context(**ctx):
                out = model.generate(input_ids=ids, attention_mask=am, **kw)
        else:
            out = model.generate(input_ids=ids, attention_mask=am, **kw)
        return out.sequences, torch.stack(out.logits, 1)
    finally:
        model.set_attn_implementation("sdpa")


def test_k1_equals_sdpa_generate(models):
    ids, am, _, pm = _batch(T=24)
    am[2, 20:23] = 1  # generate() derives positions from the mask; keep holes for prefill tests
    model = models[1]
    seq0, lg0 = _generate(model, "sdpa", ids, am)
    seq1, lg1 = _generate(model, "split_softmax", ids, am, prompt_mask=pm, reweight=split_hook(1.0))
    assert torch.equal(seq0, seq1)
    assert torch.allclose(lg0, lg1, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("layers", ["all", [0], range(1, 2)], ids=["all", "l0", "range1"])
def test_efficient_equals_reference(models, k, layers):
    ids, am, pos, pm = _batch()
    valid = am.bool()
    for model in models:
        eff = _logits(model, "split_softmax", ids, am, pos, prompt_mask=pm, reweight=split_hook(k, layers))
        ref = _logits(model, "split_softmax_eager", ids, am, pos, prompt_mask=pm, reweight=split_hook(k, layers))
        base = _logits(model, "sdpa", ids, am, pos)
        assert (eff - ref)[valid].abs().max() < 1e-5
        assert (eff - base)[valid].abs().max() > 1e-3  # the intervention does something


@pytest.mark.parametrize("shared_span", [False, True], ids=["per-row", "shared"])
def test_efficient_equals_reference_generate(models, shared_span):
    """KV-cached decoding (single-query path, prompt mask shorter than the cache)."""
    ids, am, _, pm = _batch(T=24)
    am[2, 20:23] = 1
    if shared_span:  # one contiguous span for all rows: the sliced fast path
        am[:] = 1
        pm[:] = False
        pm[:, 2:9] = True
    model = models[1]
    seq_e, lg_e = _generate(model, "split_softmax", ids, am, prompt_mask=pm, reweight=split_hook(0.5))
    seq_r, lg_r = _generate(model, "split_softmax_eager", ids, am, prompt_mask=pm, reweight=split_hook(0.5))
    assert torch.equal(seq_e, seq_r)
    assert torch.allclose(lg_e, lg_r, atol=1e-5, rtol=0)


def _weights(model, ids, am, pos, **ctx):
    model.set_attn_implementation("split_softmax_eager")
    try:
        with torch.no_grad(), attention_context(**ctx):
            out = model(input_ids=ids, attention_mask=am, position_ids=pos, output_attentions=True)
        return out.attentions
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("k", [0.25, 0.5])
def test_prompt_share_becomes_pi_to_the_k(models, k):
    ids, am, pos, pm = _batch()
    valid = am.bool()[:, None, :]  # [b, 1, q]
    model = models[1]
    plain = _weights(model, ids, am, pos, prompt_mask=pm, reweight=split_hook(1.0))
    fl = pm[:, None, None, :].float()
    last = len(plain) - 1
    # layer 0 under "all" and the last layer when only it is intervened see unchanged inputs
    for layers, li in (("all", 0), ([last], last)):
        after = _weights(model, ids, am, pos, prompt_mask=pm, reweight=split_hook(k, layers))
        pi = (plain[li] * fl).sum(-1)
        got = (after[li] * fl).sum(-1)
        assert torch.allclose(after[li].sum(-1)[valid.expand_as(pi)], torch.ones(()), atol=1e-5)
        assert (got - pi**k).abs()[valid.expand_as(pi)].max() < 1e-5
        assert (pi > 0.01).any() and (pi < 0.99).any()


def test_split_factors_stable():
    pi = torch.tensor([0.0, 1e-30, 1e-6, 0.3, 1 - 1e-7, 1.0])
    pik, r = split_factors(pi, 1 - pi, 0.5)
    assert torch.isfinite(pik).all() and torch.isfinite(r).all()
    assert ((r >= 0.5) & (r <= 1.0)).all()
    assert pik[0] == 0 and r[0] == 1 and pik[-1] == 1 and r[-1] == 0.5
    assert torch.allclose(pik[3], torch.tensor(0.3**0.5))
    # only-prompt-visible rows give out = O_p and rows with no prompt key stay untouched
    pik, r = split_factors(torch.tensor([1.0]), torch.tensor([0.0]), 0.25)
    assert pik == 1 and r == 0.25


def test_mask_registered_and_causal(models):
    """The function receives a real mask, and logits at t do not depend on tokens after t."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert "split_softmax" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    seen = []

    def spy(module, query, key, value, attention_mask, **kw):
        seen.append(attention_mask)
        return split_softmax_attention(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("split_softmax_spy", spy)
    from transformers.masking_utils import AttentionMaskInterface

    from personadrift.attention.split_softmax import sdpa_mask

    AttentionMaskInterface.register("split_softmax_spy", sdpa_mask)
    ids, am, pos, pm = _batch()
    model = models[1]
    a = _logits(model, "split_softmax_spy", ids, am, pos, prompt_mask=pm, reweight=split_hook(0.5))
    assert seen and all(m is not None for m in seen)  # padded batch: a materialised mask
    ids2 = ids.clone()
    ids2[:, 30:] = (ids2[:, 30:] + 7) % 300 + 3
    b = _logits(model, "split_softmax_spy", ids2, am, pos, prompt_mask=pm, reweight=split_hook(0.5))
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6) and not torch.allclose(a[:, 30:], b[:, 30:])
    # unpadded input: the mask may be None (SDPA's own causal flag) and must still be causal
    a1 = _logits(model, "split_softmax", ids[:1], None, None, prompt_mask=pm[:1], reweight=split_hook(0.5))
    b1 = _logits(model, "split_softmax", ids2[:1], None, None, prompt_mask=pm[:1], reweight=split_hook(0.5))
    assert torch.allclose(a1[:, :30], b1[:, :30], atol=1e-6)
    # negative control: without a registered mask the model passes None. Our function then
    # falls back to SDPA-style causal attention (it never goes non-causal), but padding and
    # holes are ignored, so padded rows come out wrong: the registration is required.
    AttentionInterface.register("split_softmax_nomask", split_softmax_attention)
    seen.clear()
    a2 = _logits(model, "split_softmax_nomask", ids, am, pos, prompt_mask=pm, reweight=split_hook(0.5))
    assert torch.allclose(a2[0], a[0], atol=1e-5)
    assert not torch.allclose(a2[1:][am[1:].bool()], a[1:][am[1:].bool()], atol=1e-3)


def test_softcap_not_implemented(models):
    q = torch.randn(1, 4, 3, 16)
    k = torch.randn(1, 2, 3, 16)
    with pytest.raises(NotImplementedError):
        split_softmax_attention(models[0].model.layers[0].self_attn, q, k, k, None, softcap=30.0)


def test_sliding_window_rows_without_prompt_untouched(models):
    """A window that hides the prompt keys leaves those rows exactly as plain attention."""
    from personadrift.attention.split_softmax import split_softmax_core

    g = torch.Generator().manual_seed(1)
    b, h, hk, T, d = 2, 4, 2, 30, 16
    q = torch.randn(b, h, T, d, generator=g) * 3
    k = torch.randn(b, hk, T, d, generator=g) * 3
    v = torch.randn(b, hk, T, d, generator=g)
    i = torch.arange(T)
    mask = ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 8))[None, None].expand(b, 1, T, T)
    flags = torch.zeros(b, T, dtype=torch.bool)
    flags[:, :5] = True
    idx = torch.arange(5).expand(b, 5)
    out = split_softmax_core(
        q, k, v, mask, prompt_flags=flags, prompt_idx=idx, prompt_valid=torch.ones(b, 5, dtype=torch.bool),
        reweight=split_hook(0.3), scale=d**-0.5,
    )
    plain = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask
    )
    assert torch.allclose(out[:, :, 12:], plain[:, :, 12:], atol=1e-5, rtol=0)  # rows >= 12 see no prompt key
    assert torch.allclose(out[:, :, :5], plain[:, :, :5], atol=1e-5, rtol=0)  # only prompt visible
    assert not torch.allclose(out[:, :, 5:12], plain[:, :, 5:12])


def test_sliding_window_cache_offsets():
    """A model whose sliding-window cache keeps only the last keys (Mistral, window 6): KV-cached
    split-softmax equals the reference recomputed without a cache, while the prompt leaves the window."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=6, max_position_embeddings=256,
    )
    model = MistralForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(5.0)
            layer.self_attn.k_proj.weight.mul_(5.0)
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    pm = torch.zeros(1, 12, dtype=torch.bool)
    pm[0, :4] = True
    from transformers import DynamicCache

    outs = {}
    for name, impl, cache in (
        ("counted", "split_softmax", True),
        ("from_cache", "split_softmax", DynamicCache(config=cfg)),
        ("reference", "split_softmax_eager", False),
    ):
        model.set_attn_implementation(impl)
        kw = {"past_key_values": cache, "use_cache": True} if not isinstance(cache, bool) else {"use_cache": cache}
        ctx_cache = cache if not isinstance(cache, bool) else None
        with torch.no_grad(), attention_context(pm, reweight=split_hook(0.5), cache=ctx_cache):
            g = model.generate(
                input_ids=ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                output_logits=True, return_dict_in_generate=True, **kw,
            )
        if cache is not False:
            assert type(g.past_key_values.layers[0]).__name__ == "DynamicSlidingWindowLayer"
        outs[name] = (g.sequences, torch.stack(g.logits))
    for name in ("counted", "from_cache"):
        assert torch.equal(outs[name][0], outs["reference"][0])
        assert torch.allclose(outs[name][1], outs["reference"][1], atol=1e-5, rtol=0)
