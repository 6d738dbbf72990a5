"""A batch-invariant forward (``model.batch_invariant``): a row's logits are bitwise the same, and
its sampled tokens identical, alone and beside any batch-mates, on a real model forward pass."""

import pytest
import torch

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from personadrift.generation.linear_kernels import onednn_available
from support.interventions import anchored, boosted, guided, split, steered, vectors_file

pytestmark = pytest.mark.skipif(not onednn_available(), reason="batch invariance needs oneDNN's linear (x86 CPU)")

BATCH_SIZES = (1, 2, 5, 7, 12, 36, 48)
FLAT = "Hi."
LONG = "Always answer in French, s'il vous plait, and tell me everything about Paris. " * 2
SAMPLINGS = {
    "protocol": Sampling(temperature=1.0, top_p=0.9, max_new_tokens=8),
    "hot": Sampling(temperature=1.5, top_p=0.95, max_new_tokens=8),
}
# the engine tests split the batch sizes between the two samplings (the forward test runs all)
ENGINE_SIZES = {"protocol": (1, 2, 12, 48), "hot": (1, 5, 7, 36)}
INTERVENTIONS = {
    "none": Intervention(),
    "split": split(0.5),
    "guidance": guided(1.5),
    "instaboost": boosted(4.0),
    "spa": anchored(2.0),
}
# persona-vector steering needs a vectors file of the model's width: the fixture ``steering``
ENGINE_INTERVENTIONS = [*INTERVENTIONS, "steering"]


@pytest.fixture(scope="module")
def invariant_tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.generation.batch_invariance import batch_invariant_of, set_batch_invariant

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert set_batch_invariant(model) == "onednn" and batch_invariant_of(model)
    return model, tok


@pytest.fixture(scope="module")
def steering(invariant_tiny, tmp_path_factory):
    """Steering with capping at the last layer, random directions, one per convo() persona."""
    model, _ = invariant_tiny
    path = vectors_file(tmp_path_factory.mktemp("vectors") / "layer1.safetensors", model.config.hidden_size, layer=1)
    return steered(path, 0.8, layer=1, cap=True)


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def mates(n: int) -> list[str]:
    """``n`` batch-mates, alternately longer (the row is left-padded) and shorter than the row."""
    return [(LONG if i % 2 == 0 else FLAT) + f" ({i})" for i in range(n)]


def forward_logits(model, tok, prompts: list[str], steps: int = 5, row: int = 0) -> torch.Tensor:
    """The logits of ``prompts[row]`` after its prompt and after each of ``steps`` fed tokens,
    all prompts left-padded into one batch sharing a KV cache (as the engine runs them)."""
    from transformers import DynamicCache

    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    width, n = max(map(len, ids)), len(ids)
    x = torch.full((n, width), tok.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, t in enumerate(ids):
        x[i, width - len(t):] = torch.tensor(t)
        mask[i, width - len(t):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache, out = DynamicCache(), []
    with torch.inference_mode():
        o = model(input_ids=x, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
        out.append(o.logits[row, -1].clone())
        nxt = positions[:, -1:] + 1
        for s in range(steps):
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], 1)
            o = model(input_ids=torch.full((n, 1), 5 + s), attention_mask=mask, position_ids=nxt,
                      past_key_values=cache, use_cache=True)
            nxt = nxt + 1
            out.append(o.logits[row, -1].clone())
    return torch.stack(out)


def test_linear_row_is_the_same_at_every_row_count_and_position(invariant_tiny):
    from personadrift.generation.linear_kernels import InvariantOneDNNLinear

    model, _ = invariant_tiny
    g = torch.Generator().manual_seed(0)
    layers = {tuple(m.weight.shape): m for m in model.modules() if type(m) is InvariantOneDNNLinear}
    assert len(layers) >= 3  # attention, MLP and the lm_head's shapes
    for layer in layers.values():
        xs = torch.randn(64, layer.in_features, generator=g)
        with torch.inference_mode():
            alone = torch.cat([layer(xs[i : i + 1]) for i in range(64)])
            for rows in (2, 3, 5, 7, 12, 36, 48, 64):
                start = int(torch.randint(0, 64 - rows + 1, (1,), generator=g))
                assert torch.equal(layer(xs[start : start + rows]), alone[start : start + rows]), (layer, rows)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_forward_logits_are_bitwise_the_same_alone_and_in_any_batch(invariant_tiny, threads):
    model, tok = invariant_tiny
    row = "You love tennis. What is your hobby?"
    alone = forward_logits(model, tok, [row])
    for size in BATCH_SIZES[1:]:
        for where in (0, size - 1):  # first and last in the batch
            prompts = mates(size - 1)
            prompts.insert(where, row)
            got = forward_logits(model, tok, prompts, row=where)
            assert torch.equal(got, alone), (size, where, float((got - alone).abs().max()))
    # beside flat mates only (the row is the longest: no padding) and long ones only (padded)
    assert torch.equal(forward_logits(model, tok, [row] + [FLAT] * 6), alone)
    assert torch.equal(forward_logits(model, tok, [row] + [LONG] * 6), alone)


def convo(text: str, i: int) -> list[dict]:
    return [{"role": "system", "content": ["You love tennis.", "You are a pirate; talk like one."][i % 2]},
            {"role": "user", "content": text}]


def request(text: str, i: int, branch) -> GenRequest:
    """An intervened request; under a branch hook its branch is the conversation without its system
    prompt (guidance) or, where the hook blanks the prompt (SPA), the conversation itself."""
    msgs = convo(text, i)
    negative = None if branch is None else (msgs if branch.blank_prompt else msgs[1:])
    return GenRequest(msgs, seed=100 + i, key=f"c{i}", intervene=True, negative_messages=negative,
                      persona=["tennis", "pirate"][i % 2])  # convo()'s system prompt (steering's vector)


def engine_case(lm, intervention: Intervention, sampling: Sampling, sizes=BATCH_SIZES):
    """The row's replies and first-token log-probabilities alone, and in each batch size."""
    guided = intervention.hook("branch")
    row = request("What is your hobby?", 0, guided)
    alone_eng = HFEngine(*lm, sampling=sampling, intervention=intervention)
    alone = alone_eng.complete([row])[0][0].text
    alone_lp = alone_eng.next_token_logprobs([row])[0]
    for size in sizes[1:]:
        reqs = [request(t, i + 1, guided) for i, t in enumerate(mates(size - 1))]
        where = size // 2
        reqs.insert(where, row)
        eng = HFEngine(*lm, sampling=sampling, intervention=intervention)
        assert eng.complete(reqs)[where][0].text == alone, size
        assert torch.equal(eng.next_token_logprobs(reqs)[where], alone_lp), size


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
@pytest.mark.parametrize("intervention", ENGINE_INTERVENTIONS, ids=str)
def test_engine_row_is_the_same_alone_and_in_any_batch(invariant_tiny, intervention, sampling, request):
    iv = request.getfixturevalue("steering") if intervention == "steering" else INTERVENTIONS[intervention]
    engine_case(invariant_tiny, iv, SAMPLINGS[sampling], sizes=ENGINE_SIZES[sampling])


@pytest.mark.parametrize("blocked", [True, False], ids=["blocked", "rows"])
def test_decode_steps_run_where_the_config_says_and_rows_stay_invariant(tiny_model_dir, monkeypatch, blocked):
    """``model.blocked_decode``: the default runs a plain decode step's rows in the blocked call,
    ``false`` never calls it; both keep a row's reply and log-probabilities bitwise the same alone
    and in batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.attention import invariant
    from personadrift.generation.batch_invariance import blocked_decode_of, set_batch_invariant

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    set_batch_invariant(model, blocked_decode=blocked)
    assert blocked_decode_of(model) is blocked
    calls = []
    real = invariant.blocked_decode_attention
    monkeypatch.setattr(invariant, "blocked_decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    engine_case((model, tok), INTERVENTIONS["none"], SAMPLINGS["protocol"], sizes=(1, 5, 12))
    assert bool(calls) is blocked


def test_engine_row_is_the_same_on_two_threads(invariant_tiny):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine_case(invariant_tiny, INTERVENTIONS["split"], SAMPLINGS["hot"], sizes=(1, 7, 12))
    finally:
        torch.set_num_threads(before)


def test_split_softmax_rows_are_split_softmax(invariant_tiny, tiny_model_dir):
    """The row-by-row wrapper changes where rows are computed, not what: its split-softmax
    log-probabilities match the batched split-softmax attention's within float32 rounding, and
    differ from the plain model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    reqs = [request(t, i, None) for i, t in enumerate(["What is your hobby?"] + mates(4))]
    iv = split(0.25)
    inv = HFEngine(*invariant_tiny, intervention=iv).next_token_logprobs(reqs)
    ref = HFEngine(plain, tok, intervention=iv).next_token_logprobs(reqs)
    off = HFEngine(plain, tok).next_token_logprobs(reqs)
    assert torch.allclose(inv, ref, atol=1e-4)
    assert not torch.allclose(inv, off, atol=1e-3)


def test_resume_reencoding_measured(invariant_tiny):
    """After a resume a conversation's history is encoded in one forward, where the uninterrupted
    run built its cache turn by turn and token by token: other query counts, so other kernel
    splits in attention. Not promised bitwise; the difference stays at float32 rounding."""
    lm = invariant_tiny
    s = Sampling(max_new_tokens=10)
    live = HFEngine(*lm, sampling=s)
    reqs = [request("What is your hobby?", i, None) for i in range(3)]
    first = live.generate(reqs)
    follow = [GenRequest(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "Tell me more."}],
                         seed=9, key=r.key) for r, t in zip(reqs, first)]
    cached = live.next_token_logprobs(follow)
    fresh = HFEngine(*lm, sampling=s).next_token_logprobs(follow)
    assert torch.allclose(cached, fresh, atol=1e-4)


def test_config_key_loads_records_and_refuses_torch_kernel(tiny_model_dir, tmp_path):
    from personadrift.errors import InputError
    from personadrift.generation.models import fetch_model, load_model

    dest = tmp_path / "m"
    fetch_model({"name": "tiny", "source": "tiny"}, dest)
    on = load_model(dest, {"batch_invariant": True})
    assert on.identity["batch_invariant"] is True and on.identity["linear_kernel"] == "onednn"
    assert on.model.config._attn_implementation == "batch_invariant" and on.identity["blocked_decode"] is True
    rows = load_model(dest, {"batch_invariant": True, "blocked_decode": False})
    assert rows.model.config._attn_implementation == "batch_invariant_rows"
    assert rows.identity["batch_invariant"] is True and rows.identity["blocked_decode"] is False
    off = load_model(dest, {"linear_kernel": "onednn", "blocked_decode": True})  # ignored without invariance
    assert off.identity["batch_invariant"] is False and off.identity["linear_kernel"] == "onednn"
    assert "blocked_decode" not in off.identity
    # a checkpoint made with one forward is not resumed with another (same kernel name in all)
    from personadrift.generation.selfchat import generation_fingerprint
    from personadrift.interventions.settings import expand_settings

    setting = expand_settings({"none": {"method": "none"}})[0]
    config = {"selfchat": {"turns": 2}, "seed": 0, "backend": "hf"}
    fp = [generation_fingerprint(config, setting, {"model": lm.identity}) for lm in (on, rows, off)]
    assert len(set(fp)) == 3
    with pytest.raises(InputError, match="model.batch_invariant"):
        load_model(dest, {"batch_invariant": True, "linear_kernel": "torch"})


def test_a_kernel_whose_rows_vary_with_the_batch_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """The load-time probe: a linear product that changes a row's last bit once other rows share the
    batch (as oneDNN's AVX-512 kernels did) makes batch invariance refuse, naming the layer."""
    from personadrift.errors import InputError
    from personadrift.generation import linear_kernels
    from personadrift.generation.models import fetch_model, load_model

    dest = tmp_path / "m"
    fetch_model({"name": "tiny", "source": "tiny"}, dest)
    assert load_model(dest, {"batch_invariant": True}).identity["batch_invariant"] is True  # the real kernel
    real = linear_kernels._onednn_linear

    def varies(x, weight, bias):  # a batch of several rows sums in another order: one ulp off
        out = real(x, weight, bias)
        return torch.nextafter(out, torch.full_like(out, float("inf"))) if x.shape[0] > 1 else out

    monkeypatch.setattr(linear_kernels, "_onednn_linear", varies)
    with pytest.raises(InputError) as e:
        load_model(dest, {"batch_invariant": True})
    assert e.value.field == "model.batch_invariant"
    assert "alone against row 1 of 2" in e.value.problem and "pinned_avx2" in e.value.problem
    assert load_model(dest, {"linear_kernel": "onednn"}).identity["linear_kernel"] == "onednn"  # not probed


NATIVE_PROBE = """
import sys, torch
from personadrift.generation.linear_kernels import KernelUnavailable, _Pack, _onednn_linear, set_linear_kernel
torch.manual_seed(0)
layer = torch.nn.Sequential(torch.nn.Linear(1536, 576))  # SmolLM2-135M's down projection
try:
    set_linear_kernel(layer, batch_invariant=True)
except KernelUnavailable as e:
    print("refused:", e)
    sys.exit(0)
torch.set_grad_enabled(False)  # inference, as the engine runs it
w, rows = _Pack().of(layer[0].weight), torch.randn(64, 1536)
alone = [_onednn_linear(rows[i:i + 1], w, layer[0].bias) for i in range(64)]
for n in range(2, 65):
    out = _onednn_linear(rows[:n], w, layer[0].bias)
    assert all(torch.equal(out[i:i + 1], alone[i]) for i in range(n)), n
print("invariant")
"""


@pytest.mark.parametrize("mode", ["native", "pinned_avx2"])
def test_where_the_probe_accepts_every_row_count_is_invariant(mode):
    """In a fresh process under each CPU numerics mode, a layer of the embedded model's widest input
    is either refused or, if accepted, bitwise invariant at every row count from 1 to 64 and every
    position: the probe's few row counts do not let a varying kernel through. Pinned at AVX2 it is
    accepted (the workflow's setting); native on a CPU with AVX-512 it was refused."""
    import subprocess
    import sys

    from personadrift.numerics import PINNED, unpinned_environ

    env = {**unpinned_environ(), **PINNED.get(mode, {})}
    proc = subprocess.run([sys.executable, "-c", NATIVE_PROBE], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip()
    assert out == "invariant" or (mode == "native" and out.startswith("refused: oneDNN's packed linear")), out


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_embedded_model_rows_are_bitwise_the_same_alone_and_in_batches(embedded_model_dir, threads):
    from personadrift.generation.models import load_model

    lm = load_model(embedded_model_dir, {"batch_invariant": True})
    model, tok = lm.model, lm.tokenizer
    row = "<|im_start|>user\nWhat is your hobby?<|im_end|>\n<|im_start|>assistant\n"
    alone = forward_logits(model, tok, [row], steps=3)
    for size in (2, 7, 12):
        prompts = mates(size - 1)
        prompts.insert(1 % size, row)
        assert torch.equal(forward_logits(model, tok, prompts, steps=3, row=1 % size), alone), size
    for name in ("none", "split", "guidance", "instaboost", "spa"):
        engine_case((model, tok), INTERVENTIONS[name], Sampling(temperature=1.5, top_p=0.95, max_new_tokens=16),
                    sizes=(1, 2, 7))
