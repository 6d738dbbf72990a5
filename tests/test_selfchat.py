"""Self-chat shards: determinism, lock-step protocol, checkpoints, and resume after SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from personadrift.config import validate_config
from personadrift.generation.selfchat import plan_conversation
from personadrift.protocol.personas import load_personas, load_topics, persona_record
from personadrift.steps.models import fetch_model
from personadrift.steps.selfchat import selfchat_shard
from personadrift.storage import atomic_write_json
from support.interventions import guided
from support.workflow import REPO


def make_config(model_dir, **selfchat):
    cfg = {
        "model": {"name": "tiny", "source": "local", "path": str(model_dir)},
        "selfchat": {"conversations": 3, "shard_size": 3, "turns": 6, "runs": 2,
                     "max_new_tokens": 6, "probe_max_new_tokens": 5, **selfchat},
        "personas": {"files": [str(REPO / "personas/benchmark/persona.yaml"),
                               str(REPO / "personas/benchmark/language.yaml")],
                     "topics": str(REPO / "personas/topics.yaml")},
    }
    return validate_config(cfg)


@pytest.fixture(scope="module")
def study(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = make_config(tiny_model_dir)
    fetch_model(cfg, root / "model")
    personas = load_personas(cfg["personas"]["files"])
    pool = {"personas": [persona_record(p) for p in personas], "dropped": [],
            "topics": load_topics(cfg["personas"]["topics"]), "rule": "all"}
    atomic_write_json(root / "pool.json", pool)
    return root, cfg


def run_shard(study, name, cfg=None):
    root, base = study
    selfchat_shard(cfg or base, setting_name="none", shard=0, model_dir=root / "model",
                         pool_json=root / "pool.json", out_dir=root / name / "out",
                         checkpoint_dir=root / name / "ckpt")
    return read_out(root / name / "out")


def read_out(folder):
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(folder).glob("conv-*.json"))}


def dialog_part(rec):
    return {k: rec[k] for k in ("conversation", "agent", "user", "topic", "history", "probes", "complete")}


def test_plan_is_fixed_by_seed_and_never_pairs_a_persona_with_itself():
    personas = load_personas([REPO / "personas/benchmark/persona.yaml"])
    topics = load_topics(REPO / "personas/topics.yaml")
    plans = [plan_conversation(s, 0, personas, topics) for s in range(60)]
    assert all(p["agent"]["id"] != p["user"]["id"] for p in plans)
    assert plans == [plan_conversation(s, 0, personas, topics) for s in range(60)]
    assert plans != [plan_conversation(s, 1, personas, topics) for s in range(60)]


def test_shard_follows_the_protocol_and_is_reproducible(study):
    a = run_shard(study, "a")
    b = run_shard(study, "b")
    assert [dialog_part(r) for r in a.values()] == [dialog_part(r) for r in b.values()]
    rec = next(iter(a.values()))
    assert rec["complete"] and len(rec["history"]) == 6
    assert rec["history"][0] == rec["topic"]
    rounds = sorted({(p["round"], p["kind"]) for p in rec["probes"]})
    assert rounds == [(r, k) for r in (0, 1, 2, 3) for k in ("agent", "user")]
    # turns parallel to history, with lengths; every probe answer with its own
    assert [t["speaker"] for t in rec["turns"]] == ["topic", "agent", "user", "agent", "user", "agent"]
    assert all(t["prompt_tokens"] > 0 and 0 <= t["new_tokens"] <= 6 and t["context"] == "ok" for t in rec["turns"][1:])
    assert all(len(p["completions"]) == len(p["answers"]) and p["context"] == "ok" for p in rec["probes"])
    assert all(len(p["answers"]) == 2 for p in rec["probes"])
    user_probe = next(p for p in rec["probes"] if p["kind"] == "user")
    assert user_probe["question"] == rec["user"]["probe"]
    prov = rec["provenance"]
    for key in ("git_commit", "packages", "hardware", "model", "sampling", "seed", "setting"):
        assert key in prov
    assert prov["model"]["chat_template_sha256"]
    assert prov["model"]["weights_sha256"]


def test_control_user_bot_without_system_prompt(study):
    root, base = study
    cfg = json.loads(json.dumps(base))
    cfg["selfchat"]["user_system_prompt"] = False
    out = run_shard(study, "control", cfg)
    assert all(not r["user_has_system_prompt"] for r in out.values())
    # same personas and topics as the main run: only the user bot's prompt differs
    main = run_shard(study, "a")
    assert [r["agent"] for r in out.values()] == [r["agent"] for r in main.values()]


def _cli(study, name):
    root, cfg = study
    return [sys.executable, "-m", "personadrift", "selfchat", "--params", json.dumps(cfg),
            "--model-dir", str(root / "model"), "--pool", str(root / "pool.json"),
            "--out", str(root / name / "out"), "--checkpoints", str(root / name / "ckpt"), "--threads", "1"]


def _events(root, name):
    f = root / name / "ckpt" / "events.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_run(study):
    root, _ = study
    reference = run_shard(study, "reference")
    rng = random.Random(1234)
    name = "killed"
    kills = 0
    for _attempt in range(4):
        proc = subprocess.Popen(_cli(study, name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        want = len(_events(root, name)) + rng.randint(1, 6)  # kill after a random number of completions
        deadline = time.time() + 120
        while proc.poll() is None and len(_events(root, name)) < want and time.time() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            break
    assert kills >= 1
    final = subprocess.run(_cli(study, name), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    got = read_out(root / name / "out")
    assert [dialog_part(r) for r in got.values()] == [dialog_part(r) for r in reference.values()]
    done = [(e["conversation"], e["turn"], e["what"]) for e in _events(root, name)]
    assert len(done) == len(set(done)), "a completed turn was generated twice"


class RecordingEngine:
    """Answers every request with a fixed text and records what it was asked (protocol tests)."""

    max_context = None

    def __init__(self):
        self.requests = []

    def complete(self, requests, max_new_tokens=None):
        from personadrift.generation.api import Completion

        self.requests += requests
        return [[Completion("fine, thanks", 10, 3, "stop")] * r.n for r in requests]


@pytest.mark.parametrize("method,options,apply_to", [
    ("split_softmax", {"k": [0.5]}, "dialog"), ("split_softmax", {"k": [0.5]}, "probes"),
    ("cfg", {"guidance_scale": [1.5], "negative": "empty_system"}, "both"),
])
def test_interventions_apply_to_the_configured_phase_only(tmp_path, method, options, apply_to):
    from personadrift.interventions.settings import expand_settings

    personas = load_personas([REPO / "personas/benchmark/persona.yaml"])
    topics = load_topics(REPO / "personas/topics.yaml")
    cfg = make_config("unused", turns=4)
    cfg["interventions"] = {"none": {"method": "none"}, "x": {"method": method, "apply_to": apply_to, **options}}
    setting = expand_settings(cfg["interventions"])[1]
    eng = RecordingEngine()
    from personadrift.generation.selfchat import ShardRun

    ShardRun(eng, config=cfg, setting=setting, plans=[plan_conversation(0, 0, personas, topics)],
             checkpoint_dir=tmp_path, provenance={}).run()
    agent = [r for r in eng.requests if r.key.endswith("/agent")]
    user = [r for r in eng.requests if r.key.endswith("/user")]
    assert user and not any(r.intervene for r in user)  # the user bot is never intervened on
    dialog, probes = [r for r in agent if r.persist], [r for r in agent if not r.persist]
    assert all(r.intervene == (apply_to in ("dialog", "both")) for r in dialog)
    assert all(r.intervene == (apply_to in ("probes", "both")) for r in probes)
    if method == "cfg":
        assert all(r.negative_messages[0] == {"role": "system", "content": ""} for r in agent)
        assert all(m["content"] != r.messages[0]["content"] for r in agent for m in r.negative_messages)


def test_a_checkpoint_from_another_config_is_not_resumed(study):
    root, base = study
    first = run_shard(study, "changed")
    cfg = json.loads(json.dumps(base))
    cfg["selfchat"]["max_new_tokens"] = 3
    second = run_shard(study, "changed", cfg)  # same checkpoint folder, different sampling
    assert [r["fingerprint"] for r in first.values()] != [r["fingerprint"] for r in second.values()]
    assert [r["history"] for r in first.values()] != [r["history"] for r in second.values()]  # regenerated
    again = run_shard(study, "changed", cfg)
    assert [dialog_part(r) for r in again.values()] == [dialog_part(r) for r in second.values()]


# ------------------------------------------------------------------ round 0, opening, templates, context
def _plans(n=1):
    personas = load_personas([REPO / "personas/benchmark/persona.yaml"])
    topics = load_topics(REPO / "personas/topics.yaml")
    # as the workflow does, through the JSON persona pool
    return json.loads(json.dumps([plan_conversation(s, 0, personas, topics) for s in range(n)]))


def test_round_zero_is_asked_right_after_the_system_prompt_with_seeds_calibration_never_uses(tmp_path):
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings
    from personadrift.seeding import derive_seed

    cfg = make_config("unused", turns=4)
    eng = RecordingEngine()
    plan = _plans()[0]
    rec = ShardRun(eng, config=cfg, setting=expand_settings(cfg["interventions"])[0], plans=[plan],
                   checkpoint_dir=tmp_path, provenance={}).run()[0]
    zero = [p for p in rec["probes"] if p["round"] == 0]
    assert [(p["kind"], p["turn"]) for p in zero] == [("agent", 0), ("user", 0)]
    first = eng.requests[:2]  # asked before any dialog turn
    for req, kind in zip(first, ("agent", "user")):
        assert req.messages == [{"role": "system", "content": plan["agent"]["system_prompt"]},
                                {"role": "user", "content": plan[kind]["probe"]}]
        assert not req.persist
    calibration = {derive_seed(cfg["seed"], "calibration", plan[k]["id"]) for k in ("agent", "user")}
    seeds = {r.seed for r in first}
    assert len(seeds) == 2 and not seeds & calibration
    later = {r.seed for r in eng.requests[2:]}
    assert not seeds & later


def test_round_zero_is_resumed_not_asked_twice(tmp_path):
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings

    cfg = make_config("unused", turns=2)
    setting = expand_settings(cfg["interventions"])[0]
    run = ShardRun(RecordingEngine(), config=cfg, setting=setting, plans=_plans(), checkpoint_dir=tmp_path, provenance={})
    run._together(run._probes(0))  # the job dies right after round 0 is checkpointed
    eng = RecordingEngine()
    rec = ShardRun(eng, config=cfg, setting=setting, plans=_plans(), checkpoint_dir=tmp_path, provenance={}).run()[0]
    assert [p["round"] for p in rec["probes"]].count(0) == 2
    assert all(r.messages[-1]["content"] != rec["agent"]["probe"] or len(r.messages) > 2 for r in eng.requests)


def test_opening_wording_is_a_config_key(tmp_path):
    from personadrift.errors import InputError
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings

    cfg = make_config("unused", turns=4, opening='Earlier: "$topic" / "$reply"')
    eng = RecordingEngine()
    rec = ShardRun(eng, config=cfg, setting=expand_settings(cfg["interventions"])[0], plans=_plans(),
                   checkpoint_dir=tmp_path, provenance={}).run()[0]
    user = next(r for r in eng.requests if r.key.endswith("/user"))
    assert user.messages[1]["content"] == f'Earlier: "{rec["topic"]}" / "{rec["history"][1]}"'
    assert rec["provenance"]["protocol"]["opening"] == 'Earlier: "$topic" / "$reply"'
    for bad in ("no placeholders", 'asked "{topic}", answered "{reply}"', "$topic $reply $other"):
        with pytest.raises(InputError, match="selfchat.opening"):
            ShardRun(eng, config=make_config("unused", turns=4, opening=bad), plans=_plans(),
                     setting=expand_settings(cfg["interventions"])[0], checkpoint_dir=tmp_path / "bad", provenance={})


@pytest.fixture(scope="module")
def llama2_engine(tmp_path_factory):
    """The real engine on a tiny model carrying the Llama-2-chat template; replies always run to
    their token limit, so the dialog's length is known and reaches the context limit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.generation.api import Sampling
    from personadrift.generation.engine import HFEngine
    from personadrift.generation.tiny import LLAMA2_TEMPLATE, build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("tiny-llama2"), template=LLAMA2_TEMPLATE)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d)
    return HFEngine(model, tok, sampling=Sampling(max_new_tokens=20, min_new_tokens=20))


def _context_run(engine, ckpt, policy, method="none", turns=8, max_context=330):
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings

    cfg = make_config("unused", turns=turns, max_new_tokens=20, probe_max_new_tokens=8, min_new_tokens=20,
                      context_policy=policy)
    cfg["model"]["max_context"] = max_context
    cfg["interventions"] = {"none": {"method": "none"}, "rep": {"method": "repetition", "every": [1]}}
    setting = next(s for s in expand_settings(cfg["interventions"]) if s.method == method)
    engine.forget()
    return ShardRun(engine, config=cfg, setting=setting, plans=_plans(2), checkpoint_dir=ckpt, provenance={})


@pytest.mark.slow
def test_context_error_stops_with_a_clear_message_and_resumes_under_another_policy(llama2_engine, tmp_path):
    from personadrift.generation.selfchat import ContextOverflow

    with pytest.raises(ContextOverflow, match=r"selfchat.context_policy: conversation \d+, .*exceeds the model's 330"):
        _context_run(llama2_engine, tmp_path, "error").run()
    kept = read_out(tmp_path)
    assert kept and all(len(r["history"]) >= 2 for r in kept.values())  # completed rounds are on disk
    resumed = _context_run(llama2_engine, tmp_path, "drop_oldest").run()
    for rec in resumed:
        before = kept[f"conv-{rec['conversation']:05d}.json"]
        assert rec["history"][: len(before["history"])] == before["history"]
        assert rec["fingerprint"] == before["fingerprint"]
        assert len(rec["history"]) == 8


def test_context_drop_oldest_keeps_every_prompt_within_the_limit(llama2_engine, tmp_path):
    recs = _context_run(llama2_engine, tmp_path, "drop_oldest").run()
    verdicts = []
    for rec in recs:
        assert len(rec["history"]) == len(rec["turns"]) == 8 and rec["stopped"] is None
        for t in rec["turns"][1:]:
            assert t["prompt_tokens"] + 20 <= 330 and t["new_tokens"] == 20 and t["finish_reason"] == "length"
            verdicts.append(t["context"])
        for p in rec["probes"]:
            assert all(c["prompt_tokens"] + 8 <= 330 for c in p["completions"]) and len(p["answers"]) == 2
            verdicts.append(p["context"])
            assert (p["context"] == "truncated") == ("dropped_rounds" in p)
    assert "truncated" in verdicts and "ok" in verdicts and "overflow" not in verdicts


@pytest.mark.slow
def test_context_stop_ends_the_conversation_and_keeps_its_later_rounds_as_overflow_rows(llama2_engine, tmp_path):
    from personadrift.protocol.scoring import score_records

    recs = _context_run(llama2_engine, tmp_path, "stop").run()
    rec = recs[0]
    assert rec["stopped"]["reason"] == "context" and len(rec["history"]) < 8 and rec["complete"]
    overflow = [p for p in rec["probes"] if p["context"] == "overflow"]
    assert overflow and all(p["answers"] == [] for p in overflow)
    assert sorted({p["round"] for p in rec["probes"]}) == [0, 1, 2, 3, 4]  # no round silently missing
    df = score_records(recs)
    over = df[df["context"] == "overflow"]
    assert len(over) and over["score"].isna().all() and (over["error"] != "").all()
    ok = df[df["context"] == "ok"]
    assert ok["score"].notna().all() and (ok["new_tokens"] == 8).all() and (ok["finish_reason"] == "length").all()


def test_repetition_falls_back_to_a_placement_the_template_renders(llama2_engine, tiny_model, tmp_path):
    from personadrift.generation.engine import HFEngine

    run = _context_run(llama2_engine, tmp_path / "llama2", "drop_oldest", method="repetition", turns=4, max_context=4096)
    rec = run.run()[0]
    prov = rec["provenance"]["protocol"]
    assert prov["repetition_placement_configured"] == "system_message"
    assert prov["repetition_placement"] == "user_prefix"
    assert len(rec["history"]) == 4
    chatml = HFEngine(*tiny_model)
    run = _context_run(chatml, tmp_path / "chatml", "error", method="repetition", turns=4, max_context=4096)
    assert run.run()[0]["provenance"]["protocol"]["repetition_placement"] == "system_message"


def test_the_context_policy_is_not_part_of_the_checkpoint_fingerprint():
    from personadrift.generation.selfchat import generation_fingerprint
    from personadrift.interventions.settings import expand_settings

    a, b = make_config("unused", context_policy="error"), make_config("unused", context_policy="stop")
    s = expand_settings(a["interventions"])[0]
    assert generation_fingerprint(a, s, {}) == generation_fingerprint(b, s, {})
    c = make_config("unused", top_k=50)
    assert generation_fingerprint(a, s, {}) != generation_fingerprint(c, s, {})


def test_upstream_sampling_keys_reach_the_engines(tmp_path):
    """top_k and min_new_tokens go into Sampling; the API backend can leave top_p and max_tokens
    to the API's defaults, as upstream did."""
    from personadrift.generation.api import GenRequest
    from personadrift.runtime.factory import make_engine

    cfg = make_config("unused", top_k=50, min_new_tokens=3, api_send_top_p=False, api_send_max_tokens=False)
    cfg.update(backend="openai", openai={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    eng = make_engine(cfg, tmp_path)
    assert eng.sampling.top_k == 50 and eng.sampling.min_new_tokens == 3
    payload = eng._payload(GenRequest([{"role": "user", "content": "hi"}], seed=1), 400)
    assert "top_p" not in payload and "max_tokens" not in payload and payload["temperature"] == 1.0
    cfg["selfchat"].update(api_send_top_p=True, api_send_max_tokens=True)
    payload = make_engine(cfg, tmp_path)._payload(GenRequest([{"role": "user", "content": "hi"}], seed=1), 400)
    assert payload["top_p"] == 0.9 and payload["max_tokens"] == 400 and payload["top_k"] == 50


def test_guidance_with_forced_reply_lengths_samples(tiny_model):
    """min_new_tokens (the rehearsal forces long replies) under guidance: suppressing the end of
    turn in both branches before mixing them gave nan probabilities and a crash."""
    from personadrift.generation.api import GenRequest, Sampling
    from personadrift.generation.dialog import agent_messages, negative_branch
    from personadrift.generation.engine import HFEngine

    eng = HFEngine(*tiny_model, sampling=Sampling(min_new_tokens=6, max_new_tokens=6),
                   intervention=guided(3.0))
    msgs = agent_messages("You love tennis.", ["Hi?"])
    out = eng.complete([GenRequest(msgs, seed=s, intervene=True, negative_messages=negative_branch(msgs))
                        for s in range(4)])
    assert all(c[0].new_tokens == 6 and c[0].finish_reason == "length" for c in out)


@pytest.mark.parametrize("method", ["none", "cfg"])
def test_probes_sharing_a_call_with_the_next_turn_change_no_text(tiny_model, tmp_path, method):
    """The schedule merges each round's probes into the next dialog turn's call (#16). On the real
    engine, every turn and probe answer equals what a one-step-per-call schedule gives."""
    from personadrift.generation.api import Intervention, Sampling
    from personadrift.generation.engine import HFEngine
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings

    class OneStepPerCall(ShardRun):
        def _together(self, *phases):
            for p in phases:
                super()._together(p)

    cfg = make_config("unused", turns=6, max_new_tokens=8, probe_max_new_tokens=5, runs=2)
    cfg["interventions"] = {"none": {"method": "none"}, "cfg": {"method": "cfg", "guidance_scale": [2.0]}}
    setting = next(s for s in expand_settings(cfg["interventions"]) if s.method == method)
    iv = guided(2.0) if method == "cfg" else Intervention()
    calls = {}
    records = {}
    for name, cls in (("merged", ShardRun), ("one-step", OneStepPerCall)):
        eng = HFEngine(*tiny_model, sampling=Sampling(max_new_tokens=8), intervention=iv)
        calls[name] = 0
        original = eng.complete

        def counted(reqs, _orig=original, _name=name, **kw):
            calls[_name] += 1
            return _orig(reqs, **kw)

        eng.complete = counted
        records[name] = cls(eng, config=cfg, setting=setting, plans=_plans(3), checkpoint_dir=tmp_path / name,
                            provenance={}).run()
    keys = ("history", "turns", "probes")
    assert [{k: r[k] for k in keys} for r in records["merged"]] == [{k: r[k] for k in keys} for r in records["one-step"]]
    # 3 rounds: [probe 0 + agent 2], [probe 2 + user 3], [agent 4], [probe 4 + user 5], [agent 6], [probe 6]
    assert (calls["merged"], calls["one-step"]) == (6, 9)


@pytest.mark.parametrize("method,options", [
    ("none", {}), ("split_softmax", {"k": [0.5]}), ("repetition", {"every": [1]}), ("cfg", {"guidance_scale": [1.5]}),
])
def test_a_shorter_study_is_the_longer_one_cut_short(tiny_model, tmp_path, method, options):
    """Every turn and probe answer of a 2-round study equals the first 2 rounds of a 3-round one
    with the same seed, under each intervention (docs/measurements.md's claim about the default's rounds:
    what a round samples depends on its conversation and seeds only, not on how many follow)."""
    from personadrift.generation.api import Sampling
    from personadrift.generation.engine import HFEngine
    from personadrift.generation.selfchat import ShardRun
    from personadrift.interventions.settings import expand_settings

    model, tok = tiny_model
    attn = model.config._attn_implementation
    records = {}
    for turns in (4, 6):
        cfg = make_config("unused", turns=turns, max_new_tokens=8, probe_max_new_tokens=5, runs=1)
        cfg["interventions"] = {"none": {"method": "none"}, "x": {"method": method, **options}}
        setting = expand_settings(cfg["interventions"])[-1]
        eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=8), intervention=setting.engine_intervention())
        try:
            records[turns] = ShardRun(eng, config=cfg, setting=setting, plans=_plans(3),
                                      checkpoint_dir=tmp_path / str(turns), provenance={}).run()
        finally:
            model.set_attn_implementation(attn)  # the fixture's model is shared
    for short, long in zip(records[4], records[6]):
        assert len(short["history"]) == 4 and len(long["history"]) == 6
        assert short["history"] == long["history"][:4] and short["turns"] == long["turns"][:4]
        rounds = {p["round"] for p in short["probes"]}
        assert rounds == {0, 1, 2}
        assert short["probes"] == [p for p in long["probes"] if p["round"] in rounds]
    assert any(r["history"][4:] for r in records[6])  # the longer study did go on
