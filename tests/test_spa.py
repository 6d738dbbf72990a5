"""Selective prompt anchoring (SPA) on the engine: against a direct two-forward reference on the tiny
model, plain generation at omega = 1, batched = one at a time, and a self-chat with an spa setting."""

import json

import pytest
import torch

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from personadrift.interventions.spa import SPAHook
from support.interventions import anchored

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]


def convo(i):
    return [{"role": "system", "content": SYSTEMS[i % 3]}, {"role": "user", "content": "What is your hobby?" + " really" * i}]


def spa_request(messages, seed=0, key=None, **kw):
    # as the method builds it: the branch is the same conversation (the hook masks its prompt)
    return GenRequest(messages, seed=seed, key=key, intervene=True, negative_messages=list(messages), **kw)


@torch.no_grad()
def reference_logits(model, ids: list[int], span, blank_id):
    """Two plain forwards of one sequence: its logits [len, vocab] as it is, and with the tokens of
    ``span`` entering as the embedding of ``blank_id`` (None: zero vectors), positions unchanged."""
    x = torch.tensor([ids])
    plain = model(input_ids=x).logits[0].float()
    embeds = model.get_input_embeddings()(x).clone()
    s, e = span
    embeds[0, s:e] = 0.0 if blank_id is None else model.get_input_embeddings().weight[blank_id]
    masked = model(inputs_embeds=embeds).logits[0].float()
    return plain, masked


def spa_reference(plain, masked, omega):
    """SPA's definition: masked + omega (original - masked), as a distribution."""
    return torch.log_softmax(masked + omega * (plain - masked), dim=-1)


def spa(omega: float, token: str | None) -> Intervention:
    """SPA's hook with the masked pass reading the tokenizer's ``token`` (None: zero vectors)."""
    return Intervention((SPAHook(omega=omega, blank_token=token),))


@pytest.mark.parametrize("token", ["pad", "eos", None])
def test_engine_scores_equal_two_plain_forwards_mixed_as_spa_defines(tiny_model, token):
    """next_token_logprobs and continuation_logprobs of a left-padded batch of different prompts,
    second turns re-using each conversation's cached prefix (and its masked branch's), equal SPA
    computed here from two plain forwards of each full sequence."""
    model, tok = tiny_model
    omega = 2.5
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=6), intervention=spa(omega, token))
    blank_id = None if token is None else getattr(tok, f"{token}_token_id")
    first = [spa_request(convo(i), seed=i, key=f"c{i}") for i in range(3)]
    replies = eng.generate(first)  # stores c{i} and its masked branch c{i}#uncond
    second = [spa_request(r.messages + [{"role": "assistant", "content": t[0]},
                                        {"role": "user", "content": "And why" + "?" * (i + 1)}], key=r.key)
              for i, (r, t) in enumerate(zip(first, replies))]
    reused = eng.stats.reused_tokens
    lp = eng.next_token_logprobs(second)
    assert eng.stats.reused_tokens > reused  # the second turn came from the cache, both branches
    conts = [tok("Tennis, because" + " yes" * i, add_special_tokens=False).input_ids for i in range(3)]
    sums = eng.continuation_logprobs(second, conts)
    lengths = set()
    for i, r in enumerate(second):
        rendered = eng.chat.render(r.messages)
        lengths.add(len(rendered.ids))
        assert rendered.prompt_span is not None
        n = len(rendered.ids)
        plain, masked = reference_logits(model, rendered.ids + conts[i], rendered.prompt_span, blank_id)
        assert (plain[n - 1] - masked[n - 1]).abs().max() > 0.01  # masking the prompt does change the logits
        ref = spa_reference(plain, masked, omega)
        # the engine's mix is unnormalised: compare distributions
        assert torch.allclose(torch.log_softmax(lp[i], -1), ref[n - 1], atol=2e-5, rtol=0)
        targets = torch.tensor(conts[i])
        want = ref[n - 1 : n - 1 + len(targets)].gather(1, targets[:, None]).sum().double()
        assert abs(float(sums[i]) - float(want)) < 1e-4 * len(targets), (i, float(sums[i]), float(want))
    assert len(lengths) == 3  # different lengths: the batch was left-padded


def test_the_masked_pass_reads_the_named_tokens_embedding_and_a_missing_token_is_refused(tiny_model):
    model, tok = tiny_model
    reqs = [spa_request(convo(1))]

    def scores(token):
        return HFEngine(model, tok, intervention=spa(2.0, token)).next_token_logprobs(reqs)

    zero, pad, eos = scores(None), scores("pad"), scores("eos")
    weight = model.get_input_embeddings().weight
    assert not weight[tok.eos_token_id].eq(0).all() and not torch.allclose(eos, zero, atol=1e-3)
    # the tiny model's pad embedding is the zero vector (its padding_idx): the same masked pass
    assert weight[tok.pad_token_id].eq(0).all() and torch.equal(pad, zero)
    assert tok.unk_token_id is None  # the tiny tokenizer has no unk token
    with pytest.raises(ValueError, match="'unk' token, but this tokenizer has none"):
        HFEngine(model, tok, intervention=anchored(2.0, "unk"))


def test_omega_one_is_plain_generation_and_a_larger_omega_is_not(tiny_model):
    model, tok = tiny_model
    msgs = convo(1)
    plain = HFEngine(model, tok).generate([GenRequest(msgs, seed=5, n=3, persist=False)])
    at_one = HFEngine(model, tok, intervention=anchored(1.0)).generate([spa_request(msgs, seed=5, n=3, persist=False)])
    assert plain == at_one
    strong = HFEngine(model, tok, intervention=anchored(4.0)).generate([spa_request(msgs, seed=5, n=3, persist=False)])
    assert strong != plain


@pytest.mark.parametrize("mask", ["pad", "zero"])
def test_sampled_generation_batched_equals_one_at_a_time(tiny_model, mask):
    model, tok = tiny_model
    s = Sampling(max_new_tokens=10)
    reqs = [spa_request(convo(i), seed=i, key=f"c{i}") for i in range(4)]
    batched = HFEngine(model, tok, sampling=s, intervention=anchored(2.0, mask)).generate(reqs)
    single = [HFEngine(model, tok, sampling=s, intervention=anchored(2.0, mask)).generate([r])[0] for r in reqs]
    assert batched == single


def test_the_method_builds_its_setting(tmp_path):
    from personadrift.interventions.registry import METHODS
    from personadrift.interventions.settings import expand_settings
    from personadrift.interventions.spa import SPAHook

    assert "spa" in METHODS  # registered by its entry point
    settings = [s for s in expand_settings({"a": {"method": "spa", "omega": [1.5, 3], "mask": "zero",
                                                  "apply_to": "probes"}}) if s.method == "spa"]
    assert [s.name for s in settings] == ["a-o1.5", "a-o3"]
    s = settings[0]
    hook = s.engine_intervention().hook("branch")
    assert hook == SPAHook(omega=1.5, blank_token=None) and hook.blank_prompt
    msgs = convo(0)
    assert s.negative_messages(msgs) == msgs and s.rows_per_sample() == 2
    assert s.intervenes("probe") and not s.intervenes("dialog") and s.intervenes("mmlu")
    assert s.needs_internals and not s.impl.single_turn_as_baseline


def test_a_self_chat_under_spa_runs_on_the_engine(tiny_model, tmp_path):
    """A unit-sized self-chat with spa settings: every agent request is intervened with its own
    messages as the branch; at omega = 1 every turn and probe equals the baseline's, at omega = 3
    the texts change."""
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings
    from test_selfchat import _plans, make_config

    model, tok = tiny_model
    cfg = make_config("unused", turns=4, max_new_tokens=8, probe_max_new_tokens=5, runs=1)
    cfg["interventions"] = {"none": {"method": "none"}, "spa": {"method": "spa", "omega": [1, 3]}}
    records, requests = {}, {}
    for setting in expand_settings(cfg["interventions"]):
        eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=8), intervention=setting.engine_intervention())
        seen = requests[setting.name] = []
        original = eng.complete

        def recorded(reqs, _orig=original, _seen=seen, **kw):
            _seen.extend(reqs)
            return _orig(reqs, **kw)

        eng.complete = recorded
        records[setting.name] = ShardRun(eng, config=cfg, setting=setting, plans=_plans(2),
                                         checkpoint_dir=tmp_path / setting.name, provenance={}).run()
    assert set(records) == {"none", "spa-o1", "spa-o3"}
    agent = [r for r in requests["spa-o3"] if r.key.endswith("/agent")]
    assert agent and all(r.intervene and r.negative_messages == r.messages for r in agent)
    assert all(r.messages[0]["role"] == "system" for r in agent)
    keys = ("history", "turns", "probes")

    def texts(name):
        return json.dumps([{k: rec[k] for k in keys} for rec in records[name]], sort_keys=True)

    assert all(len(rec["history"]) == 4 for recs in records.values() for rec in recs)
    assert texts("spa-o1") == texts("none")
    assert texts("spa-o3") != texts("none")



@pytest.mark.parametrize("token", ["eos", None])
def test_a_prefill_split_by_length_changes_no_reply(tiny_model, token):
    """Requests of very different prompt lengths prefill in separate forwards (each with its own
    masked slots), then decode as one batch: each reply equals the reply it gets alone, and the
    stored prefixes (the masked branch's included) serve the next turn as a fresh run's do."""
    model, tok = tiny_model
    s = Sampling(max_new_tokens=8)

    def req(i):
        return spa_request(convo(i * 9), seed=i, key=f"c{i}")  # prompt lengths far apart

    eng = HFEngine(model, tok, sampling=s, intervention=spa(2.0, token))
    eng.prefill_forward_tokens = 0  # split wherever it saves padding
    batched = eng.generate([req(i) for i in range(4)])
    assert eng.stats.forward_calls > 8  # more than one prefill forward before the 7 decode steps
    single = [HFEngine(model, tok, sampling=s, intervention=spa(2.0, token)).generate([req(i)])[0] for i in range(4)]
    assert batched == single
    follow = [spa_request(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "More."}],
                          seed=9, key=r.key) for r, t in zip([req(i) for i in range(4)], batched)]
    again = HFEngine(model, tok, sampling=s, intervention=spa(2.0, token))
    again.generate([req(i) for i in range(4)])
    assert eng.generate(follow) == again.generate(follow)


def test_spa_generates_in_each_dtype(tiny_model_each_dtype):
    """Finite scores and every reply to its budget in float32 and bfloat16 (the mix runs in float32)."""
    model, tok = tiny_model_each_dtype
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=6, min_new_tokens=6), intervention=spa(3.0, "eos"))
    reqs = [spa_request(convo(i), seed=i, key=f"c{i}") for i in range(3)]
    assert [c[0].new_tokens for c in eng.complete(reqs)] == [6, 6, 6]
    lp = eng.next_token_logprobs(reqs)
    assert lp.dtype == torch.float32 and lp.shape[0] == 3 and torch.isfinite(lp).all()


def test_serve_flags_build_the_setting_and_serve_what_the_engine_generates(tiny_model):
    """--spa-omega / --spa-mask make the setting a config entry would; a served reply equals the
    engine's own under SPA; a bad omega names its flag."""
    from personadrift.errors import InputError
    from personadrift.interventions.settings import settings_from_flags
    from personadrift.runtime.factory import combined_intervention
    from personadrift.runtime.serve import build_app, build_parser, method_flags
    from test_serve import post

    settings = settings_from_flags(method_flags(build_parser().parse_args(["--tiny", "--spa-omega", "3",
                                                                           "--spa-mask", "zero"])))
    assert [s.name for s in settings] == ["spa-o3"]
    iv = combined_intervention(settings)
    assert iv.hooks == (SPAHook(omega=3.0, blank_token=None),)
    model, tok = tiny_model
    reqs = [GenRequest(convo(i), seed=i, persist=False) for i in range(3)]
    body = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 8}
    with build_app(HFEngine(model, tok, intervention=iv), model_name="tiny-spa",
                   settings=settings)("127.0.0.1", 0).start() as srv:
        served = [post(srv.url, {**body, "messages": r.messages, "seed": r.seed})[1]["choices"][0]["message"]["content"]
                  for r in reqs]
    s = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=8)
    direct = HFEngine(model, tok, sampling=s, intervention=iv).generate(
        [spa_request(r.messages, seed=r.seed, persist=False) for r in reqs])
    assert served == [t[0] for t in direct]
    assert served != [t[0] for t in HFEngine(model, tok, sampling=s).generate(reqs)]  # SPA changed replies
    with pytest.raises(InputError, match=r"--spa-omega: .*1"):
        settings_from_flags({"--spa-omega": 0.5})


def test_a_mask_token_the_tokenizer_lacks_is_refused_at_job_start_naming_the_key(tiny_model):
    from personadrift.errors import InputError
    from personadrift.interventions.settings import expand_settings
    from personadrift.runtime.factory import engine_on

    model, tok = tiny_model
    setting = next(s for s in expand_settings({"a": {"method": "spa", "omega": [2], "mask": "unk"}})
                   if s.method == "spa")
    with pytest.raises(InputError, match=r"^cfg\.yaml: interventions\.a\.mask: 'unk': the model's tokenizer has no unk"):
        engine_on(model, tok, settings=[setting], where="cfg.yaml")
    ok = next(s for s in expand_settings({"a": {"method": "spa", "omega": [2], "mask": "zero"}}) if s.method == "spa")
    assert engine_on(model, tok, settings=[ok]).branch == SPAHook(omega=2.0, blank_token=None)
