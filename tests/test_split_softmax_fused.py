"""Split-softmax's prefill on a fused SDPA kernel: its head width padded to a multiple of 8 with
zeros (scores and outputs unchanged), and grouped keys passed to SDPA as they are (no repeat)
wherever torch runs them so on a fused kernel."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from personadrift.attention import attention_context
from personadrift.attention import split_softmax as ss
from personadrift.attention.reference import split_softmax_reference
from support.interventions import split_hook


def _inputs(d, *, b=2, h=4, hk=2, q_len=24, kv=40, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, q_len, d, generator=g, dtype=dtype)
    k = torch.randn(b, hk, kv, d, generator=g, dtype=dtype)
    v = torch.randn(b, hk, kv, d, generator=g, dtype=dtype)
    flags = torch.zeros(b, kv, dtype=torch.bool)
    flags[:, 3:11] = True
    idx = torch.arange(3, 11).expand(b, 8)
    # a left-padded row and a re-used prefix's hole: a mask, as a batch of dialog turns passes it
    vis = torch.arange(kv)[None, :] <= torch.arange(kv - q_len, kv)[:, None]
    mask = vis[None, None].expand(b, 1, q_len, kv).clone()
    mask[1, :, :, :2] = False
    mask[1, :, :, 12:14] = False
    return q, k, v, flags, idx, mask


def _core(q, k, v, flags, idx, mask, scale):
    return ss.split_softmax_core(q, k, v, mask, prompt_flags=flags, prompt_idx=idx,
                                 prompt_valid=torch.ones_like(idx, dtype=torch.bool), reweight=split_hook(0.5), scale=scale)


class SdpaCalls:
    """Records the shapes and GQA flag of every ``scaled_dot_product_attention`` call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = F.scaled_dot_product_attention

        def spy(q, k, v, *args, **kwargs):
            self.calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), kwargs.get("enable_gqa", False)))
            return real(q, k, v, *args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)


@pytest.mark.parametrize("d, padded", [(64, 72), (128, 136), (19, 24), (80, 88), (6, 8)])
def test_the_fused_width_is_a_multiple_of_8_holding_values_and_both_indicators(d, padded):
    assert ss.fused_width(d, d) == padded
    assert padded % 8 == 0 and padded >= max(d, d + 2)
    assert ss.fused_width(64, 32) == 64  # wide queries: the values' channels fit in their width


@pytest.mark.parametrize("d", [64, 128, 19])
@pytest.mark.parametrize("masked", [True, False])
def test_padded_prefill_equals_the_unpadded_one_and_the_float64_reference(monkeypatch, d, masked):
    q, k, v, flags, idx, mask = _inputs(d)
    if not masked:  # SDPA's own causal handling (a first prefill: queries are the keys)
        mask = None
        k, v = k[:, :, : q.shape[2]], v[:, :, : q.shape[2]]
        flags = flags[:, : q.shape[2]]
    scale = d**-0.5
    calls = SdpaCalls(monkeypatch)
    out = _core(q, k, v, flags, idx, mask, scale)
    fused = [c for c in calls.calls if c[0][-1] != d]  # the augmented call (the prompt part is matmuls)
    assert len(fused) == 1 and all(s[-1] == ss.fused_width(d, d) for s in fused[0][:3])

    monkeypatch.setattr(ss, "fused_width", lambda d, dv: max(d, dv + 2))  # unpadded: 66, 130, 21
    unpadded = _core(q, k, v, flags, idx, mask, scale)
    assert torch.allclose(out, unpadded, rtol=0, atol=1e-6)

    ref, _ = split_softmax_reference(q.double(), k.double(), v.double(), mask, prompt_flags=flags, k=0.5, scale=scale)
    assert float((out.double() - ref).abs().max()) < 1e-5


def test_padded_prefill_in_bfloat16_stays_at_the_float64_reference():
    q, k, v, flags, idx, mask = _inputs(128, dtype=torch.bfloat16)
    out = _core(q, k, v, flags, idx, mask, 128**-0.5)
    ref, _ = split_softmax_reference(q.double(), k.double(), v.double(), mask, prompt_flags=flags, k=0.5,
                                     scale=128**-0.5)
    assert out.dtype == torch.bfloat16
    assert float((out.double() - ref).abs().max()) < 4 * 2.0**-8 * float(ref.abs().max())


class RepeatedHeads(TorchDispatchMode):
    """Records every operation whose output holds grouped keys or values repeated to the query
    heads (what ``repeat_kv``, or SDPA's math kernel, builds): a tensor [b, heads, ...] or
    [b, kv heads, n_rep, ...] of ``widths`` whose consecutive heads of a group are equal and not
    zero (random queries never have two equal heads), over more than ``prompt`` positions (the
    prompt part's few values are broadcast over a group by its matmul: not a repeat of the keys)."""

    def __init__(self, heads, n_rep, widths, prompt):
        super().__init__()
        self.heads, self.n_rep, self.widths, self.prompt = heads, n_rep, set(widths), prompt
        self.seen = []

    def _repeated(self, t):
        if not isinstance(t, torch.Tensor) or t.dim() < 4 or not t.is_floating_point():
            return False
        if t.shape[-1] not in self.widths or t.shape[-2] <= self.prompt:
            return False
        if t.dim() == 4 and t.shape[1] == self.heads:
            a, b = t[:, 0], t[:, 1]
        elif t.dim() == 5 and t.shape[2] == self.n_rep:
            a, b = t[:, :, 0], t[:, :, 1]
        else:
            return False
        return bool(a.abs().sum() > 0) and torch.equal(a, b)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(self._repeated(t) for t in (out if isinstance(out, (tuple, list)) else [out])):
            self.seen.append(func)
        return out


@pytest.mark.parametrize("masked", [True, False])
def test_grouped_keys_reach_sdpa_without_a_repeat(monkeypatch, masked):
    b, h, hk, q_len, kv, d = 2, 4, 2, 24, 40, 64
    q, k, v, flags, idx, mask = _inputs(d, b=b, h=h, hk=hk, q_len=q_len, kv=kv)
    if not masked:
        mask = None
        k, v, flags = k[:, :, :q_len], v[:, :, :q_len], flags[:, :q_len]
    widths = (d, ss.fused_width(d, d))
    calls = SdpaCalls(monkeypatch)
    with RepeatedHeads(h, h // hk, widths, idx.shape[1]) as mode:
        out = _core(q, k, v, flags, idx, mask, d**-0.5)
    assert mode.seen == []
    assert [c[1][1] for c in calls.calls] == [hk] and calls.calls[0][3] is True

    # forcing the repeat (what a masked call does where no fused kernel takes grouped keys)
    monkeypatch.setattr(ss, "takes_grouped_keys", lambda *a, **kw: False)
    with RepeatedHeads(h, h // hk, widths, idx.shape[1]) as mode:
        repeated_out = _core(q, k, v, flags, idx, mask, d**-0.5)
    assert mode.seen  # the check sees a repeat when there is one
    assert torch.allclose(out, repeated_out, rtol=0, atol=1e-6)


def test_grouped_keys_follow_torchs_kernel_choice():
    """Only the math kernel allowed: torch would repeat the keys itself, so they are repeated
    before the call; the result is the same either way."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, flags, idx, mask = _inputs(64)
    assert ss.takes_grouped_keys(q, k, v, mask, False)  # the CPU's flash kernel takes them, mask or not
    with sdpa_kernel([SDPBackend.MATH]):
        assert not ss.takes_grouped_keys(q, k, v, mask, False)
        via_math = _core(q, k, v, flags, idx, mask, 64**-0.5)
    assert torch.allclose(via_math, _core(q, k, v, flags, idx, mask, 64**-0.5), rtol=0, atol=1e-5)


def _batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    ids, am = enc["input_ids"], enc["attention_mask"]
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    pm = torch.zeros_like(ids, dtype=torch.bool)
    for i in range(len(texts)):
        first = int((am[i] == 0).sum())
        pm[i, first : first + 4] = True
    return ids, am, pos, pm


@pytest.mark.parametrize("impl, split", [("sdpa_grouped", None), ("split_softmax", None), ("split_softmax", 0.5),
                                         ("batch_invariant", None), ("batch_invariant", 0.5)])
def test_a_gqa_model_gives_the_outputs_it_gives_with_repeated_keys(tiny_model, monkeypatch, impl, split):
    """The tiny model (4 query heads, 2 KV heads) on a left-padded batch, prefilled and then
    extended over its cache (masked calls in every implementation): ordinary attention,
    split-softmax and the batch-invariant wrapper give the same logits with grouped keys passed as
    they are as with ``repeat_kv``, and no key is repeated on the way."""
    from personadrift.attention import invariant  # noqa: F401  (registers batch_invariant)

    model, tok = tiny_model
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    ids, am, pos, pm = _batch(tok, ["You love tennis. What is your hobby?", "Hi! How are you doing today?", "You are a pirate. Hello there"])
    name = "split_softmax" if impl == "sdpa_grouped" else impl  # outside a context: ordinary attention

    cut = ids.shape[1] - 3  # a prefilled prefix, then 3 new tokens over its cache (a dialog turn)

    def logits():
        from transformers import DynamicCache

        model.set_attn_implementation(name)
        cache = DynamicCache(config=cfg)
        try:
            with torch.no_grad(), attention_context(pm, reweight=split and split_hook(split)) if impl != "sdpa_grouped" else nullcontext():
                first = model(input_ids=ids[:, :cut], attention_mask=am[:, :cut], position_ids=pos[:, :cut],
                              past_key_values=cache, use_cache=True).logits
                rest = model(input_ids=ids[:, cut:], attention_mask=am, position_ids=pos[:, cut:],
                             past_key_values=cache, use_cache=True).logits
                return torch.cat([first, rest], 1)
        finally:
            model.set_attn_implementation("sdpa")

    heads, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads
    widths = (head_dim, ss.fused_width(head_dim, head_dim))
    with RepeatedHeads(heads, heads // kvh, widths, 4) as mode:
        grouped = logits()
    assert mode.seen == []
    monkeypatch.setattr(ss, "takes_grouped_keys", lambda *a, **kw: False)
    with RepeatedHeads(heads, heads // kvh, widths, 4) as mode:
        repeated = logits()
    assert mode.seen  # the check sees the repeat when there is one
    real = am.bool()
    assert torch.allclose(grouped[real], repeated[real], rtol=0, atol=1e-5)
