"""The engine on a model spread over several devices, as an accelerate device map spreads it.

The tiny model's embeddings sit on ``vdev:0``, its two layers on ``vdev:1`` and ``vdev:2``, its
head on ``vdev:2``; each layer's KV cache is built on its own device. Every operation runs
under ``tests/support/virtual_devices.py``, which raises where CUDA would raise: on any operation
that combines tensors of two devices. Each path must also give what it gives on one device.
"""

import pytest
import torch

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from support.interventions import guided, split, split_hook
from support.virtual_devices import DeviceMixError, spread_over_virtual_devices, virtual_devices

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]
INTERVENTIONS = {
    "none": Intervention(),
    "split": split(0.5),
    "split_layer_1": split(0.25, [1]),
    "guidance": guided(2.0),
}


def convo(i):
    return [{"role": "system", "content": SYSTEMS[i % 3]}, {"role": "user", "content": "What is your hobby?" + " really" * (4 * i)}]


def load(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tok


def dialog(eng: HFEngine) -> list:
    """Two dialog turns (the second re-uses each conversation's stored prefix), a round of
    probes between them (3 samples each, forked, not stored), requests of different budgets in
    one call (rows retire at different steps: the batch compacts) and a prefill split by
    length (separately prefilled parts merged into one batch)."""
    eng.prefill_forward_tokens = 0  # split the prefill wherever it saves padding

    def req(i, msgs, **kw):
        return GenRequest(msgs, seed=i, key=f"c{i}", intervene=True, negative_messages=msgs[1:], **kw)

    first = [req(i, convo(i), max_new_tokens=2 + 3 * i) for i in range(4)]
    out = [eng.generate(first)]
    grown = [r.messages + [{"role": "assistant", "content": t[0]}] for r, t in zip(first, out[0])]
    probes = [req(i, m + [{"role": "user", "content": "Who are you?"}], n=3, persist=False) for i, m in enumerate(grown)]
    out.append(eng.generate(probes, max_new_tokens=5))
    nxt = [req(i, m + [{"role": "user", "content": "Tell me more."}]) for i, m in enumerate(grown)]
    out.append(eng.generate(nxt, max_new_tokens=6))
    assert eng.stats.reused_tokens > 0
    return out


@pytest.mark.parametrize("name", list(INTERVENTIONS))
def test_dialog_turns_and_probes_run_across_devices_and_match_one_device(tiny_model_dir, name):
    s = Sampling(max_new_tokens=8)
    model, tok = load(tiny_model_dir)
    expected = dialog(HFEngine(model, tok, sampling=s, intervention=INTERVENTIONS[name]))
    with virtual_devices() as mode:
        spread_over_virtual_devices(model, 3)
        eng = HFEngine(model, tok, sampling=s, intervention=INTERVENTIONS[name])
        got = dialog(eng)
    assert got == expected
    assert all(mode.ops.get(f"vdev:{i}", 0) > 0 for i in range(3))  # every device did work


@pytest.mark.parametrize("name", ["none", "split", "guidance"])
def test_scoring_runs_across_devices_and_matches_one_device(tiny_model_dir, name):
    model, tok = load(tiny_model_dir)

    def score(eng):
        reqs = [GenRequest(convo(i), seed=0, key="shared", intervene=True, negative_messages=convo(i)[1:])
                for i in range(3)]
        conts = [tok.encode(" tennis is fun"), tok.encode(" A"), tok.encode(" the pizza")]
        return eng.next_token_logprobs(reqs).cpu(), eng.continuation_logprobs(reqs, conts).cpu()

    expected = score(HFEngine(model, tok, intervention=INTERVENTIONS[name]))
    with virtual_devices():
        spread_over_virtual_devices(model, 3)
        got = score(HFEngine(model, tok, intervention=INTERVENTIONS[name]))
    for g, e in zip(got, expected):
        assert torch.allclose(g.double(), e.double(), atol=1e-4)


@pytest.mark.parametrize("name", ["split", "guidance"])
def test_mmlu_scoring_with_a_primed_prefix_runs_across_devices(tiny_model_dir, name):
    from personadrift.capability.mmlu.scoring import EngineScorer, _conversation

    model, tok = load(tiny_model_dir)
    convs = [_conversation(SYSTEMS[0], f"Question {i}: what is {i} + 1? A) 1 B) 2 C) 3 D) {i + 1}") for i in range(3)]
    options = [("one", "two", "three", str(i + 1)) for i in range(3)]

    def score(eng):
        sc = EngineScorer(eng, intervene=True, negative=lambda m: m[1:], share_key="mmlu")
        sc.prime(SYSTEMS[0])
        assert "mmlu" in eng.prefixes
        return sc.letters(convs), sc.cloze(convs, options)

    expected = score(HFEngine(model, tok, intervention=INTERVENTIONS[name]))
    with virtual_devices():
        spread_over_virtual_devices(model, 3)
        got = score(HFEngine(model, tok, intervention=INTERVENTIONS[name]))
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-4)


def test_the_recorder_runs_across_devices(tiny_model_dir):
    from personadrift.attention.recorder import record_prompt_share

    model, tok = load(tiny_model_dir)
    ids = torch.tensor([tok.encode("You love tennis. What is your hobby?")] * 2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[:, 3:6] = True
    expected = record_prompt_share(model, ids, mask, prompt, reweight=split_hook(0.5))
    with virtual_devices():
        spread_over_virtual_devices(model, 3)
        dev = model.model.embed_tokens.weight.device
        got = record_prompt_share(model, ids.to(dev), mask.to(dev), prompt.to(dev), reweight=split_hook(0.5))
        stats = got.stats.cpu()
    assert torch.allclose(stats, expected.stats, atol=1e-5, equal_nan=True)


def test_the_harness_raises_where_cuda_would():
    with virtual_devices():
        a = torch.ones(3, device="vdev:0")
        b = torch.ones(3, device="vdev:1")
        assert a.device != b.device
        with pytest.raises(DeviceMixError):
            _ = a + b
        with pytest.raises(DeviceMixError):
            a.index_select(0, torch.tensor([0, 1], device="vdev:1"))
        assert torch.equal((a + b.to(a.device)).cpu(), torch.full((3,), 2.0))  # a move is allowed
        assert a[torch.tensor([0, 2])].shape == (2,)  # so are CPU indices
        c = a.new_zeros(3)
        c[1:] = b[1:]  # copy_ across devices, as CUDA allows
        assert c.device == a.device and c.cpu().tolist() == [0.0, 1.0, 1.0]


def test_a_decode_step_sends_the_uniforms_and_receives_the_token_ids_only(tiny_model_dir):
    """Per decode step, host and devices exchange the rows' uniforms (up) and their token ids
    (down): the mask, positions and the sampling itself stay on the devices. (A row that needs the
    full-vocabulary sort costs one more flag; the tiny vocabulary never needs it.)"""
    from collections import Counter

    model, tok = load(tiny_model_dir)
    reqs = [GenRequest(convo(i), seed=i, persist=False) for i in range(3)]
    with virtual_devices() as mode:
        spread_over_virtual_devices(model, 3)

        def transfers(steps):  # EOS suppressed: every row runs every step
            eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=steps, min_new_tokens=steps))
            start = len(mode.transfers)
            eng.generate(reqs)
            return mode.transfers[start:]

        short, long = transfers(3), transfers(6)
    # the batch's slot ids and mask go up once per call (their width depends on the budget)
    directions = Counter((a, b) for a, b, _ in long)
    directions.subtract(Counter((a, b) for a, b, _ in short))
    assert +directions == Counter({("cpu", "vdev:2"): 3, ("vdev:2", "cpu"): 3})  # 3 more steps
    step_items = Counter(long) - Counter(short)
    assert step_items[("cpu", "vdev:2", 3)] == 3 and step_items[("vdev:2", "cpu", 3)] == 3  # 3 rows each
