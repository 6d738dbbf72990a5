"""Grouped-query attention without repeated keys: the engine's default attention (``sdpa``
switched to ``grouped_sdpa``) and split-softmax, on a tiny model with 4 query heads per KV head
and on the embedded model (SmolLM2-135M: 9 query heads over 3 KV heads).

Every forward pass is real; the only wrapper counts calls of transformers' ``repeat_kv`` (the
copy of a layer's keys per query head) and passes them through. Outputs are checked against
eager attention (which repeats the keys and forms every score explicitly)."""

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa

import personadrift.attention.split_softmax as ss
from personadrift.attention.grouped import NAME, query_groups
from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from personadrift.generation.tiny import build_tiny_model
from support.interventions import split

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]


def convo(i, extra=""):
    return [{"role": "system", "content": SYSTEMS[i % 3]},
            {"role": "user", "content": "What is your hobby?" + " really" * (3 * i) + extra}]


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gqa4"), layers=2, hidden=64, heads=8, kv_heads=2, seed=3)


def load(folder, impl):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=impl).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.fixture
def repeats(monkeypatch):
    """Calls of ``repeat_kv`` with more than one query head per KV head, counted."""
    calls = []
    original = hf_sdpa.repeat_kv

    def counted(hidden, n_rep):
        if n_rep > 1:
            calls.append(tuple(hidden.shape))
        return original(hidden, n_rep)

    monkeypatch.setattr(hf_sdpa, "repeat_kv", counted)
    monkeypatch.setattr(ss, "repeat_kv", counted)
    return calls


def dialog(eng, n=4, tokens=6):
    """A first turn, then a second one re-using each conversation's stored prefix (a masked
    prefill after a cached prefix), both decoded step by step."""
    first = [GenRequest(convo(i), seed=i, key=f"c{i}", intervene=True) for i in range(n)]
    out = eng.generate(first, max_new_tokens=tokens)
    nxt = [GenRequest(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "More?"}],
                      seed=10 + i, key=f"c{i}", intervene=True) for i, (r, t) in enumerate(zip(first, out))]
    return out + eng.generate(nxt, max_new_tokens=tokens)


def scores(eng, tok, n=4):
    reqs = [GenRequest(convo(i), seed=0, intervene=True) for i in range(n)]
    conts = [tok.encode(" tennis is fun"), tok.encode(" A"), tok.encode(" the pizza"), tok.encode(" no")][:n]
    return eng.next_token_logprobs(reqs).double(), eng.continuation_logprobs(reqs, conts)


def test_the_engine_switches_grouped_query_models_only(gqa_dir, tiny_model_dir):
    model, tok = load(gqa_dir, "sdpa")
    HFEngine(model, tok)
    assert model.config._attn_implementation == NAME and query_groups(model.config) == 4
    eager, _ = load(gqa_dir, "eager")
    HFEngine(eager, tok)
    assert eager.config._attn_implementation == "eager"  # chosen by the user: left alone
    hooked, _ = load(gqa_dir, "sdpa")
    HFEngine(hooked, tok, intervention=split(0.5))
    assert hooked.config._attn_implementation == "split_softmax"


@pytest.mark.parametrize("intervention", [Intervention(), split(0.5)], ids=["default", "split"])
def test_grouped_decode_never_repeats_keys_and_matches_eager(gqa_dir, repeats, intervention):
    s = Sampling(max_new_tokens=6, do_sample=False)
    model, tok = load(gqa_dir, "sdpa")
    eng = HFEngine(model, tok, sampling=s, intervention=intervention)
    repeats.clear()
    got = dialog(eng)
    got_scores = scores(eng, tok)
    assert repeats == []  # prefill after a cached prefix, decode and scoring: no key was repeated
    assert eng.stats.reused_tokens > 0 and eng.stats.generated_tokens > 0
    ref_model, _ = load(gqa_dir, "eager")
    ref = HFEngine(ref_model, tok, sampling=s, intervention=intervention)
    if intervention.hook("attention") is not None:  # split-softmax's eager float64 reference
        ref_model.set_attn_implementation("split_softmax_eager")
    assert ref_model.config._attn_implementation in ("eager", "split_softmax_eager")
    repeats.clear()
    assert got == dialog(ref)
    for g, e in zip(got_scores, scores(ref, tok)):
        torch.testing.assert_close(g, e.double(), atol=1e-4, rtol=1e-4)


def test_sampled_texts_equal_the_repeating_path(gqa_dir):
    s = Sampling(max_new_tokens=8)
    model, tok = load(gqa_dir, "sdpa")
    eng = HFEngine(model, tok, sampling=s)
    new = dialog(eng, tokens=8)
    model.set_attn_implementation("sdpa")  # transformers' own: repeats the keys of a masked prefill
    eng.forget()
    assert dialog(eng, tokens=8) == new


def test_the_embedded_model_decodes_grouped_keys_as_eager_does(embedded_model, repeats):
    model, tok = embedded_model
    before = model.config._attn_implementation
    assert query_groups(model.config) == 3
    s = Sampling(max_new_tokens=5, do_sample=False)
    try:
        model.set_attn_implementation("sdpa")
        eng = HFEngine(model, tok, sampling=s)
        assert model.config._attn_implementation == NAME
        repeats.clear()
        got, got_scores = dialog(eng, n=3, tokens=5), scores(eng, tok, n=3)
        assert repeats == []
        model.set_attn_implementation("eager")
        ref = HFEngine(model, tok, sampling=s)
        want, want_scores = dialog(ref, n=3, tokens=5), scores(ref, tok, n=3)
    finally:
        model.set_attn_implementation(before)
    assert got == want
    for g, e in zip(got_scores, want_scores):
        torch.testing.assert_close(g, e.double(), atol=2e-3, rtol=1e-3)
