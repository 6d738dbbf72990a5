"""The real embedded model (SmolLM2-135M-Instruct from its PyPI wheel): a few real turns."""

import pytest
import torch

from personadrift.attention.context import attention_context
from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.chat import ChatFormat
from personadrift.generation.dialog import agent_messages, user_messages
from personadrift.generation.engine import HFEngine
from support.interventions import guided, split_hook

pytestmark = pytest.mark.slow

TENNIS = "You love playing tennis and talk about it whenever you can."
FOOD = "You are a chef who loves talking about food and recipes."


def test_a_few_real_turns_follow_the_persona_and_reuse_the_cache(embedded_model):
    model, tok = embedded_model
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=24))
    hist = ["What do you think about remote work?"]
    for turn in range(2):
        a = eng.generate([GenRequest(agent_messages(TENNIS, hist), seed=turn, key="agent")])[0][0]
        assert a.strip(), "empty reply"
        hist.append(" ".join(a.split()))
        u = eng.generate([GenRequest(user_messages(FOOD, hist), seed=turn, key="user")])[0][0]
        hist.append(" ".join(u.split()))
    assert eng.stats.reused_tokens > 0
    reused = eng.stats.reused_tokens
    fork = agent_messages(TENNIS, hist[:4] + ["What is your favourite hobby?"])
    answers = eng.generate([GenRequest(fork, seed=11, n=4, key="agent", persist=False)])[0]
    assert all(a.strip() for a in answers)
    assert eng.stats.reused_tokens > reused  # the probe forked from the cached dialog
    # round 0, probe right after the system prompt, temperature 0.7: measured here, the model
    # names tennis in 3-4 of 10 answers with the persona and in none without it
    warm = HFEngine(model, tok, sampling=Sampling(max_new_tokens=60, temperature=0.7))

    def tennis(system):
        out = warm.generate([GenRequest(agent_messages(system, ["What's your hobby?"]), seed=11, n=10, persist=False)])
        return sum("tennis" in x.lower() for x in out[0])

    with_persona, without = tennis("You love playing tennis."), tennis("You are a helpful assistant.")
    assert with_persona >= 2 and with_persona > without, (with_persona, without)


def test_split_softmax_k1_and_guidance_g1_are_the_identity_on_the_real_model(embedded_model):
    model, tok = embedded_model
    chat = ChatFormat(tok)
    msgs = agent_messages(TENNIS, ["What is your favourite hobby?"])
    r = chat.render(msgs)
    ids = torch.tensor([r.ids])
    plain = model(ids).logits
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[0, r.prompt_span[0]:r.prompt_span[1]] = True
    from personadrift.attention import split_softmax  # noqa: F401  (registers)

    before = model.config._attn_implementation
    model.set_attn_implementation("split_softmax")
    try:
        with attention_context(prompt, reweight=split_hook(1.0)):
            same = model(ids).logits
        with attention_context(prompt, reweight=split_hook(0.5)):
            changed = model(ids).logits
    finally:
        model.set_attn_implementation(before)
    assert torch.allclose(plain, same, atol=1e-5)
    assert (plain - changed).abs().max() > 1e-3
    greedy = Sampling(do_sample=False, max_new_tokens=12)
    a = HFEngine(model, tok, sampling=greedy).generate([GenRequest(msgs, seed=1)])
    b = HFEngine(model, tok, sampling=greedy, intervention=guided(1.0)).generate(
        [GenRequest(msgs, seed=1, intervene=True, negative_messages=msgs[1:])])
    assert a == b
