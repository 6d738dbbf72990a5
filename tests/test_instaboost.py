"""InstABoost: the hooked attention equals an eager attention that adds log(alpha) to the system
prompt keys' scores (prefill and KV-cached decoding, padded batches with holes, chosen layers and
heads); alpha = 1 is bitwise plain attention; its factors are exact at the ends; a bad entry is one
error naming the file and key; a self-chat shard runs under it through the workflow's step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from personadrift.attention import attention_context
from personadrift.config import check_config, read_yaml
from personadrift.errors import InputError
from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from personadrift.interventions import METHODS
from personadrift.interventions.instaboost import InstABoostHook
from personadrift.interventions.settings import expand_settings, settings_from_flags
from support.interventions import boosted
from support.workflow import REPO

# ---------------------------------------------------------------- the direct reference
# An attention function written for this test alone: float64 scores, the additive mask
# transformers builds for eager attention, log(alpha) added to the scores of the system prompt's
# key slots in the chosen layers and heads, then one softmax. It shares nothing with the
# engine's attention but the slot convention (key slot i is the i-th column of the batch).
REFERENCE = {"prompt": None, "alpha": 1.0, "layers": None, "heads": None}


def boosted_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    b, h, q_len, d = query.shape
    kv_len = key.shape[2]
    rep = h // key.shape[1]
    k = key.double().repeat_interleave(rep, dim=1)
    v = value.double().repeat_interleave(rep, dim=1)
    scores = query.double() @ k.transpose(-1, -2) * (scaling if scaling is not None else d**-0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[..., :kv_len].double()
    layer = module.layer_idx
    if REFERENCE["layers"] is None or layer in REFERENCE["layers"]:
        prompt = torch.zeros(b, kv_len, dtype=torch.bool)
        width = min(kv_len, REFERENCE["prompt"].shape[1])
        prompt[:, :width] = REFERENCE["prompt"][:, :width]  # slots generated later are never prompt
        heads = torch.zeros(h, dtype=torch.bool)
        heads[list(REFERENCE["heads"]) if REFERENCE["heads"] is not None else slice(None)] = True
        bias = math.log(REFERENCE["alpha"]) * (heads[None, :, None, None] & prompt[:, None, None, :])
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v).to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register("instaboost_reference", boosted_eager_attention)
AttentionMaskInterface.register("instaboost_reference", eager_mask)


def _batch(seed: int = 0, T: int = 40, vocab: int = 300, shared_span: bool = False):
    """3 rows: full, left padded, left padded with a masked hole; the system prompt's slots differ
    per row (or are one span shared by all rows: the decoder's sliced fast path)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, T), generator=g)
    am = torch.ones(3, T, dtype=torch.long)
    pm = torch.zeros(3, T, dtype=torch.bool)
    if shared_span:
        pm[:, 2:11] = True
    else:
        am[1, :5] = 0
        am[2, :3] = 0
        am[2, 20:23] = 0
        pm[0, 0:8] = True
        pm[1, 5:15] = True
        pm[2, 3:10] = True
    return ids, am, pm


def run_logits(model, impl, ids, am, pm, hook=None, steps=5):
    """Logits [rows, T + steps, vocab]: a prefill of the left-padded batch (positions counted over
    the real tokens, so holes are skipped), then ``steps`` KV-cached decoding steps of fixed tokens."""
    model.set_attn_implementation(impl)
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    cache, out = DynamicCache(), []
    try:
        with torch.no_grad(), (attention_context(pm, reweight=hook) if hook is not None else _null()):
            o = model(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache, use_cache=True)
            out.append(o.logits)
            nxt = pos[:, -1:] + 1
            for s in range(steps):
                am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
                o = model(input_ids=torch.full((ids.shape[0], 1), 7 + s), attention_mask=am, position_ids=nxt,
                          past_key_values=cache, use_cache=True)
                out.append(o.logits)
                nxt = nxt + 1
    finally:
        model.set_attn_implementation("sdpa")
    return torch.cat(out, 1), am.bool()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def reference_logits(model, ids, am, pm, alpha, layers, heads, steps=5):
    REFERENCE.update(prompt=pm, alpha=alpha, layers=layers, heads=heads)
    return run_logits(model, "instaboost_reference", ids, am, pm, steps=steps)[0]


@pytest.mark.parametrize("alpha", [4.0, 50.0])
@pytest.mark.parametrize("layers,heads", [(None, None), ((1,), None), (None, (2,)), ((0,), (0, 3))],
                         ids=["all", "layer1", "head2", "layer0-heads0,3"])
@pytest.mark.parametrize("shared_span", [False, True], ids=["per-row", "shared-span"])
def test_hooked_attention_equals_a_bias_on_the_prompt_scores(models, alpha, layers, heads, shared_span):
    ids, am, pm = _batch(shared_span=shared_span)
    hook = InstABoostHook(alpha=alpha, layers=layers, heads=heads)
    for model in models:
        got, valid = run_logits(model, "split_softmax", ids, am, pm, hook)
        ref = reference_logits(model, ids, am, pm, alpha, layers, heads)
        plain = reference_logits(model, ids, am, pm, 1.0, None, None)
        assert (got - ref)[valid].abs().max() < 1e-4, float((got - ref)[valid].abs().max())
        assert (got - plain)[valid].abs().max() > 1e-2  # the boost does something
        # and the decoding steps (the KV-cached single-query path) are checked too, not only the prefill
        T = ids.shape[1]
        assert (got - ref)[:, T:].abs().max() < 1e-4 and (got - plain)[:, T:].abs().max() > 1e-3


def test_recorded_prompt_share_of_the_boosted_heads(models):
    """The prompt-share recorder reports the boosted share alpha pi / (alpha pi + 1 - pi) in the
    chosen heads and the plain share pi in the others (layer 0, whose inputs the boost leaves alone)."""
    from personadrift.attention.recorder import NAME, PromptShareRecorder

    ids, am, pm = _batch()
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    model = models[1]

    def shares(hook):
        rec = PromptShareRecorder()
        model.set_attn_implementation(NAME)
        try:
            with torch.no_grad(), attention_context(pm, reweight=hook, recorder=rec):
                model(input_ids=ids, attention_mask=am, position_ids=pos)
        finally:
            model.set_attn_implementation("sdpa")
        return rec.result()[..., 0]  # [layers, batch, heads, queries]

    alpha = 5.0
    pi = shares(None)[0]
    got = shares(InstABoostHook(alpha=alpha, heads=(0, 3)))[0]
    valid = am.bool()[:, None, :].expand_as(pi)
    boosted_share = alpha * pi / (alpha * pi + 1 - pi)
    for head in range(pi.shape[1]):
        want = boosted_share[:, head] if head in (0, 3) else pi[:, head]
        assert (got[:, head] - want)[valid[:, head]].abs().max() < 1e-5, head
    assert (pi[valid] > 0.01).any() and (pi[valid] < 0.99).any()


def test_boost_one_is_bitwise_plain_attention(models, tiny_model):
    ids, am, pm = _batch()
    for model in models:
        plain, valid = run_logits(model, "split_softmax", ids, am, pm)  # outside any context: plain attention
        same, _ = run_logits(model, "split_softmax", ids, am, pm, InstABoostHook(alpha=1.0))
        assert torch.equal(plain, same)
    # through the engine: alpha = 1 gives the replies and log-probabilities of no intervention
    model, tok = tiny_model
    attn = model.config._attn_implementation
    reqs = [GenRequest([{"role": "system", "content": s}, {"role": "user", "content": "What is your hobby?"}],
                       seed=i, key=f"c{i}", intervene=True)
            for i, s in enumerate(["You love tennis.", "You are a pirate; talk like one.", "Be brief."])]
    try:
        runs = {}
        for name, iv in (("off", Intervention()), ("one", boosted(1.0)), ("four", boosted(4.0))):
            eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=12), intervention=iv)
            runs[name] = ([c[0].text for c in eng.complete(reqs)], eng.next_token_logprobs(reqs))
    finally:
        model.set_attn_implementation(attn)  # the fixture's model is shared
    assert runs["one"][0] == runs["off"][0] and torch.equal(runs["one"][1], runs["off"][1])
    assert not torch.allclose(runs["four"][1], runs["off"][1], atol=1e-3)


def test_factors_are_the_definition_and_exact_at_the_ends():
    alpha = 7.0
    pi = torch.tensor([0.0, 1e-30, 1e-7, 0.01, 0.3, 0.5, 0.9, 1 - 1e-6, 1.0])
    hook = InstABoostHook(alpha=alpha)
    share, r = hook.factors(pi, 1 - pi)
    up, r_dec = hook.decode_factors(pi)
    p = pi.double()
    want_share = alpha * p / (alpha * p + 1 - p)
    want_r = 1 / (alpha * p + 1 - p)
    for got, want in ((share, want_share), (r, want_r), (up, want_r * alpha), (r_dec, want_r)):
        assert torch.isfinite(got).all()
        assert torch.allclose(got.double(), want, rtol=1e-6, atol=0)
    # pi = 0: the row is plain attention, exactly; pi = 1: the prompt keeps the whole row
    assert share[0] == 0 and r[0] == 1 and up[0] == alpha and r_dec[0] == 1
    assert share[-1] == 1 and up[-1] == 1
    # the two masses come from separate attention channels: pi + po need not be 1 to the bit, and
    # a padding query sees no key at all (pi = po = 0)
    share, r = hook.factors(torch.tensor([0.0, 0.0, 0.4]), torch.tensor([0.9999999, 0.0, 0.6000001]))
    assert share[0] == 0 and r[0] == 1 and share[1] == 0 and r[1] == 1 and torch.isfinite(share).all()
    assert hook.is_identity() is False and InstABoostHook(alpha=1.0).is_identity()
    for bad in (0.0, -2.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            InstABoostHook(alpha=bad)


# ---------------------------------------------------------------- the method and its config
def test_method_settings_names_options_and_serve_flags():
    impl = METHODS["instaboost"]
    assert impl.label == "InstABoost" and impl.needs_internals and impl.color not in (
        m.color for n, m in METHODS.items() if n != "instaboost")
    iv = {"none": {"method": "none"},
          "ib": {"method": "instaboost", "boost": [2, 4.5], "layers": {"start": 0, "stop": 1}, "heads": [3, 1],
                 "apply_to": "probes", "chosen": 4.5}}
    _, two, four = expand_settings(iv)
    assert (two.name, four.name) == ("ib-b2", "ib-b4.5")
    hook = four.engine_intervention().hook("attention")
    assert hook == InstABoostHook(alpha=4.5, layers=(0,), heads=(1, 3))
    assert four.intervenes("probe") and not four.intervenes("dialog") and four.intervenes("mmlu")
    assert expand_settings({"ib": {"method": "instaboost", "boost": [3]}})[1].engine_intervention().hook(
        "attention") == InstABoostHook(alpha=3.0)  # every layer and head by default
    (s,) = settings_from_flags({"--instaboost": 3.0, "--instaboost-layers": [1], "--instaboost-heads": [0, 2]})
    assert s.engine_intervention().hook("attention") == InstABoostHook(alpha=3.0, layers=(1,), heads=(0, 2))
    with pytest.raises(InputError) as e:
        settings_from_flags({"--instaboost": 3.0, "--instaboost-heads": []})
    assert e.value.field == "--instaboost-heads" and "selects no head" in e.value.problem
    # split-softmax and InstABoost both reweight the prompt's attention: one engine cannot run both
    with pytest.raises(InputError) as e:
        settings_from_flags({"--instaboost": 3.0, "--split-k": 0.5})
    assert "--instaboost and --split-k both act through the engine's attention hook" in str(e.value)
    assert len(settings_from_flags({"--instaboost": 3.0, "--guidance-scale": 2.0})) == 2  # two kinds: fine


def refused(config) -> InputError:
    with pytest.raises(InputError) as e:
        check_config(config, "cfg.yaml", REPO, workdir=REPO)
    assert str(e.value).startswith("cfg.yaml: ") and "\n" not in str(e.value)
    return e.value


@pytest.mark.parametrize("entry,field,problem", [
    ({"heads": []}, "heads", "selects no head"),
    ({"heads": [0, 0]}, "heads", "listed twice"),
    ({"heads": "some"}, "heads", 'expected "all" or a list'),
    ({"heads": [1, -1]}, "heads", "integers >= 0"),
    ({"heads": [True]}, "heads", "integers >= 0"),
    ({"heads": [4]}, "heads", "head 4 does not exist: the model has 4 query heads"),  # the tiny model: 4
    ({"layers": []}, "layers", "selects no layer"),
    ({"layers": [2]}, "layers", "layer 2 does not exist: the model has 2 layers"),
    ({"boost": [4, 0.5]}, "boost[1]", "0.5 is less than the minimum of 1"),
    ({"boost": ["x"]}, "boost[0]", "expected number, got str 'x'"),
    ({"boost": [2], "chosen": 3}, "chosen", "not one of the grid values"),
    ({"k": [0.5]}, "k", "not a key of method instaboost"),
])
def test_a_bad_entry_is_one_error_naming_the_file_and_key(entry, field, problem):
    config = read_yaml(REPO / "config.yaml")
    config["model"] = {"name": "tiny", "source": "tiny"}
    config["interventions"] = {"none": {"method": "none"}, "ib": {"method": "instaboost", "boost": [4], **entry}}
    e = refused(config)
    assert e.field == f"interventions.ib.{field}" and problem in e.problem, (e.field, e.problem)


def test_heads_past_the_model_are_refused_at_engine_start(tiny_model):
    """Where the head count is not readable before the job (here: engine_on on a loaded model), the
    engine refuses the setting at start, naming the file and key."""
    from personadrift.runtime.factory import engine_on

    model, tok = tiny_model
    (bad,) = expand_settings({"none": {"method": "none"}, "ib": {"method": "instaboost", "boost": [4],
                                                                  "heads": [0, 9]}})[1:]
    with pytest.raises(InputError) as e:
        engine_on(model, tok, settings=[bad], where="study.yaml")
    assert e.value.field == "interventions.ib.heads" and "head 9 does not exist" in e.value.problem
    assert str(e.value).startswith("study.yaml: ")


# ---------------------------------------------------------------- end to end: a self-chat shard
def test_a_selfchat_shard_runs_under_instaboost(tiny_model_dir, tmp_path):
    """The workflow's self-chat step, on the tiny model, under an InstABoost setting (one layer,
    two heads) and under the baseline: the shard completes, its records name the setting and its
    options, and the boost changes what the agent says (same seeds and plans as the baseline)."""
    from personadrift.config import validate_config
    from personadrift.protocol.personas import load_personas, load_topics, persona_record
    from personadrift.steps.models import fetch_model
    from personadrift.steps.selfchat import selfchat_shard
    from personadrift.storage import atomic_write_json

    cfg = validate_config({
        "model": {"name": "tiny", "source": "local", "path": str(tiny_model_dir)},
        "selfchat": {"conversations": 2, "shard_size": 2, "turns": 4, "runs": 1, "max_new_tokens": 8,
                     "probe_max_new_tokens": 6},
        "personas": {"files": [str(REPO / "personas/benchmark/persona.yaml")],
                     "topics": str(REPO / "personas/topics.yaml")},
        "interventions": {"none": {"method": "none"},
                          "ib": {"method": "instaboost", "boost": [20], "layers": [1], "heads": [0, 3]}},
    })
    fetch_model(cfg, tmp_path / "model")
    personas = load_personas(cfg["personas"]["files"])
    atomic_write_json(tmp_path / "pool.json", {"personas": [persona_record(p) for p in personas], "dropped": [],
                                               "topics": load_topics(cfg["personas"]["topics"]), "rule": "all"})
    out = {}
    for name in ("none", "ib-b20"):
        selfchat_shard(cfg, setting_name=name, shard=0, model_dir=tmp_path / "model", pool_json=tmp_path / "pool.json",
                       out_dir=tmp_path / name / "out", checkpoint_dir=tmp_path / name / "ckpt")
        out[name] = [json.loads(p.read_text()) for p in sorted(Path(tmp_path / name / "out").glob("conv-*.json"))]
    assert len(out["ib-b20"]) == len(out["none"]) == 2
    assert all(r["complete"] for r in out["ib-b20"])
    for rec in out["ib-b20"]:
        assert rec["setting"] == rec["provenance"]["setting"]
        assert {k: rec["setting"][k] for k in ("name", "method", "value", "layers", "heads")} == {
            "name": "ib-b20", "method": "instaboost", "value": 20, "layers": [1], "heads": [0, 3]}
    agent = {n: [(r["history"], [p["answers"] for p in r["probes"]]) for r in recs] for n, recs in out.items()}
    assert [r["agent"] for r in out["ib-b20"]] == [r["agent"] for r in out["none"]]  # the same plans
    assert agent["ib-b20"] != agent["none"]
