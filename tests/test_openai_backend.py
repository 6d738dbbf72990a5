"""The openai backend against a real `personadrift serve` on localhost: equality, retries, cache."""

import json
from collections import Counter

import pytest

from personadrift.config import validate_config
from personadrift.errors import InputError
from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.engine import HFEngine
from personadrift.generation.openai_backend import (
    OpenAIBackendError,
    OpenAIEngine,
    UnsupportedRequestError,
    cache_key,
)
from personadrift.protocol.personas import load_personas, load_topics, persona_record
from personadrift.runtime.serve import ChatApp, build_app
from personadrift.seeding import derive_seed
from personadrift.steps.models import fetch_model
from personadrift.steps.selfchat import selfchat_shard
from personadrift.storage import atomic_write_json
from support.faults import FaultPlan
from support.workflow import REPO

FAKE_KEY = "sk-pd-FAKE-KEY-7f3a9c0e5b1d"
GREEDY = Sampling(do_sample=False, max_new_tokens=8)
SAMPLED = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=8)


def convo(i):
    systems = ["You love tennis.", "Always answer in French.", "You are a pirate."]
    return [{"role": "system", "content": systems[i % 3]},
            {"role": "user", "content": f"What is your hobby? {'really ' * i}"}]


def requests(k=6, n=1):
    return [GenRequest(convo(i), seed=100 + i, n=n, persist=False) for i in range(k)]


@pytest.fixture(scope="module")
def served(tiny_model):
    """A server over the tiny model (faults can be set per test), and a local reference engine."""
    model, tok = tiny_model
    app = build_app(HFEngine(model, tok), model_name="tiny", max_batch=8)
    server = app("127.0.0.1", 0).start()
    yield server, (lambda sampling: HFEngine(model, tok, sampling=sampling))
    server.close()


@pytest.fixture
def server(served):
    srv, _ = served
    srv.app.faults = None
    srv.app.events.clear()
    yield srv
    srv.app.faults = None


@pytest.fixture
def reference(served):
    return served[1]


def client(server, sampling=GREEDY, **kw):
    opts = {"model": "tiny", "api_key": FAKE_KEY, "base_url": server.url, "sampling": sampling,
            "concurrency": 3, "max_retries": 4, "timeout_s": 5.0, **kw}
    return OpenAIEngine(**opts)


def ok_per_request(server):
    return Counter(e["request_id"] for e in server.app.events if e["outcome"] == "ok")


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_replies_equal_the_local_engine(server, reference, sampling):
    reqs = requests(5) + [GenRequest(convo(7), seed=3, n=3, persist=False)]
    with client(server, sampling) as eng:
        got = eng.generate(reqs)
        assert eng.stats.token_source == "usage" and eng.stats.generated_tokens > 0
    assert got == reference(sampling).generate(reqs)
    assert [len(x) for x in got] == [1] * 5 + [3]


def test_per_request_budgets_reach_the_server_and_match_the_local_engine(server, reference):
    """The self-chat sends a round's probes and the next user turn in one call, each with its own
    ``max_new_tokens`` (#16): over HTTP each becomes that request's ``max_tokens``."""
    s = Sampling(max_new_tokens=8, min_new_tokens=0)
    reqs = [GenRequest(convo(i), seed=40 + i, persist=False, max_new_tokens=m) for i, m in enumerate((3, 6, 8))]
    with client(server, s) as eng:
        got = eng.complete(reqs)
    assert [[c.text for c in per] for per in got] == reference(s).generate(reqs)
    assert [per[0].new_tokens for per in got] == [3, 6, 8]  # the random tiny model never stops early


def test_429_500_and_timeouts_are_retried_and_every_reply_arrives_once(server, reference):
    reqs = requests(6, n=2)
    want = reference(SAMPLED).generate(reqs)
    server.app.faults = FaultPlan.sequence(["429", "500", "timeout", "429", None, "503", "500"], stall_s=2.5)
    with client(server, SAMPLED, timeout_s=2.0) as eng:
        got = eng.generate(reqs)
        assert eng.stats.http_requests == len(reqs)
    assert got == want  # complete and in request order
    events = server.app.events
    assert Counter(e["outcome"] for e in events) == {"ok": 6, "429": 2, "500": 2, "503": 1, "timeout": 1}
    ids = {cache_key(eng._payload(r, SAMPLED.max_new_tokens)) for r in reqs}
    assert ok_per_request(server) == {i: 1 for i in ids}  # no request lost, none served twice
    retried = {e["request_id"] for e in events if e["outcome"] == "ok" and e["retry"] > 0}
    faulted = {e["request_id"] for e in events if e["outcome"] != "ok"}
    assert retried == faulted and len(faulted) >= 3  # the same request id, retried by the client


def test_exhausted_retries_raise_a_clear_error(server):
    server.app.faults = FaultPlan(default="503")
    with client(server, max_retries=2) as eng, pytest.raises(OpenAIBackendError) as info:
        eng.generate(requests(1))
    msg = str(info.value)
    assert server.url.rstrip("/") in msg and "'tiny'" in msg and "HTTP 503" in msg and "3 attempts" in msg
    assert FAKE_KEY not in msg and info.value.__context__ is None and info.value.__cause__ is None
    assert len(server.app.events) == 3

    server.app.events.clear()
    server.app.faults = FaultPlan(default="timeout", stall_s=1.0)
    with client(server, max_retries=1, timeout_s=0.3) as eng, pytest.raises(OpenAIBackendError, match="timed out"):
        eng.generate(requests(1))


def test_client_errors_are_not_retried(server):
    with OpenAIEngine(model="no-such-model", api_key=FAKE_KEY, base_url=server.url, max_retries=3) as eng:
        with pytest.raises(OpenAIBackendError, match="HTTP 404 .not retryable.*does not exist"):
            eng.generate(requests(1))
    assert len(server.app.events) == 1


def test_cache_makes_reruns_free_and_never_stores_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PD_TEST_KEY", FAKE_KEY)
    cfg = {"openai": {"base_url": server.url, "model": "tiny", "api_key_env": "PD_TEST_KEY", "concurrency": 2}}
    reqs = requests(4, n=2)
    first = OpenAIEngine.from_config(cfg, sampling=SAMPLED, cache_dir=tmp_path / "cache")
    assert first._secret == FAKE_KEY
    a = first.generate(reqs)
    assert len(server.app.events) == 4
    files = sorted((tmp_path / "cache").glob("*.json"))
    assert len(files) == 4
    assert all(FAKE_KEY not in f.read_text() for f in files)
    assert FAKE_KEY not in json.dumps(first.identity) + repr(first)

    again = OpenAIEngine.from_config(cfg, sampling=SAMPLED, cache_dir=tmp_path / "cache")
    assert again.generate(reqs) == a
    assert len(server.app.events) == 4  # zero HTTP calls
    assert again.stats.cache_hits == 4 and again.stats.http_requests == 0 and again.stats.generated_tokens == 0

    files[0].write_text("{not json")  # a damaged entry is fetched again
    assert again.generate(reqs) == a and len(server.app.events) == 5

    off = OpenAIEngine.from_config({"openai": {**cfg["openai"], "cache": False}}, sampling=SAMPLED,
                                   cache_dir=tmp_path / "cache2")
    assert off.generate(reqs) == a and len(server.app.events) == 9
    assert not (tmp_path / "cache2").exists()


def test_servers_without_n_get_one_call_per_sample(tiny_model, reference):
    model, tok = tiny_model

    class NoN(ChatApp):  # a server that ignores n (returns one choice)
        def parse(self, body):
            job = super().parse(body)
            job.n = 1
            return job

    with NoN(HFEngine(model, tok), model_name="tiny")("127.0.0.1", 0).start() as srv:
        with client(srv, SAMPLED) as eng:
            got = eng.generate([GenRequest(convo(1), seed=5, n=3, persist=False)])[0]
        seeds = [e["seed"] for e in srv.app.events]
    assert seeds == [5, derive_seed(5, 1), derive_seed(5, 2)]
    ref = reference(SAMPLED)
    want = [ref.generate([GenRequest(convo(1), seed=s, n=1, persist=False)])[0][0] for s in seeds]
    assert got == want


def test_interventions_are_refused_before_any_call(server):
    with client(server) as eng:
        for req in (GenRequest(convo(0), seed=1, intervene=True),
                    GenRequest(convo(0), seed=1, negative_messages=convo(0)[1:])):
            with pytest.raises(UnsupportedRequestError, match="personadrift serve"):
                eng.generate([req])
    assert server.app.events == []


def test_api_key_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PD_MISSING_KEY", raising=False)
    remote = {"openai": {"base_url": "https://api.example.com/v1", "model": "m", "api_key_env": "PD_MISSING_KEY"}}
    with pytest.raises(InputError, match="PD_MISSING_KEY is not set"):
        OpenAIEngine.from_config(remote, sampling=SAMPLED, cache_dir=tmp_path)
    local = {"openai": {"base_url": "http://localhost:9/v1", "model": "m", "api_key_env": "PD_MISSING_KEY"}}
    eng = OpenAIEngine.from_config(local, sampling=SAMPLED, cache_dir=tmp_path)
    assert eng.identity == {"backend": "openai", "base_url": "http://localhost:9/v1", "model": "m"}
    eng.close()


# ------------------------------------------------------------------ a self-chat shard end to end
def shard_config(model_dir, **top):
    cfg = {
        "model": {"name": "tiny", "source": "local", "path": str(model_dir)},
        "selfchat": {"conversations": 3, "shard_size": 3, "turns": 4, "runs": 2,
                     "max_new_tokens": 6, "probe_max_new_tokens": 5},
        "personas": {"files": [str(REPO / "personas/benchmark/persona.yaml"),
                               str(REPO / "personas/benchmark/language.yaml")],
                     "topics": str(REPO / "personas/topics.yaml")},
        **top,
    }
    return validate_config(cfg)


def run_shard(cfg, root, name, model_dir):
    selfchat_shard(cfg, setting_name="none", shard=0, model_dir=model_dir, pool_json=root / "pool.json",
                         out_dir=root / name / "out", checkpoint_dir=root / name / "ckpt", threads=None)
    return [json.loads(p.read_text()) for p in sorted((root / name / "out").glob("conv-*.json"))]


def test_selfchat_shard_over_the_openai_backend(server, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    hf_cfg = shard_config(tiny_model_dir)
    fetch_model(hf_cfg, tmp_path / "model")
    personas = load_personas(hf_cfg["personas"]["files"])
    atomic_write_json(tmp_path / "pool.json", {
        "personas": [persona_record(p) for p in personas], "dropped": [],
        "topics": load_topics(hf_cfg["personas"]["topics"]), "rule": "all"})
    api_cfg = shard_config(tiny_model_dir, backend="openai", openai={"base_url": server.url, "model": "tiny"},
                           model={"name": "tiny-api", "source": "api"})

    got = run_shard(api_cfg, tmp_path, "api", tmp_path / "api-client")
    assert len(got) == 3 and all(r["complete"] and len(r["history"]) == 4 for r in got)
    assert all(len(p["answers"]) == 2 for r in got for p in r["probes"])
    assert got[0]["provenance"]["model"] == {"backend": "openai", "base_url": server.url, "model": "tiny"}
    assert got[0]["provenance"]["backend"] == "openai"
    assert FAKE_KEY not in json.dumps(got)

    # same seeds, same sampler: the served model reproduces the local backend's transcripts
    local = run_shard(hf_cfg, tmp_path, "hf", tmp_path / "model")
    keys = ("conversation", "agent", "user", "topic", "history", "probes", "turns")

    def per_choice_counts_dropped(recs):  # the API reports one token total per request, not per choice
        out = [{k: r[k] for k in keys} for r in recs]
        for r in out:
            r["probes"] = [{**p, "completions": sum(c["new_tokens"] for c in p["completions"])} for p in r["probes"]]
        return out

    assert per_choice_counts_dropped(got) == per_choice_counts_dropped(local)

    calls = len(server.app.events)
    again = run_shard(api_cfg, tmp_path, "api-rerun", tmp_path / "api-client")  # the cache answers
    assert len(server.app.events) == calls
    assert per_choice_counts_dropped(again) == per_choice_counts_dropped(got)


def test_top_k_reaches_the_server_as_a_body_extra_and_samples_as_the_engine(server, reference):
    """top_k is no OpenAI parameter: it travels in the body's extras, which vLLM's server and
    `personadrift serve` read, so a served setting samples with the paper's top-k as the HF engine
    does; api_send_top_k: false (OpenAI's API refuses it) leaves it to the server's default."""
    top_k = Sampling(temperature=1.0, top_p=0.9, top_k=3, max_new_tokens=8)
    reqs = requests(4)
    with client(server, top_k) as eng:
        got = eng.generate(reqs)
        assert eng._payload(reqs[0], 8)["top_k"] == 3
    assert got == reference(top_k).generate(reqs)
    assert got != reference(SAMPLED).generate(reqs)  # top-k 3 changed what was sampled
    with client(server, top_k)._omitting({"api_send_top_k": False}) as eng:
        assert "top_k" not in eng._payload(reqs[0], 8)
        assert eng.generate(reqs) == reference(SAMPLED).generate(reqs)


def test_concurrency_and_timeout_default_to_the_servers_place(monkeypatch):
    monkeypatch.setenv("PD_TEST_KEY", FAKE_KEY)
    for url, concurrency, timeout in (("http://127.0.0.1:8000/v1", 64, 600.0),
                                      ("https://api.example.com/v1", 4, 60.0)):
        cfg = validate_config({"model": {"name": "m", "source": "api"}, "backend": "openai",
                               "openai": {"base_url": url, "model": "m", "api_key_env": "PD_TEST_KEY"}})
        eng = OpenAIEngine.from_config(cfg, sampling=SAMPLED, cache_dir=None)
        assert (eng.concurrency, eng.timeout_s) == (concurrency, timeout), url
    cfg["openai"].update(concurrency=2, timeout_s=5)
    eng = OpenAIEngine.from_config(cfg, sampling=SAMPLED, cache_dir=None)
    assert (eng.concurrency, eng.timeout_s) == (2, 5.0)
