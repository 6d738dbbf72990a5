"""Persona vectors and persona-vector steering on the tiny model: the vectors against a direct
computation from ``output_hidden_states``, the engine's steered and capped logits against a plain
forward with the test's own layer hook (left-padded batch, two personas, the pool direction and
an inactive row), the step's files and cache, and config errors."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from personadrift.errors import InputError
from personadrift.generation.api import GenRequest
from personadrift.generation.chat import ChatFormat
from personadrift.generation.engine import HFEngine
from personadrift.protocol import persona_vectors as pv
from support.interventions import steered, vectors_file

PERSONAS = [
    SimpleNamespace(id="tennis", system_prompt="You love playing tennis.", probe="What is your hobby?"),
    SimpleNamespace(id="pirate", system_prompt="You are a pirate; talk like one.", probe="What should I eat?"),
]
ANSWERS = {  # (persona, condition) -> [(answer, judge score)]
    ("tennis", "persona"): [("I like tennis and the racket.", 1.0), ("Books are fine.", 0.0),
                            ("Tennis every day.", 1.0)],
    ("tennis", "no_persona"): [("I like reading books.", 0.0), ("Tennis!", 1.0)],
    ("pirate", "persona"): [("Arr, treasure and fish, matey.", 1.0), ("", float("nan"))],
    ("pirate", "no_persona"): [("Pizza is the best food.", 0.0), ("Try some pasta.", 0.0)],
}


def calibration() -> pd.DataFrame:
    return pd.DataFrame([{"persona": p, "category": "persona", "condition": c, "sample": i, "score": s,
                          "error": "", "answer": a}
                         for (p, c), rows in ANSWERS.items() for i, (a, s) in enumerate(rows)])


def reference_states(model, tok, messages, answer, layer):
    """Layer ``layer``'s output at the answer's tokens, from a plain forward's hidden states."""
    prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False).input_ids
    ids = prompt + tok(answer, add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0, len(prompt):]


def test_vectors_are_the_difference_of_mean_answer_states(tiny_model):
    model, tok = tiny_model
    got, used = pv.compute(model, ChatFormat(tok), tok, PERSONAS, calibration(), layer=0)
    # by hand: judged answers only (all of a side where none passes), empty answers skipped
    kept = {("tennis", True): ["I like tennis and the racket.", "Tennis every day."],
            ("tennis", False): ["I like reading books."],
            ("pirate", True): ["Arr, treasure and fish, matey."],
            ("pirate", False): ["Pizza is the best food.", "Try some pasta."]}
    states = {}
    for p in PERSONAS:
        for side in (True, False):
            msgs = ([{"role": "system", "content": p.system_prompt}] if side else []) + [
                {"role": "user", "content": p.probe}]
            states[p.id, side] = [reference_states(model, tok, msgs, a, 0) for a in kept[p.id, side]]
    for p in PERSONAS:
        mean = {side: torch.stack([s.mean(0) for s in states[p.id, side]]).mean(0) for side in (True, False)}
        assert torch.allclose(got.vectors[p.id], mean[True] - mean[False], atol=1e-5)
        assert used["answers"][p.id] == {"with_persona": len(kept[p.id, True]),
                                         "without_persona": len(kept[p.id, False])}
    every = torch.cat([s for v in states.values() for s in v])
    assert got.residual_norm == pytest.approx(float(every.norm(dim=-1).mean()), rel=1e-5)
    u = got.vectors["tennis"] / got.vectors["tennis"].norm()
    own = torch.cat(states["tennis", True])
    assert got.cap_threshold["tennis"] == pytest.approx(float(torch.quantile(own @ u, 0.25)), abs=1e-4)


def test_vectors_file_round_trip_and_sidecar(tmp_path, tiny_model):
    model, tok = tiny_model
    got, _ = pv.compute(model, ChatFormat(tok), tok, PERSONAS, calibration(), layer=1)
    path = tmp_path / "persona_vectors" / "layer1.safetensors"
    record = pv.write(got, path, provenance={"model": {"name": "tiny"}})
    layer, vectors = pv.load_persona_vectors(path)
    assert layer == 1 and sorted(vectors) == ["pirate", "tennis"]
    assert all(v.dtype == torch.float32 and torch.equal(v, got.vectors[k]) for k, v in vectors.items())
    side = json.loads(pv.sidecar_path(path).read_text())
    assert side == record and side["tensors_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["layer"] == 1 and side["model"] == {"name": "tiny"}
    with pytest.raises(InputError, match="no persona vectors file"):
        pv.load_persona_vectors(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------ steering against a direct forward
CASES = [  # (messages' user text, persona, intervened)
    ("What is your hobby? Tell me everything about it, please.", "tennis", True),
    ("Hi.", "pirate", True),
    ("What should I eat today?", None, True),  # MMLU's rows name no persona: the pool's direction
    ("What is your hobby?", "tennis", False),  # not intervened: untouched
]


def requests():
    return [GenRequest([{"role": "system", "content": "You love playing tennis."}, {"role": "user", "content": t}],
                       seed=0, persona=p, intervene=on) for t, p, on in CASES]


def reference_logprobs(model, tok, path, alpha, cap, layer=0):
    """Each request alone (no padding) through the plain model, with the test's own hook on
    layer ``layer``: h + alpha s u_p, then with ``cap`` the projection raised to tau_p."""
    meta = json.loads(pv.sidecar_path(path).read_text())
    _, vectors = pv.load_persona_vectors(path)
    units = {k: v / v.norm() for k, v in vectors.items()}
    pool = torch.stack([units[k] for k in sorted(units)]).mean(0)
    units[None], taus = pool / pool.norm(), {**meta["cap_threshold"], None: meta["pool_threshold"]}
    out = []
    for r, (_, persona, on) in zip(requests(), CASES):
        def edit(module, args, output, u=units[persona], tau=taus[persona]):
            h = output[0] if isinstance(output, tuple) else output
            h = h + alpha * meta["residual_norm"] * u
            if cap:
                p = h @ u
                h = h + torch.clamp(tau - p, min=0)[..., None] * u
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = model.model.layers[layer].register_forward_hook(edit) if on else None
        try:
            ids = tok(tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False).input_ids
            with torch.no_grad():
                out.append(torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1))
        finally:
            if handle is not None:
                handle.remove()
    return torch.stack(out)


@pytest.mark.parametrize("alpha,cap", [(0.8, False), (-0.5, False), (0.0, True), (0.4, True)])
def test_engine_steering_is_the_direct_computation(tiny_model_dir, tmp_path, alpha, cap):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    path = vectors_file(tmp_path / "layer0.safetensors", model.config.hidden_size, threshold=2.0)
    want = reference_logprobs(model, tok, path, alpha, cap)
    plain = HFEngine(model, tok).next_token_logprobs(requests())
    # the engine batches the four rows left-padded in one forward
    got = HFEngine(model, tok, intervention=steered(path, alpha, cap=cap)).next_token_logprobs(requests())
    assert torch.allclose(got.float(), want, atol=1e-4), float((got.float() - want).abs().max())
    assert torch.equal(got[3], plain[3])  # the inactive row is the plain model's, bitwise
    for i in range(3):
        assert not torch.allclose(got[i], plain[i], atol=1e-3), i  # the steered rows moved


def test_engine_steering_decodes_with_the_hook(tiny_model_dir, tmp_path):
    """Continuations scored after a cached prompt: the hook acts on the new tokens too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    path = vectors_file(tmp_path / "layer1.safetensors", model.config.hidden_size, layer=1)
    meta = json.loads(pv.sidecar_path(path).read_text())
    _, vectors = pv.load_persona_vectors(path)
    u = vectors["pirate"] / vectors["pirate"].norm()
    req = GenRequest([{"role": "user", "content": "Hi."}], seed=0, persona="pirate", intervene=True)
    cont = tok("Arr matey, the treasure.", add_special_tokens=False).input_ids
    got = HFEngine(model, tok, intervention=steered(path, 0.6, layer=1)).continuation_logprobs([req], [cont])
    prompt = tok(tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False).input_ids
    handle = model.model.layers[1].register_forward_hook(
        lambda m, a, o: (o[0] + 0.6 * meta["residual_norm"] * u, *o[1:]) if isinstance(o, tuple)
        else o + 0.6 * meta["residual_norm"] * u)
    try:
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].double(), -1)
    finally:
        handle.remove()
    want = sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont))
    assert float(got[0]) == pytest.approx(want, abs=1e-3)


def test_an_intervened_row_of_an_unknown_persona_is_an_error(tiny_model, tmp_path):
    model, tok = tiny_model
    path = vectors_file(tmp_path / "layer0.safetensors", model.config.hidden_size)
    req = GenRequest([{"role": "user", "content": "Hi."}], seed=0, persona="ghost", intervene=True)
    with pytest.raises(KeyError, match="persona 'ghost' has no vector"):
        HFEngine(model, tok, intervention=steered(path, 0.5)).next_token_logprobs([req])
    # a file of another layer is refused before any forward
    with pytest.raises(ValueError, match="holds vectors of layer 0"):
        HFEngine(model, tok, intervention=steered(path, 0.5, layer=1))


# ------------------------------------------------------------------ the step, the method, the config
def test_step_writes_the_vectors_the_rule_names(tiny_model_dir, tmp_path):
    from personadrift.generation.models import fetch_model
    from personadrift.steps.vectors import persona_vectors

    model_dir = tmp_path / "model"
    fetch_model({"name": "tiny", "source": "tiny"}, model_dir)
    pool = tmp_path / "personas.json"
    pool.write_text(json.dumps({"personas": [{**vars(p), "category": "persona", "judge": "contains_any",
                                              "judge_args": {}} for p in PERSONAS]}))
    cal = tmp_path / "calibration.csv"
    calibration().to_csv(cal, index=False)
    config = {"model": {"name": "tiny", "source": "tiny", "dtype": "float32", "max_batch": 4}, "backend": "hf"}
    out = pv.vectors_path(tmp_path / "results", 1)
    record = persona_vectors(config, layer=1, model_dir=model_dir, pool_json=pool, calibration_csv=cal, out=out)
    layer, vectors = pv.load_persona_vectors(out)
    assert layer == 1 and sorted(vectors) == ["pirate", "tennis"] and record["personas"] == ["tennis", "pirate"]
    assert record["examples_sha256"] == pv.examples_sha256(pv.examples(PERSONAS, calibration()))
    with pytest.raises(InputError) as e:
        persona_vectors(config, layer=2, model_dir=model_dir, pool_json=pool, calibration_csv=cal, out=out,
                        key="interventions.steer.layer")
    assert e.value.field == "interventions.steer.layer" and "the model has 2 layers" in e.value.problem


def test_setting_reads_its_vectors_through_its_inputs(tmp_path):
    from personadrift.interventions.settings import expand_settings

    steer = expand_settings({"steer": {"method": "steer", "alpha": [0.5, 1], "layer": 1, "cap": True}})[1:]
    assert [s.name for s in steer] == ["steer-a0.5", "steer-a1"]
    s = steer[0]
    assert s.impl.inputs(s, "results/x") == {"persona_vectors": "results/x/persona_vectors/layer1.safetensors"}
    with pytest.raises(ValueError, match="needs its persona vectors file"):
        s.engine_intervention()
    path = vectors_file(tmp_path / "layer1.safetensors", 8, layer=1)
    hook = s.with_inputs({"persona_vectors": str(path)}).engine_intervention().hook("residual")
    assert (hook.layers, hook.alpha, hook.cap, hook.vectors_path) == ((1,), 0.5, True, str(path))
    described = s.with_inputs({"persona_vectors": str(path)}).describe()
    assert described["inputs"]["persona_vectors"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s.intervenes("mmlu") and s.intervenes("probe") and s.intervenes("dialog")


def test_selfchat_agent_requests_carry_the_agent_persona():
    from personadrift.generation.selfchat import ShardRun

    run = ShardRun.__new__(ShardRun)
    run.setting = SimpleNamespace(intervenes=lambda phase: True, negative_messages=lambda m: None)
    req = run._agent_request({"conversation": 3, "agent": {"id": "tennis"}}, [{"role": "user", "content": "x"}],
                             1, "probes", limit=4)
    assert req.persona == "tennis" and req.intervene


@pytest.fixture
def default():
    from personadrift.config import read_yaml
    from support.workflow import REPO

    return read_yaml(REPO / "config.yaml")


def refused(config):
    from personadrift.config import check_config
    from support.workflow import REPO

    with pytest.raises(InputError) as e:
        check_config(config, "cfg.yaml", REPO, workdir=REPO)
    assert str(e.value).startswith("cfg.yaml: ")
    return e.value


@pytest.mark.parametrize("entry,field,problem", [
    ({"alpha": [0]}, "alpha", "0 without cap: true changes nothing"),
    ({"alpha": [0.5, float("nan")]}, "alpha[1]", "nan is not a finite number"),
    ({"alpha": ["x"]}, "alpha[0]", "expected number"),
    ({"alpha": [1], "layer": -1}, "layer", "less than the minimum of 0"),
    ({"alpha": [1], "cap": "yes"}, "cap", "expected boolean"),
])
def test_bad_entries_name_the_file_and_key(default, entry, field, problem):
    default["interventions"] = {"none": {"method": "none"}, "steer": {"method": "steer", **entry}}
    e = refused(default)
    assert e.field == f"interventions.steer.{field}" and problem in e.problem, e


def test_layer_past_the_model_depth_names_the_key(default):
    default["model"] = {"name": "tiny", "source": "tiny"}  # 2 layers
    default["interventions"] = {"none": {"method": "none"}, "steer": {"method": "steer", "alpha": [1], "layer": 2}}
    e = refused(default)
    assert e.field == "interventions.steer.layer" and "layer 2 does not exist: the model has 2 layers" in e.problem


def test_the_dag_gives_steering_jobs_their_vectors_and_no_other_job(tmp_path):
    """Dry run: one persona_vectors job per steered layer, an input of its settings' self-chat and
    MMLU jobs (handed over as --method-inputs); the baseline's jobs read no vectors."""
    import re

    import yaml

    from support.workflow import SMOKE, snakemake

    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["interventions"] = {"none": {"method": "none"},
                            "steer": {"method": "steer", "alpha": [0.5, 1], "layer": 1},
                            "capped": {"method": "steer", "alpha": [0], "layer": 0, "cap": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    plan = snakemake(tmp_path, "--configfile", tmp_path / "c.yaml", "-n", "-p", "--cores", "1",
                     "results/smoke/tables/tradeoff.csv").stdout
    jobs = re.findall(r"rule (\w+):\n    input: ([^\n]*)\n    output: ([^\n]*)", plan)
    vectors = sorted(sorted(out.split(", ")) for rule, _, out in jobs if rule == "persona_vectors")
    assert vectors == [[f"results/smoke/persona_vectors/layer{i}.json",
                        f"results/smoke/persona_vectors/layer{i}.safetensors"] for i in (0, 1)]
    for rule, inputs, out in jobs:
        if rule in ("selfchat", "mmlu"):
            layer = 1 if "/steer-" in out else 0 if "/capped-" in out else None
            read = re.findall(r"persona_vectors/layer(\d)\.safetensors", inputs)
            assert read == ([] if layer is None else [str(layer)]), (rule, out, inputs)
    assert "--method-inputs '{\"persona_vectors\": \"results/smoke/persona_vectors/layer1.safetensors\"}'" in plan
    assert "--key interventions.capped.layer" in plan and "--key interventions.steer.layer" in plan
