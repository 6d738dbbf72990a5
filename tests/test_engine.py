"""The batched, cache-reusing engine on a real (tiny) model forward pass."""

import pytest
import torch

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from support.interventions import guided, split

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]


def convo(i):
    return [{"role": "system", "content": SYSTEMS[i % 3]}, {"role": "user", "content": "What is your hobby?" + " really" * i}]


def engine(tiny_model, **kw):
    model, tok = tiny_model
    return HFEngine(model, tok, **kw)


@pytest.mark.parametrize("sampling", [Sampling(do_sample=False, max_new_tokens=10), Sampling(max_new_tokens=10)])
def test_batched_equals_one_at_a_time(tiny_model_each_kernel, sampling):
    model = tiny_model_each_kernel
    reqs = [GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(4)]
    batched = engine(model, sampling=sampling).generate(reqs)
    single = [engine(model, sampling=sampling).generate([r])[0] for r in reqs]
    assert batched == single


def test_reply_depends_only_on_its_seed_not_on_batch_mates(tiny_model_each_kernel):
    model = tiny_model_each_kernel
    r = GenRequest(convo(1), seed=7)
    alone = engine(model).generate([r])[0]
    with_others = engine(model).generate([GenRequest(convo(0), seed=1), r, GenRequest(convo(2), seed=2)])[1]
    assert alone == with_others
    other_seed = engine(model).generate([GenRequest(convo(1), seed=8, n=1)])[0]
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
    ra, _ = a.generate(reqs), b.generate(reqs)  # b must see the same dialog
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
    at_one = engine(tiny_model, intervention=guided(1.0)).generate(
        [GenRequest(msgs, seed=5, intervene=True, negative_messages=neg)])
    assert plain == at_one
    strong = engine(tiny_model, intervention=guided(3.0)).generate(
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

    from personadrift.generation.sampling import nucleus

    g = torch.Generator().manual_seed(0)
    for spread in (0.5, 3.0, 0.01):  # peaked, typical, nearly flat (forces the full sort)
        scores = torch.randn(4, 3000, generator=g) * spread
        for temp, top_p in ((1.0, 0.9), (0.7, 0.5)):
            cand, probs = nucleus(scores, temp, top_p)
            ours = torch.zeros_like(scores).scatter_(1, cand, probs)
            ref = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temp)(None, scores.clone()))
            ref = torch.softmax(ref, dim=-1)
            assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("intervention", [split(0.5), split(0.25, [0]),
                                          guided(2.0)])
def test_interventions_keep_batched_equal_to_unbatched(tiny_model, intervention):
    s = Sampling(do_sample=False, max_new_tokens=8)

    def req(i):
        msgs = convo(i)
        return GenRequest(msgs, seed=i, key=f"c{i}", intervene=True, negative_messages=msgs[1:])

    batched = engine(tiny_model, sampling=s, intervention=intervention).generate([req(i) for i in range(3)])
    single = [engine(tiny_model, sampling=s, intervention=intervention).generate([req(i)])[0] for i in range(3)]
    assert batched == single


def test_prefill_groups_are_the_cheapest_partition():
    """Checked against every partition of the length-sorted units into consecutive groups."""
    import itertools
    import random

    from personadrift.generation.engine import prefill_groups

    def cost(groups, lengths, rows, fwd):
        return sum(fwd + sum(rows[u] for u in g) * max(lengths[u] for u in g) for g in groups)

    rnd = random.Random(0)
    for _ in range(200):
        n = rnd.randint(1, 7)
        lengths = [rnd.choice([3, 10, 20, 21, 40, 90]) for _ in range(n)]
        rows = [rnd.choice([1, 1, 2]) for _ in range(n)]
        fwd = rnd.choice([0, 16, 64, 500])
        groups = prefill_groups(lengths, rows, fwd)
        assert sorted(u for g in groups for u in g) == list(range(n))
        order = sorted(range(n), key=lambda u: (lengths[u], u))
        best = min(
            cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (n,))], lengths, rows, fwd)
            for k in range(n)
            for cuts in itertools.combinations(range(1, n), k)
        )
        assert cost(groups, lengths, rows, fwd) == best
    assert prefill_groups([30] * 5, [1] * 5) == [[0, 1, 2, 3, 4]]  # nothing to save: one forward
    assert len(prefill_groups([20] * 24 + [40] * 12, [1] * 36)) == 2  # a round's probes beside user turns


@pytest.mark.parametrize("intervention", [Intervention(), split(0.5), guided(2.0)])
def test_a_prefill_split_by_length_changes_no_reply(tiny_model, intervention):
    """Requests of very different prompt lengths prefill in separate forwards, then decode as one
    batch (``prefill_groups``): each reply equals the reply it gets alone, interventions included."""
    s = Sampling(max_new_tokens=8)

    def req(i):
        msgs = convo(i * 9)  # 0, 9, 18, ... extra words: prompt lengths far apart
        return GenRequest(msgs, seed=i, key=f"c{i}", intervene=True, negative_messages=msgs[1:])

    eng = engine(tiny_model, sampling=s, intervention=intervention)
    eng.prefill_forward_tokens = 0  # split wherever it saves padding
    batched = eng.generate([req(i) for i in range(4)])
    assert eng.stats.forward_calls > 8  # more than one prefill forward before the 7 decode steps
    single = [engine(tiny_model, sampling=s, intervention=intervention).generate([req(i)])[0] for i in range(4)]
    assert batched == single
    follow = [GenRequest(r.messages + [{"role": "assistant", "content": t[0]}, {"role": "user", "content": "More."}],
                         seed=9, key=r.key) for r, t in zip([req(i) for i in range(4)], batched)]
    again = engine(tiny_model, sampling=s, intervention=intervention)
    again.generate([req(i) for i in range(4)])
    assert eng.generate(follow) == again.generate(follow)  # the stored prefixes are the same too


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


# ---------------------------------------------------------------- batch-independent sampling (#15, #11)
def _scores(kind, v, g):
    if kind == "flat":
        return torch.zeros(v)  # every token tied: the nucleus needs the whole vocabulary
    if kind == "peaked":
        s = torch.randn(v, generator=g)
        s[int(torch.randint(v, (1,), generator=g))] += 30.0
        return s
    return torch.randn(v, generator=g) * 2.0


@pytest.mark.parametrize("top_k", [0, 5, 40])
def test_fast_and_full_sort_paths_pick_the_same_token_for_the_same_draw(top_k):
    from personadrift.generation.sampling import row_uniforms, sample_tokens

    g = torch.Generator().manual_seed(3)
    v = 300
    rows = [_scores(k, v, g) for k in ("flat", "peaked", "typical", "typical")]
    ties = torch.randn(v, generator=g).round()  # many exact ties across the candidates' edge
    scores = torch.stack(rows + [ties, ties * 0.1])
    for step in range(200):
        u = row_uniforms(list(range(len(scores))), step)
        fast = sample_tokens(scores, u, top_p=0.9, top_k=top_k, candidates=8)
        full = sample_tokens(scores, u, top_p=0.9, top_k=top_k, candidates=v)
        assert torch.equal(fast, full)


def test_a_rows_tokens_depend_only_on_its_scores_and_seed_at_any_batch_size():
    from personadrift.generation.sampling import row_uniforms, sample_tokens

    g = torch.Generator().manual_seed(4)
    v, steps = 700, 40
    target = [_scores("typical", v, g) for _ in range(steps)]
    seed = 123456789

    def tokens_of_target(size, neighbour, where):
        out = []
        for step in range(steps):
            rows = [_scores(neighbour, v, g) for _ in range(size)]
            rows[where] = target[step]
            seeds = [seed if i == where else 1000 + i for i in range(size)]
            picked = sample_tokens(torch.stack(rows), row_uniforms(seeds, step), top_p=0.9, candidates=16)
            out.append(int(picked[where]))
        return out

    alone = tokens_of_target(1, "typical", 0)
    assert len(set(alone)) > 5  # it really samples
    for size in (7, 48):
        for neighbour in ("flat", "peaked"):
            assert tokens_of_target(size, neighbour, size // 2) == alone


def test_top_k_then_top_p_matches_transformers_warpers():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from personadrift.generation.sampling import nucleus

    g = torch.Generator().manual_seed(5)
    for spread in (0.5, 3.0, 0.01):
        scores = torch.randn(4, 3000, generator=g) * spread
        for temp, top_p, top_k in ((1.0, 0.9, 50), (0.7, 0.5, 5), (1.0, 0.95, 2000)):
            cand, probs = nucleus(scores, temp, top_p, top_k)
            ours = torch.zeros_like(scores).scatter_(1, cand, probs)
            ref = TemperatureLogitsWarper(temp)(None, scores.clone())
            ref = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, ref))
            assert torch.allclose(ours, torch.softmax(ref, dim=-1), atol=1e-6)


def test_uniform_draws_are_a_pure_function_of_seed_and_step():
    from personadrift.generation.sampling import row_uniforms

    a = row_uniforms([1, 2, 3], 7)
    assert a.dtype == torch.float64 and a.device.type == "cpu"
    assert torch.equal(row_uniforms([3, 2, 1], 7).flip(0), a)  # no shared state between rows
    assert not torch.equal(row_uniforms([1, 2, 3], 8), a)
    big = row_uniforms(list(range(20000)), 0)
    assert 0 <= float(big.min()) and float(big.max()) < 1 and abs(float(big.mean()) - 0.5) < 0.01


class _Shape:
    """A forward hook on the output layer that flattens or sharpens chosen batch rows' logits
    (stand-ins for batch-mates whose next-token distribution is flat or peaked)."""

    def __init__(self, model, flat=(), peaked=()):
        self.flat, self.peaked = list(flat), list(peaked)
        self.handle = model.lm_head.register_forward_hook(self)

    def __call__(self, module, args, out):
        out = out.clone()
        if self.flat:
            out[self.flat] = 0.0
        if self.peaked:
            out[self.peaked] = out[self.peaked] * 40.0
        return out


@pytest.mark.parametrize("size", [1, 7, 48])
def test_engine_row_is_the_same_alone_and_beside_flat_or_peaked_rows(tiny_model_each_kernel, size):
    tiny_model = tiny_model_each_kernel
    model, tok = tiny_model
    n = 12
    s = Sampling(max_new_tokens=n, min_new_tokens=n, top_p=0.9)  # no row ends early: rows keep their places

    def run(requests, **shape):
        eng = engine(tiny_model, sampling=s)
        eng.nucleus_candidates = 16  # small enough that flat rows take the full-sort path
        eng.prefill_forward_tokens = 10**9  # one prefill forward: the hook's row numbers are the batch's
        hook = _Shape(model, **shape)
        try:
            return eng.generate(requests)
        finally:
            hook.handle.remove()

    target = GenRequest(convo(1), seed=11, key="t")
    alone = run([target])[0]
    where = size // 2
    others = [GenRequest(convo(i), seed=100 + i, key=f"o{i}") for i in range(size)]
    for kind in ("flat", "peaked"):
        reqs = list(others)
        reqs[where] = target
        mates = [i for i in range(size) if i != where]
        got = run(reqs, **{kind: mates})
        assert got[where] == alone, (kind, size)


def test_a_resumed_shard_equals_an_uninterrupted_one_when_batches_differ(tiny_model_dir, tmp_path):
    """Resume after an interruption in which conversations were checkpointed at different rounds:
    the resumed run puts other batch-mates beside each conversation, and must not change it."""
    import json
    from pathlib import Path

    from personadrift.config import validate_config
    from personadrift.protocol.personas import load_personas, load_topics, persona_record
    from personadrift.steps.models import fetch_model
    from personadrift.steps.selfchat import selfchat_shard
    from personadrift.storage import atomic_write_json

    REPO = Path(__file__).resolve().parents[1]
    cfg = validate_config({
        "model": {"name": "tiny", "source": "local", "path": str(tiny_model_dir)},
        "selfchat": {"conversations": 4, "shard_size": 4, "turns": 6, "runs": 2,
                     "max_new_tokens": 6, "probe_max_new_tokens": 5},
        "personas": {"files": [str(REPO / "personas/benchmark/persona.yaml")],
                     "topics": str(REPO / "personas/topics.yaml")},
    })
    fetch_model(cfg, tmp_path / "model")
    pool = {"personas": [persona_record(p) for p in load_personas(cfg["personas"]["files"])], "dropped": [],
            "topics": load_topics(cfg["personas"]["topics"]), "rule": "all"}
    atomic_write_json(tmp_path / "pool.json", pool)

    def shard(name):
        selfchat_shard(cfg, setting_name="none", shard=0, model_dir=tmp_path / "model", pool_json=tmp_path / "pool.json",
                       out_dir=tmp_path / name / "out", checkpoint_dir=tmp_path / name / "ckpt")
        return [json.loads(p.read_text()) for p in sorted((tmp_path / name / "out").glob("conv-*.json"))]

    reference = shard("reference")
    # an interrupted run: conversation 0 after round 1, conversation 2 never started, the others after round 2
    for rec in reference:
        s = rec["conversation"]
        if s == 2:
            continue
        t = 2 if s == 0 else 4
        part = dict(rec, history=rec["history"][:t], probes=[p for p in rec["probes"] if p["turn"] <= t],
                    complete=False)
        atomic_write_json(tmp_path / "resumed" / "ckpt" / f"conv-{s:05d}.json", part)
    resumed = shard("resumed")
    events = [json.loads(x) for x in (tmp_path / "resumed" / "ckpt" / "events.jsonl").read_text().splitlines()]
    assert {e["turn"] for e in events if e["conversation"] == 1} == {5, 6}  # really resumed
    assert min(e["turn"] for e in events if e["conversation"] == 0) == 3
    keys = ("conversation", "history", "probes")
    assert [{k: r[k] for k in keys} for r in resumed] == [{k: r[k] for k in keys} for r in reference]


def test_small_max_batch_groups_by_length_without_changing_replies(tiny_model):
    s = Sampling(max_new_tokens=6)
    reqs = [GenRequest(convo((i * 5) % 7), seed=i, key=f"c{i}", n=1 + i % 2, persist=False) for i in range(7)]
    small = engine(tiny_model, sampling=s, max_batch=3)
    assert small.generate(reqs) == engine(tiny_model, sampling=s, max_batch=64).generate(reqs)
    assert small.stats.forward_calls > 0


def test_sampling_uses_no_torch_generator_or_global_random_stream(tiny_model):
    """What made sampling fail on a GPU (#11): a CPU ``torch.Generator`` passed to an op on the
    model's device. The engine's draws come from a counter-based hash on the host; no torch op
    during generation may take a generator or read the global random stream."""
    from torch.overrides import TorchFunctionMode

    random_ops = {torch.multinomial, torch.rand, torch.randn, torch.randint, torch.bernoulli, torch.normal,
                  torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.exponential_}

    class Watch(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            assert "generator" not in kwargs and func not in random_ops, func
            Watch.calls += 1
            return func(*args, **kwargs)

    eng = engine(tiny_model, sampling=Sampling(max_new_tokens=4, top_k=20))
    eng.nucleus_candidates = 16
    reqs = [GenRequest(convo(i), seed=i, n=2, persist=False) for i in range(3)]
    expected = eng.generate(reqs)
    with Watch():
        got = engine(tiny_model, sampling=Sampling(max_new_tokens=4, top_k=20)).generate(reqs)
    assert Watch.calls > 100 and got == expected


def test_requests_with_their_own_budgets_share_a_call_without_changing_replies(tiny_model):
    """A round's probes (short budget, several samples, forks) and the next user turn (longer
    budget, persisted) go into one call (#16); each reply equals what a call of its own gives,
    and stops at its own budget."""
    s = Sampling(max_new_tokens=9, min_new_tokens=9)  # every reply runs to its budget
    probes = [GenRequest(convo(i), seed=10 + i, key=f"c{i}/agent", n=2, persist=False, max_new_tokens=4)
              for i in range(3)]
    turns = [GenRequest(convo(i + 1), seed=20 + i, key=f"c{i}/user", max_new_tokens=7) for i in range(3)]
    shared = engine(tiny_model, sampling=s).complete(probes + turns)
    alone = engine(tiny_model, sampling=s).complete(probes, max_new_tokens=4)
    alone += engine(tiny_model, sampling=s).complete(turns, max_new_tokens=7)
    assert shared == alone
    assert {c.new_tokens for per in shared[:3] for c in per} == {4}
    assert {c.new_tokens for per in shared[3:] for c in per} == {7}
    # the call's own budget applies to requests without one
    plain = engine(tiny_model, sampling=s).complete([GenRequest(convo(0), seed=1)], max_new_tokens=5)
    assert plain[0][0].new_tokens == 5


@pytest.mark.parametrize("intervention", [Intervention(), split(0.5), guided(2.0)])
def test_bfloat16_generates_under_every_intervention(tiny_model_each_dtype, intervention):
    """The paper config runs bfloat16 on GPUs and ``bfloat16_if_native`` on CPUs: split-softmax
    and guidance work in that dtype (finite scores, every reply to its budget, batched rows the
    same length as alone). Texts are not compared: a bfloat16 forward is not bitwise independent
    of its batch-mates (a row's logits move by one bfloat16 step), which docs/methods.md states."""
    s = Sampling(max_new_tokens=6, min_new_tokens=6)
    msgs = [convo(i) for i in range(3)]
    reqs = [GenRequest(m, seed=i, key=f"c{i}", intervene=True, negative_messages=m[1:]) for i, m in enumerate(msgs)]
    eng = engine(tiny_model_each_dtype, sampling=s, intervention=intervention)
    out = eng.complete(reqs)
    assert [c[0].new_tokens for c in out] == [6, 6, 6]
    lp = eng.next_token_logprobs(reqs)  # under guidance: the unnormalised mix
    assert lp.shape[0] == 3 and torch.isfinite(lp).all()


def test_bfloat16_if_native_follows_the_hardware(monkeypatch):
    from personadrift.generation import models

    monkeypatch.setattr(models, "native_bf16", lambda device: True)
    assert models.resolve_dtype("bfloat16_if_native", "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "native_bf16", lambda device: False)
    assert models.resolve_dtype("bfloat16_if_native", "cpu") == torch.float32
    assert models.resolve_dtype("float32", "cpu") == torch.float32 and models.resolve_dtype("auto", "cpu") == "auto"
    # on this machine, the answer is what the CPU reports
    monkeypatch.undo()
    assert models.native_bf16("cpu") == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
