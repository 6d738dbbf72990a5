"""Drift without a judge (analysis/drift_signals.py, HFEngine.continuation_states): each signal
against a direct computation with plain forwards of the tiny model."""

from __future__ import annotations

import pytest

SYSTEM = "You love playing tennis and bring it up whenever you can."
PROBE = "What do you do on weekends?"


def _setting(name="none", **options):
    from personadrift.interventions.settings import expand_settings

    return expand_settings({name: {"method": "none", **options}})[0]


def _record(answers_by_round: dict[int, list[str]]) -> dict:
    """A transcript record in the self-chat's shape: probes after history entries 0, 2, 4, ..."""
    history = ["Is tea better than coffee?", "Tea, after a match.", "Why tea?", "It calms me down.",
               "And coffee?", "Coffee is for the morning."]
    probes = []
    for rnd, answers in answers_by_round.items():
        for kind, persona in (("agent", "tennis"), ("user", "pirate")):
            probes.append({"round": rnd, "turn": 2 * rnd, "kind": kind, "persona": persona,
                           "question": PROBE if kind == "agent" else "Say something like a pirate.",
                           "answers": answers, "completions": [], "context": "ok"})
    return {"conversation": 3, "agent": {"id": "tennis", "system_prompt": SYSTEM},
            "user": {"id": "pirate", "system_prompt": "You talk like a pirate."},
            "topic": history[0], "history": history, "probes": probes, "complete": True}


def _plain(model, ids):
    """Log-softmax [positions, vocab] and hidden states of one plain forward of ``ids``."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return torch.log_softmax(out.logits[0].float(), -1), out.hidden_states


def test_continuation_states_match_plain_forwards(tiny_model):
    """Every position's distribution and the chosen layer's output, per request, whatever the
    chunking (max_batch 2, continuations of several lengths)."""
    import torch

    from personadrift.generation.api import GenRequest
    from personadrift.generation.engine import HFEngine

    model, tok = tiny_model
    engine = HFEngine(model, tok, max_batch=2)
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
            for q in ("Hello there.", "What is your favourite sport, and why?", "Hi.")]
    conts = [tok("Tennis, of course.", add_special_tokens=False)["input_ids"],
             tok("I play every day", add_special_tokens=False)["input_ids"][:3],
             tok("Yes", add_special_tokens=False)["input_ids"]]
    reqs = [GenRequest(m, seed=0) for m in msgs]
    layer = 0  # not the last: transformers gives the last layer's output after the final norm
    assert model.config.num_hidden_layers > 1
    seen = set()
    for i, logp, hidden in engine.continuation_states(reqs, conts, layer=layer):
        seen.add(i)
        ids = engine.chat.render(msgs[i]).ids
        ref, states = _plain(model, ids + conts[i])
        n = len(conts[i])
        assert logp.shape == (n, ref.shape[-1])
        torch.testing.assert_close(logp, ref[len(ids) - 1 : len(ids) - 1 + n], atol=1e-4, rtol=0)
        # hidden_states[0] is the embeddings: decoder layer L's output is hidden_states[L + 1]
        torch.testing.assert_close(hidden, states[layer + 1][0, len(ids):].float(), atol=1e-4, rtol=0)
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="decoder layers"):
        next(engine.continuation_states(reqs, conts, layer=99))


@pytest.mark.parametrize("method", ["guidance", "split_softmax"])
def test_continuation_states_apply_interventions_as_scoring_does(tiny_model, method):
    """Under a branch hook (guidance: the mixed, renormalised distribution) and an attention hook, the
    distributions' log-probabilities of the continuation's own tokens sum to continuation_logprobs'
    (itself checked against a direct reference in test_mmlu.py)."""
    import torch

    from personadrift.generation.api import GenRequest
    from personadrift.generation.dialog import negative_branch
    from personadrift.generation.engine import HFEngine
    from support.interventions import guided, split

    model, tok = tiny_model
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
            for q in ("Hello there.", "What is your favourite sport, and why?")]
    conts = [tok("Tennis, of course.", add_special_tokens=False)["input_ids"],
             tok("I play", add_special_tokens=False)["input_ids"]]
    iv = guided(1.5) if method == "guidance" else split(0.25)
    reqs = [GenRequest(m, seed=0, intervene=True, negative_messages=negative_branch(m) if method == "guidance" else None)
            for m in msgs]
    try:
        engine = HFEngine(model, tok, intervention=iv, max_batch=3)
        want = engine.continuation_logprobs(reqs, conts)
        got = {i: float(lp.gather(1, torch.tensor(conts[i])[:, None]).sum())
               for i, lp, _ in engine.continuation_states(reqs, conts)}
        plain = HFEngine(model, tok).continuation_logprobs([GenRequest(m, seed=0) for m in msgs], conts)
    finally:
        model.set_attn_implementation("sdpa")
    assert [got[i] for i in range(len(reqs))] == pytest.approx(want.tolist(), abs=1e-4)
    assert max(abs(a - b) for a, b in zip(want.tolist(), plain.tolist())) > 1e-3  # the intervention acts


def test_kl_and_projection_against_two_plain_forwards(tiny_model):
    """(a) the KL of each probe answer is torch's KL of the two plain forwards' log-softmaxes over
    the answer's positions (dialog context from the dialog; fresh: system prompt and probe); round 0
    is the fresh context itself, so its KL is zero. (b) the projection is the dialog forward's
    hidden states at the answer's tokens, by hand, on a vector built here."""
    import torch
    import torch.nn.functional as F

    from personadrift.analysis.drift_signals import measure
    from personadrift.capability.mmlu.scoring import ReplyTokens
    from personadrift.generation.dialog import probe_messages
    from personadrift.generation.engine import HFEngine

    model, tok = tiny_model
    engine = HFEngine(model, tok, max_batch=3)
    rec = _record({0: ["I play tennis."], 1: ["Tennis again!", "Weekends mean the court."],
                   2: ["Arr, I sail."]})
    layer = 0
    g = torch.Generator().manual_seed(0)
    vectors = {p: torch.randn(model.config.hidden_size, generator=g) for p in ("tennis", "pirate")}
    df = measure(engine, [rec], _setting(), vectors=(layer, vectors))
    assert engine.stats.reused_tokens > 0  # a later round re-uses the dialog prefix an earlier one cached
    assert not engine.prefixes.peek("3/signals")  # and nothing stays cached
    assert len(df) == 2 * 4 and df["kl"].notna().all() and df["projection"].notna().all()
    reply = ReplyTokens(tok)
    for probe in rec["probes"]:
        fresh = probe_messages(SYSTEM, [], probe["question"])
        dialog = probe_messages(SYSTEM, rec["history"][: probe["turn"]], probe["question"])
        for s, answer in enumerate(probe["answers"]):
            cont = reply(dialog, answer)
            d_ids, f_ids = engine.chat.render(dialog).ids, engine.chat.render(fresh).ids
            lp_d, states = _plain(model, d_ids + cont)
            lp_f, _ = _plain(model, f_ids + cont)
            lp_d = lp_d[len(d_ids) - 1 : len(d_ids) - 1 + len(cont)]
            lp_f = lp_f[len(f_ids) - 1 : len(f_ids) - 1 + len(cont)]
            ref_kl = float(F.kl_div(lp_f, lp_d, log_target=True, reduction="none").sum(-1).mean())
            v = vectors[probe["persona"]]
            ref_proj = float((states[layer + 1][0, len(d_ids):] @ (v / v.norm())).mean())
            row = df[(df["round"] == probe["round"]) & (df["kind"] == probe["kind"]) & (df["sample"] == s)].iloc[0]
            assert row["answer_tokens"] == len(cont)
            assert row["kl"] == pytest.approx(ref_kl, abs=1e-5)
            assert row["projection"] == pytest.approx(ref_proj, abs=1e-4)
    assert df.loc[df["round"] == 0, "kl"].abs().max() < 1e-6
    assert df.loc[df["round"] > 0, "kl"].min() > 1e-4  # the dialog moves the tiny model


def test_missing_persona_vector_and_unasked_probes(tiny_model):
    import torch

    from personadrift.analysis.drift_signals import measure
    from personadrift.errors import InputError
    from personadrift.generation.engine import HFEngine

    model, tok = tiny_model
    engine = HFEngine(model, tok)
    rec = _record({0: ["I play tennis."], 1: []})
    for p in rec["probes"]:
        if p["round"] == 1:
            p["context"] = "overflow"
    df = measure(engine, [rec], _setting())
    assert df["projection"].isna().all()  # no vectors: no projection
    assert df.loc[df["round"] == 1, "kl"].isna().all() and (df.loc[df["round"] == 1, "context"] == "overflow").all()
    with pytest.raises(InputError, match="pirate: no vector for this persona"):
        measure(engine, [rec], _setting(), vectors=(0, {"tennis": torch.ones(model.config.hidden_size)}),
                vectors_source="persona_vectors/layer0.safetensors")


def test_interventions_apply_in_both_contexts(tiny_model):
    """Under split-softmax on probes, round 0 still compares a context with itself (KL zero), and the
    later rounds' KL is the intervened model's, not the plain one's."""
    from personadrift.analysis.drift_signals import measure
    from personadrift.generation.engine import HFEngine
    from personadrift.interventions.settings import expand_settings
    from support.interventions import split

    model, tok = tiny_model
    rec = _record({0: ["I play tennis."], 1: ["Tennis again!"]})
    setting = next(s for s in expand_settings({"split": {"method": "split_softmax", "k": [0.25]}})
                   if s.method == "split_softmax")
    assert setting.intervenes("probes")
    try:
        got = measure(HFEngine(model, tok, intervention=split(0.25)), [rec], setting)
    finally:
        model.set_attn_implementation("sdpa")
    plain = measure(HFEngine(model, tok), [rec], _setting())
    assert got.loc[got["round"] == 0, "kl"].abs().max() < 1e-6
    later = abs(got.loc[got["round"] == 1, "kl"].to_numpy() - plain.loc[plain["round"] == 1, "kl"].to_numpy())
    assert later.max() > 1e-5


def test_signals_step_on_a_small_real_study(tiny_model_dir, tmp_path):
    """(c) the steps of rules/signals.smk on real tiny-model transcripts (the baseline and the
    repetition baseline, whose dialog context re-inserts the system prompt): one row per probe
    answer, the judge's rows exactly; zero KL at round 0; a repetition answer's KL equals the direct
    computation in the context the self-chat rendered; then the tables, claims and association."""
    import json

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.capability.mmlu.scoring import ReplyTokens
    from personadrift.config import validate_config
    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.dialog import probe_messages
    from personadrift.interventions.settings import setting_by_name
    from personadrift.protocol.personas import load_personas, load_topics, persona_record
    from personadrift.steps.models import fetch_model
    from personadrift.steps.score import score
    from personadrift.steps.selfchat import selfchat_shard
    from personadrift.steps.signals import signal_tables, signals
    from personadrift.storage import atomic_write_json, read_json
    from personadrift.tables import provenance_path, read_table
    from support.workflow import REPO

    cfg = validate_config({
        "model": {"name": "tiny", "source": "local", "path": str(tiny_model_dir)},
        "selfchat": {"conversations": 3, "shard_size": 3, "turns": 6, "runs": 2,
                     "max_new_tokens": 6, "probe_max_new_tokens": 5},
        "personas": {"files": [str(REPO / "personas/benchmark/persona.yaml")],
                     "topics": str(REPO / "personas/topics.yaml")},
        "interventions": {"none": {"method": "none"}, "repeat": {"method": "repetition", "every": [1]}},
        "scoring": {"resamples": 200},
    })
    fetch_model(cfg, tmp_path / "model")
    personas = load_personas(cfg["personas"]["files"])
    atomic_write_json(tmp_path / "pool.json", {"personas": [persona_record(p) for p in personas], "dropped": [],
                                               "topics": load_topics(cfg["personas"]["topics"]), "rule": "all"})
    sig_csvs, score_csvs = [], []
    for name in ("none", "repeat-every1"):
        out = tmp_path / "transcripts" / name
        selfchat_shard(cfg, setting_name=name, shard=0, model_dir=tmp_path / "model", pool_json=tmp_path / "pool.json",
                       out_dir=out, checkpoint_dir=tmp_path / "ckpt" / name)
        score_csvs.append(tmp_path / f"scores-{name}.csv")
        score(cfg, [out], score_csvs[-1])
        sig_csvs.append(tmp_path / f"signals-{name}.csv")
        signals(cfg, setting_name=name, model_dir=tmp_path / "model", transcript_dirs=[out], out_csv=sig_csvs[-1])
        sig, sc = read_table(sig_csvs[-1]), read_table(score_csvs[-1])
        keys = ["conversation", "round", "kind", "sample"]
        assert sorted(map(tuple, sig[keys].to_numpy().tolist())) == sorted(map(tuple, sc[keys].to_numpy().tolist()))
        assert len(sig) == 3 * 4 * 2 * 2  # conversations x rounds 0..3 x probe kinds x runs
        answered = sig["answer_tokens"] > 0
        assert answered.sum() > len(sig) // 2
        assert sig.loc[answered & (sig["round"] == 0), "kl"].abs().max() < 1e-5
        assert sig.loc[answered & (sig["round"] > 0), "kl"].min() > 0
        assert sig["projection"].isna().all()  # no persona vectors given
        assert json.loads(provenance_path(sig_csvs[-1]).read_text())["seconds"] > 0

    # with persona vectors (a file as rule persona_vectors writes it): the projection of every answer
    from personadrift.protocol.persona_vectors import PersonaVectors, write

    g = torch.Generator().manual_seed(1)
    hidden_size = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.hidden_size
    vectors = {p.id: torch.randn(hidden_size, generator=g) for p in personas}
    write(PersonaVectors(0, vectors, 1.0), tmp_path / "layer0.safetensors", provenance={})
    with_vectors = tmp_path / "signals-none-vectors.csv"
    signals(cfg, setting_name="none", model_dir=tmp_path / "model", transcript_dirs=[tmp_path / "transcripts" / "none"],
            out_csv=with_vectors, vectors_path=tmp_path / "layer0.safetensors")
    sig, plain = read_table(with_vectors), read_table(sig_csvs[0])
    answered = sig["answer_tokens"] > 0
    assert sig.loc[answered, "projection"].notna().all() and sig.loc[~answered, "projection"].isna().all()
    assert sig["kl"].equals(plain["kl"])
    assert json.loads(provenance_path(with_vectors).read_text())["vectors"]["layer"] == 0

    # one repetition answer by hand: the system prompt is re-inserted before later user turns
    rec = read_json(next((tmp_path / "transcripts" / "repeat-every1").glob("conv-*.json")))
    probe = next(p for p in rec["probes"] if p["round"] == 3 and p["answers"] and p["answers"][0])
    setting = setting_by_name(cfg["interventions"], "repeat-every1")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = ChatFormat(tok)
    rep = setting.repetition().for_template(chat.mid_dialog_system)
    dialog = probe_messages(rec["agent"]["system_prompt"], rec["history"][: probe["turn"]], probe["question"], rep)
    assert sum(m["role"] == "system" for m in dialog) > 1
    fresh = probe_messages(rec["agent"]["system_prompt"], [], probe["question"])
    cont = ReplyTokens(tok)(dialog, probe["answers"][0])
    d_ids, f_ids = chat.render(dialog).ids, chat.render(fresh).ids
    lp_d, _ = _plain(model, d_ids + cont)
    lp_f, _ = _plain(model, f_ids + cont)
    ref = float(F.kl_div(lp_f[len(f_ids) - 1 : -1], lp_d[len(d_ids) - 1 : -1], log_target=True,
                         reduction="none").sum(-1).mean())
    sig = read_table(sig_csvs[1])
    row = sig[(sig["conversation"] == rec["conversation"]) & (sig["round"] == 3) & (sig["kind"] == probe["kind"])
              & (sig["sample"] == 0)].iloc[0]
    assert row["kl"] == pytest.approx(ref, abs=1e-5)

    out = {k: tmp_path / f"{k}.csv" for k in ("by_round", "change")}
    signal_tables({**cfg, "seed": 0}, sig_csvs, score_csvs, out["by_round"], out["change"], tmp_path / "assoc.json")
    by_round, change = read_table(out["by_round"]), read_table(out["change"])
    assert set(by_round["signal"]) == {"kl"} and set(by_round["round"]) == {0, 1, 2, 3}
    assert set(by_round["setting"]) == {"none", "repeat-every1"}
    kl_shift = change[(change["signal"] == "kl") & (change["claim"] == "shift")]
    assert kl_shift["p_value"].isna().all() and not kl_shift["significant"].any()
    drift = change[change["claim"] == "drift"]
    assert len(drift) == 4 and drift["p_holm"].notna().all()
    assert (change["n_comparisons"] == 4).all()
    assoc = json.loads((tmp_path / "assoc.json").read_text())
    assert set(assoc) == {"none", "repeat-every1"}
    assert assoc["none"]["kl"]["n_conversations"] == 3


@pytest.mark.slow
def test_signals_all_on_the_shared_smoke_study(smoke):
    """The rules end to end on the shared smoke study (tiny model; it adds results/smoke/signals and
    the signal tables): every setting's signals, one row per judged answer, under every method (the
    guided one teacher-forced with its branch), the tables, and the figure, while figures/all of the
    default config stays without them."""
    from personadrift.tables import read_table
    from support.workflow import SMOKE, snakemake

    snakemake(smoke, "--configfile", SMOKE, "--cores", "2", "signals_all")
    results = smoke / "results" / "smoke"
    settings = sorted(p.stem for p in (results / "scores").glob("*.csv"))
    assert len(settings) >= 5
    keys = ["conversation", "round", "kind", "sample"]
    for s in settings:
        sig, sc = read_table(results / "signals" / f"{s}.csv"), read_table(results / "scores" / f"{s}.csv")
        assert sorted(map(tuple, sig[keys].to_numpy().tolist())) == sorted(map(tuple, sc[keys].to_numpy().tolist()))
        answered = sig["answer_tokens"] > 0
        assert sig.loc[answered & (sig["round"] == 0), "kl"].abs().max() < 1e-4, s
        assert (results / "tables" / s / "signals_change.csv").is_file()
    assert (smoke / "figures" / "smoke" / "drift_signals.png").stat().st_size > 1000
    assert "drift_signals" not in (smoke / "figures" / "smoke" / "all").read_text()
