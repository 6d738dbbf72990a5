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

from personadrift.benchmark.personas import load_personas, load_topics
from personadrift.config import validate_config
from personadrift.generation.selfchat import persona_record, plan_conversation
from personadrift.steps.models import fetch_model
from personadrift.steps.selfchat import selfchat_shard
from personadrift.storage import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


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
    assert rounds == [(r, k) for r in (1, 2, 3) for k in ("agent", "user")]
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


def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_run(study):
    root, _ = study
    reference = run_shard(study, "reference")
    rng = random.Random(1234)
    name = "killed"
    kills = 0
    for attempt in range(4):
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

    def __init__(self):
        self.requests = []

    def generate(self, requests, max_new_tokens=None):
        self.requests += requests
        return [["fine, thanks"] * r.n for r in requests]


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
