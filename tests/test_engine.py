"""The batched, cache-reusing engine on a real (tiny) model forward pass."""

import pytest
import torch

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]


def convo(i):
    return [{"role": "system", "content": SYSTEMS[i % 3]}, {"role": "user", "content": "What is your hobby?" + " really" * i}]


def engine(tiny_model, **kw):
    model, tok = tiny_model
    return HFEngine(model, tok, **kw)


@pytest.mark.parametrize("sampling", [Sampling(do_sample=False, max_new_tokens=10), Sampling(max_new_tokens=10)])
def test_batched_equals_one_at_a_time(tiny_model, sampling):
    reqs = [GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(4)]
    batched = engine(tiny_model, sampling=sampling).generate(reqs)
    single = [engine(tiny_model, sampling=sampling).generate([r])[0] for r in reqs]
    assert batched == single


def test_reply_depends_only_on_its_seed_not_on_batch_mates(tiny_model):
    r = GenRequest(convo(1), seed=7)
    alone = engine(tiny_model).generate([r])[0]
    with_others = engine(tiny_model).generate([GenRequest(convo(0), seed=1), r, GenRequest(convo(2), seed=2)])[1]
    assert alone == with_others
    other_seed = engine(tiny_model).generate([GenRequest(convo(1), seed=8, n=1)])[0]
    assert other_seed != alone


def test_second_turn_reuses_the_cache_and_matches_a_fresh_encoding(tiny_model):
    eng = engine(tiny_model, sampling=Sampling(max_new_tokens=8))
    reqs = [GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(3)]
    first = eng.generate(reqs)
    encoded_before = eng.stats.prompt_tokens
    follow = [
        GenRequest(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "Tell me more."}], seed=9, key=r.key)
        for r, t in zip(reqs, first)
    ]
    second = eng.generate(follow)
    new_tokens = eng.stats.prompt_tokens - encoded_before
    full = sum(len(eng.chat.render(r.messages).ids) for r in follow)
    assert eng.stats.reused_tokens > 0 and new_tokens < full / 2  # only the new turn is encoded
    fresh = engine(tiny_model, sampling=Sampling(max_new_tokens=8)).generate(follow)
    assert second == fresh


def test_probe_forks_do_not_change_the_dialog(tiny_model):
    s = Sampling(max_new_tokens=8)
    a, b = engine(tiny_model, sampling=s), engine(tiny_model, sampling=s)
    reqs = [GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(2)]
    ra, rb = a.generate(reqs), b.generate(reqs)
    probes = [GenRequest(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "PROBE?"}],
                         seed=3, key=r.key, n=3, persist=False) for r, t in zip(reqs, ra)]
    answers = a.generate(probes)
    assert all(len(x) == 3 for x in answers)
    nxt = [GenRequest(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "next"}], seed=4, key=r.key)
           for r, t in zip(reqs, ra)]
    assert a.generate(nxt) == b.generate(nxt)  # b never saw the probes


def test_samples_of_one_request_differ_and_persisting_many_is_refused(tiny_model):
    out = engine(tiny_model).generate([GenRequest(convo(0), seed=1, n=4, persist=False)])[0]
    assert len(out) == 4 and len(set(out)) > 1
    with pytest.raises(ValueError):
        engine(tiny_model).generate([GenRequest(convo(0), seed=1, n=2, key="k", persist=True)])


def test_guidance_scale_one_equals_plain_generation(tiny_model):
    msgs = convo(1)
    neg = msgs[1:]
    plain = engine(tiny_model).generate([GenRequest(msgs, seed=5)])
    guided = engine(tiny_model, intervention=Intervention(guidance_scale=1.0)).generate(
        [GenRequest(msgs, seed=5, intervene=True, negative_messages=neg)])
    assert plain == guided
    strong = engine(tiny_model, intervention=Intervention(guidance_scale=3.0)).generate(
        [GenRequest(msgs, seed=5, intervene=True, negative_messages=neg)])
    assert strong != plain


def test_next_token_logprobs_match_a_plain_forward(tiny_model):
    model, tok = tiny_model
    eng = engine(tiny_model)
    reqs = [GenRequest(convo(i), seed=0) for i in range(3)]
    lp = eng.next_token_logprobs(reqs)
    for i, r in enumerate(reqs):
        ids = torch.tensor([eng.chat.render(r.messages).ids])
        ref = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        assert torch.allclose(lp[i], ref, atol=1e-4)


def test_nucleus_matches_transformers_top_p_and_falls_back_exactly():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from personadrift.generation import engine as E

    g = torch.Generator().manual_seed(0)
    for spread in (0.5, 3.0, 0.01):  # peaked, typical, nearly flat (forces the full sort)
        scores = torch.randn(4, 3000, generator=g) * spread
        for temp, top_p in ((1.0, 0.9), (0.7, 0.5)):
            cand, probs = E.nucleus(scores, temp, top_p)
            ours = torch.zeros_like(scores).scatter_(1, cand, probs)
            ref = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temp)(None, scores.clone()))
            ref = torch.softmax(ref, dim=-1)
            assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("intervention", [Intervention(split_k=0.5), Intervention(split_k=0.25, split_layers=[0]),
                                          Intervention(guidance_scale=2.0)])
def test_interventions_keep_batched_equal_to_unbatched(tiny_model, intervention):
    s = Sampling(do_sample=False, max_new_tokens=8)

    def req(i):
        msgs = convo(i)
        return GenRequest(msgs, seed=i, key=f"c{i}", intervene=True, negative_messages=msgs[1:])

    batched = engine(tiny_model, sampling=s, intervention=intervention).generate([req(i) for i in range(3)])
    single = [engine(tiny_model, sampling=s, intervention=intervention).generate([req(i)])[0] for i in range(3)]
    assert batched == single


def test_complete_reports_prompt_length_new_tokens_and_finish_reason(tiny_model):
    """``complete`` returns what ``generate`` returns, plus counts a reader can check."""
    eng = engine(tiny_model, sampling=Sampling(max_new_tokens=6))
    reqs = [GenRequest(convo(i), seed=i, key=f"c{i}", n=1, persist=False) for i in range(3)]
    comps = eng.complete(reqs)
    texts = engine(tiny_model, sampling=Sampling(max_new_tokens=6)).generate(reqs)
    assert [[c.text for c in per] for per in comps] == texts
    for r, per in zip(reqs, comps):
        c = per[0]
        assert c.prompt_tokens == len(eng.chat.render(r.messages).ids)
        assert 0 <= c.new_tokens <= 6
        assert c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "length") == (c.new_tokens == 6)
    assert eng.max_context == tiny_model[0].config.max_position_embeddings
