"""`personadrift serve`: the OpenAI-compatible server over real HTTP on 127.0.0.1."""

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.dialog import without_system
from personadrift.generation.engine import HFEngine
from personadrift.interventions.guidance import GuidanceHook
from personadrift.interventions.layers import parse_layers_flag
from personadrift.interventions.settings import settings_from_flags
from personadrift.interventions.split_softmax import SplitSoftmaxHook
from personadrift.runtime.factory import combined_intervention
from personadrift.runtime.serve import build_app
from support.faults import FaultPlan
from support.interventions import split

SYSTEM = "You love playing tennis and bring it up whenever you can."


def msgs(i):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about day {i}."}]


def post(url, body, *, raw=None, timeout=30):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url, path, timeout=30):
    with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + path, timeout=timeout) as r:
        return r.status, json.loads(r.read())


@pytest.fixture(scope="module")
def plain(tiny_model):
    model, tok = tiny_model
    with build_app(HFEngine(model, tok), model_name="tiny", max_batch=8)("127.0.0.1", 0).start() as srv:
        yield srv


def sharp_model(tiny_model_dir):
    """Its own model instance (split-softmax switches the model's attention function), with q/k
    scaled so that attention is peaked and moving mass off the system prompt changes the text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model, tok


def test_health_and_models(plain):
    status, health = get(plain.url, "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny" and health["queued"] == 0
    status, body = get(plain.url, "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["tiny"] and body["object"] == "list"


def test_completion_shape_and_greedy_semantics(plain, tiny_model):
    status, body = post(plain.url, {"model": "tiny", "messages": msgs(1), "temperature": 0, "max_tokens": 5, "n": 2})
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["message"]["role"] == "assistant" and c["finish_reason"] in ("stop", "length") for c in body["choices"])
    texts = [c["message"]["content"] for c in body["choices"]]
    model, tok = tiny_model
    want = HFEngine(model, tok, sampling=Sampling(do_sample=False, max_new_tokens=5)).generate(
        [GenRequest(msgs(1), seed=0, n=2, persist=False)])[0]
    assert texts == want  # temperature 0 = greedy: the same for any seed
    u = body["usage"]
    assert u["prompt_tokens"] == len(HFEngine(model, tok).chat.render(msgs(1)).ids)
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > u["prompt_tokens"]


def test_sampling_follows_the_seed(plain):
    body = {"messages": msgs(2), "temperature": 1.0, "top_p": 0.9, "max_tokens": 8}
    a = post(plain.url, {**body, "seed": 11})[1]["choices"][0]["message"]["content"]
    b = post(plain.url, {**body, "seed": 11})[1]["choices"][0]["message"]["content"]
    c = [post(plain.url, {**body, "seed": s})[1]["choices"][0]["message"]["content"] for s in (12, 13, 14)]
    assert a == b and any(x != a for x in c)


@pytest.mark.parametrize("body,status,param", [
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400, "stream"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": 1.5}, 400, "seed"),
    ({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
])
def test_bad_input_gets_an_openai_style_error(plain, body, status, param):
    code, err = post(plain.url, body)
    assert code == status and err["error"]["param"] == param and err["error"]["message"]


def test_not_json_and_unknown_routes(plain):
    code, err = post(plain.url, None, raw=b"{nope")
    assert code == 400 and "not valid JSON" in err["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as info:
        get(plain.url, "/v1/nothing")
    assert info.value.code == 404
    assert get(plain.url, "/health")[0] == 200  # still serving


def test_text_content_parts_and_developer_role(plain):
    parts = [{"role": "developer", "content": SYSTEM},
             {"role": "user", "content": [{"type": "text", "text": "Tell me about "}, {"type": "text", "text": "day 3."}]}]
    a = post(plain.url, {"messages": parts, "temperature": 0.7, "seed": 4, "max_tokens": 6})
    b = post(plain.url, {"messages": msgs(3), "temperature": 0.7, "seed": 4, "max_tokens": 6})
    assert a[0] == 200 and a[1]["choices"] == b[1]["choices"]


def test_concurrent_requests_are_batched_without_changing_replies(plain):
    bodies = [{"messages": msgs(i), "temperature": 1.0, "top_p": 0.9, "seed": i, "max_tokens": 6, "n": 1 + i % 2}
              for i in range(8)]
    one_by_one = [post(plain.url, b)[1]["choices"] for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: post(plain.url, b)[1]["choices"], bodies))
    assert together == one_by_one


def test_requests_with_different_budgets_share_one_engine_call(plain):
    """Budgets are per request: jobs that differ only in max_tokens batch together, and each
    reply is the one it gets alone (same text, its own length and finish reason)."""
    from personadrift.runtime.serve import _Job

    bodies = [{"messages": msgs(i), "temperature": 1.0, "top_p": 0.9, "seed": i, "max_tokens": 2 + 3 * (i % 3)}
              for i in range(6)]
    alone = [post(plain.url, b)[1]["choices"] for b in bodies]
    sampling = Sampling(temperature=1.0, top_p=0.9, do_sample=True)
    jobs = [_Job(messages=b["messages"], n=1, seed=b["seed"], sampling=sampling, max_tokens=b["max_tokens"])
            for b in bodies]
    assert len({j.group for j in jobs}) == 1  # the batcher takes them in one batch
    calls = plain.app.batches
    plain.app.run_batch(jobs)
    assert plain.app.batches == calls + 1
    assert [[{"role": "assistant", "content": t} for t in j.texts] for j in jobs] == \
        [[c["message"] for c in choices] for choices in alone]
    assert [j.finish_reasons for j in jobs] == [[c["finish_reason"] for c in choices] for choices in alone]
    for j in jobs:  # each stopped at its own budget, not the batch's largest
        n, reason = j.completion_tokens[0], j.finish_reasons[0]
        assert n == j.max_tokens if reason == "length" else n < j.max_tokens
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda b: post(plain.url, b)[1]["choices"], bodies))
    assert together == alone


def test_faults_are_answered_like_a_real_api(plain):
    plain.app.faults = FaultPlan.sequence(["429", "500"], retry_after_ms=5)
    try:
        code, err = post(plain.url, {"messages": msgs(0)})
        assert code == 429 and err["error"]["type"] == "rate_limit_error"
        assert post(plain.url, {"messages": msgs(0)})[0] == 500
        assert post(plain.url, {"messages": msgs(0), "max_tokens": 2})[0] == 200
    finally:
        plain.app.faults = None
    with pytest.raises(ValueError):
        FaultPlan(default="418")


def test_split_softmax_and_guidance_servers(tiny_model_dir, tiny_model):
    model, tok = sharp_model(tiny_model_dir)
    flagged = settings_from_flags({"--split-k": 0.5})
    iv = combined_intervention(flagged)
    assert iv == split(0.5)
    sampling = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=8)
    reqs = [GenRequest(msgs(i), seed=i, persist=False, intervene=True) for i in range(6)]
    plain = [t[0] for t in HFEngine(*sharp_model(tiny_model_dir), sampling=sampling).generate(reqs)]
    body = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 8}
    with build_app(HFEngine(model, tok, intervention=iv), model_name="tiny-ss",
                   settings=flagged)("127.0.0.1", 0).start() as srv:
        served = [post(srv.url, {**body, "messages": r.messages, "seed": r.seed})[1]["choices"][0]["message"]["content"]
                  for r in reqs]
    direct = [t[0] for t in HFEngine(model, tok, sampling=sampling, intervention=iv).generate(reqs)]
    assert served == direct
    assert served != plain  # the intervention changes some replies

    guidance = settings_from_flags({"--guidance-scale": 2.0})
    g = combined_intervention(guidance)
    model, tok = tiny_model
    with build_app(HFEngine(model, tok, intervention=g), model_name="tiny-cfg",
                   settings=guidance)("127.0.0.1", 0).start() as srv:
        served = [post(srv.url, {**body, "messages": r.messages, "seed": r.seed})[1]["choices"][0]["message"]["content"]
                  for r in reqs]
    guided = [GenRequest(r.messages, seed=r.seed, persist=False, intervene=True,
                         negative_messages=without_system(r.messages)) for r in reqs]
    assert served == [t[0] for t in HFEngine(model, tok, sampling=sampling, intervention=g).generate(guided)]


def test_parse_layers():
    assert parse_layers_flag("all") == "all" and parse_layers_flag("0,1") == [0, 1]
    assert parse_layers_flag("1:4") == [1, 2, 3]


def test_an_app_refuses_an_engine_whose_intervention_is_not_its_settings(tiny_model):
    """The settings decide which requests are intervened on; the engine must apply exactly theirs."""
    model, tok = tiny_model
    with pytest.raises(ValueError, match="not the settings'"):
        build_app(HFEngine(model, tok, intervention=split(0.5)), model_name="tiny")


def test_bad_method_flags_name_the_flag():
    from personadrift.errors import InputError

    with pytest.raises(InputError, match=r"--split-k: .*1"):
        settings_from_flags({"--split-k": 1.5})
    with pytest.raises(InputError, match=r"--guidance-scale: .*1"):
        settings_from_flags({"--guidance-scale": 0.5})
    with pytest.raises(InputError, match=r"--split-layers: .*no layer"):
        settings_from_flags({"--split-k": 0.5, "--split-layers": []})


def test_command_line_serves_the_tiny_model_with_split_softmax(tmp_path):
    cmd = [sys.executable, "-m", "personadrift.runtime.serve", "--tiny", "--port", "0", "--split-k", "0.5",
           "--split-layers", "0:2", "--threads", "1", "--max-tokens", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line, deadline = "", time.time() + 90
        while "http://" not in line and time.time() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
        assert "http://" in line, "the server did not start"
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert get(url, "/health")[1]["model"] == "tiny"
        code, body = post(url, {"model": "tiny", "messages": msgs(0), "seed": 1})
        assert code == 200 and body["system_fingerprint"].startswith("pd-")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_flags_are_the_registered_methods_with_the_configured_negative_branch():
    """--split-k / --guidance-scale / --guidance-negative build the same settings the workflow
    uses; the guidance branch follows the configured mode (it was ignored before)."""
    from personadrift.runtime.serve import build_parser, method_flags

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    args = build_parser().parse_args(["--tiny", "--split-k", "0.5", "--split-layers", "0", "--guidance-scale", "2",
                                      "--guidance-negative", "empty_system"])
    settings = settings_from_flags(method_flags(args))
    assert sorted(s.method for s in settings) == ["cfg", "split_softmax"]
    iv = combined_intervention(settings)
    assert sorted(iv.hooks, key=repr) == [GuidanceHook(scale=2.0), SplitSoftmaxHook(k=0.5, layers=(0,))]
    guided = next(s for s in settings if s.method == "cfg")
    assert guided.negative_messages(msgs) == [{"role": "system", "content": ""}, msgs[1]]
    assert settings_from_flags({"--guidance-scale": 1.5})[0].negative_messages(msgs) == msgs[1:]
    assert settings_from_flags(method_flags(build_parser().parse_args(["--tiny"]))) == []
