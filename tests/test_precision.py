"""Float32 where precision decides, whatever the model's dtype: split-softmax's scores and
guidance's mix, checked in bfloat16 on the CPU against float64 references."""

import pytest
import torch

from personadrift.attention.reference import split_softmax_reference
from personadrift.attention.split_softmax import split_softmax_core, split_softmax_decode
from personadrift.generation.guidance import guidance_mix
from support.interventions import guided, split_hook

BF16_UNIT = 2.0**-8  # bfloat16's unit roundoff (8 significant bits)


def _qkv(seed, magnitude, q_len=1, b=2, h=4, hk=2, kv=40, d=16):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, q_len, d, generator=g) * magnitude).bfloat16()
    k = (torch.randn(b, hk, kv, d, generator=g) * magnitude).bfloat16()
    v = torch.randn(b, hk, kv, d, generator=g).bfloat16()
    return q, k, v


def test_split_softmax_decode_in_bfloat16_is_as_close_to_float64_as_its_output_rounding():
    """Scores of 20-100 (large, as real models' are): rounded to bfloat16 (steps of 0.125-0.5)
    they move the row's probabilities by several per cent; formed in float32 the output is off the
    float64 reference by about its own rounding."""
    worst = 0.0
    for magnitude in (2.0, 3.0):
        for seed in range(3):
            q, k, v = _qkv(seed, magnitude)
            flags = torch.zeros(2, 40, dtype=torch.bool)
            flags[:, 2:8] = True
            ref, _ = split_softmax_reference(q.double(), k.double(), v.double(), None, prompt_flags=flags,
                                             k=0.5, scale=1.0)
            out = split_softmax_decode(q, k, v, None, reweight=split_hook(0.5), scale=1.0, span=(2, 8))
            assert out.dtype == torch.bfloat16
            worst = max(worst, float((out.double() - ref).abs().max() / (BF16_UNIT * ref.abs().max())))
    assert worst < 2.0


@pytest.mark.parametrize("magnitude", [1.0, 2.0])
def test_split_softmax_prefill_in_bfloat16_matches_float64(magnitude):
    q, k, v = _qkv(1, magnitude, q_len=40)
    flags = torch.zeros(2, 40, dtype=torch.bool)
    flags[:, 2:8] = True
    idx = torch.arange(2, 8).expand(2, 6)
    ref, _ = split_softmax_reference(q.double(), k.double(), v.double(), None, prompt_flags=flags, k=0.5, scale=1.0)
    out = split_softmax_core(q, k, v, None, prompt_flags=flags, prompt_idx=idx,
                             prompt_valid=torch.ones(2, 6, dtype=torch.bool), reweight=split_hook(0.5), scale=1.0)
    assert out.dtype == torch.bfloat16
    assert float((out.double() - ref).abs().max()) < 4 * BF16_UNIT * float(ref.abs().max())


def test_guidance_mix_is_float32_and_matches_float64_for_bfloat16_logits():
    g = torch.Generator().manual_seed(0)
    cond = (torch.randn(3, 500, generator=g) * 8 + 16).bfloat16()  # logits of 16-32, as real models'
    uncond = (torch.randn(3, 500, generator=g) * 8 + 16).bfloat16()
    mixed = guidance_mix(cond, uncond, 3.0)
    assert mixed.dtype == torch.float32
    lc, lu = torch.log_softmax(cond.double(), -1), torch.log_softmax(uncond.double(), -1)
    ref = lu + 3.0 * (lc - lu)
    assert torch.allclose(mixed.double(), ref, atol=1e-4, rtol=0)


def test_guided_engine_scores_of_a_bfloat16_model_are_the_float64_mix_of_its_logits(tiny_model_dir):
    """The engine's guided next-token log-probabilities of a bfloat16 model are float32 and equal
    the float64 mix of the two branches' logits (each branch run alone, on its own)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.generation.api import GenRequest
    from personadrift.generation.engine import HFEngine

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    msgs = [{"role": "system", "content": "You love tennis."}, {"role": "user", "content": "What is your hobby?"}]
    eng = HFEngine(model, tok, intervention=guided(2.5))
    lp = eng.next_token_logprobs([GenRequest(msgs, seed=0, intervene=True, negative_messages=msgs[1:])])
    assert lp.dtype == torch.float32
    with torch.inference_mode():
        c = model(torch.tensor([eng.chat.render(msgs).ids])).logits[0, -1].double()
        u = model(torch.tensor([eng.chat.render(msgs[1:]).ids])).logits[0, -1].double()
    lc, lu = torch.log_softmax(c, -1), torch.log_softmax(u, -1)
    assert torch.allclose(lp[0].double(), lu + 2.5 * (lc - lu), atol=1e-4, rtol=0)
