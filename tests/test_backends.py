"""A backend is one module (runtime/backends/): the config check, the factory and the rules ask
the registered backend object, never compare its name. Quick: no model, no vLLM."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from personadrift.config import check_config, read_yaml
from personadrift.errors import InputError
from personadrift.interventions.settings import expand_settings
from personadrift.runtime.backends import BACKENDS, backend_of, model_job_backend
from personadrift.runtime.factory import make_engine
from support.workflow import REPO, SMOKE, snakemake

VLLM_FAMILIES = ("none", "control", "repeat")


def smoke_on(backend: str, families=VLLM_FAMILIES) -> dict:
    cfg = {"backend": "hf", **read_yaml(SMOKE)}
    for family in families:
        cfg["interventions"][family]["backend"] = backend
    return cfg


def refused(cfg) -> InputError:
    with pytest.raises(InputError) as e:
        check_config(cfg, "cfg.yaml", REPO)
    assert "\n" not in str(e.value) and str(e.value).startswith("cfg.yaml: ")
    return e.value


def test_the_registry_holds_each_backend_with_what_it_gives():
    assert set(BACKENDS) == {"hf", "openai", "vllm"}
    assert [n for n, b in BACKENDS.items() if b.gives_internals] == ["hf"]
    assert not BACKENDS["openai"].local_weights and BACKENDS["vllm"].local_weights
    assert BACKENDS["vllm"].env == "vllm" and BACKENDS["hf"].env == BACKENDS["openai"].env == "model"


def test_settings_that_need_internals_are_refused_on_vllm_naming_the_key():
    cfg = smoke_on("vllm", ("none", "split"))
    e = refused(cfg)
    assert e.field == "interventions.split.backend" and "split_softmax needs model internals" in e.problem
    assert "backend: vllm" in e.problem
    study = read_yaml(SMOKE)
    study["backend"] = "vllm"  # the study's backend: the guidance entry names no backend of its own
    e = refused(study)
    assert e.field == "interventions.split.method" and "cannot run with backend: vllm" in e.problem


def test_backend_names_come_from_the_registry():
    cfg = smoke_on("vlm", ("none",))
    e = refused(cfg)
    assert e.field == "interventions.none.backend" and "['hf', 'openai', 'vllm']" in e.problem
    cfg = read_yaml(SMOKE)
    cfg["backend"] = "tgi"
    assert refused(cfg).field == "backend"


def test_model_source_follows_the_backend():
    cfg = read_yaml(SMOKE)
    cfg["backend"] = "vllm"
    cfg["interventions"] = {"none": {"method": "none"}}
    check_config(copy.deepcopy(cfg), "cfg.yaml", REPO)
    cfg["model"] = {"name": "m", "source": "api"}
    cfg["openai"] = {"model": "m"}
    assert refused(copy.deepcopy(cfg)).field == "model.source"  # vllm runs local weights
    cfg["backend"] = "openai"
    cfg["interventions"]["none"]["backend"] = "vllm"
    e = refused(cfg)
    assert e.field == "interventions.none.backend" and "fetches none" in e.problem


def test_vllm_refuses_a_device_map():
    cfg = smoke_on("vllm")
    cfg["model"]["device_map"] = "auto"
    assert refused(cfg).field == "model.device_map"
    cfg = smoke_on("vllm")
    cfg["vllm"] = {"enforce_eager": "yes"}
    assert refused(cfg).field == "vllm.enforce_eager"


def test_the_factory_refuses_before_it_builds(tmp_path):
    cfg = smoke_on("vllm", ("none", "split"))
    cfg["interventions"]["split"].pop("backend")
    check_config(cfg, "cfg.yaml", REPO)
    split = next(s for s in expand_settings(cfg["interventions"]) if s.method == "split_softmax")
    with pytest.raises(InputError) as e:
        make_engine(cfg, tmp_path, split, backend="vllm")
    assert e.value.field == "interventions.split.method"


def test_a_vllm_study_calibrates_on_the_engine_with_internals():
    cfg = read_yaml(SMOKE)
    cfg["backend"] = "vllm"
    assert model_job_backend(cfg).name == "hf"
    cfg["backend"] = "openai"
    assert model_job_backend(cfg).name == "openai"
    assert backend_of(smoke_on("vllm"), expand_settings(smoke_on("vllm")["interventions"])[0]).name == "vllm"


def test_importing_the_registry_imports_no_model_stack():
    code = ("import sys, json; import personadrift.runtime.backends, personadrift.config; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == []


def test_vllm_settings_get_their_own_rule_and_environment(tmp_path):
    """The DAG routes each setting's self-chat to the rule of its backend's environment:
    vLLM settings to selfchat_vllm (envs/vllm.yaml, or .venv-vllm's CLI), the others to selfchat."""
    cfg = smoke_on("vllm")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "-n", "-p", "--cores", "1",
                    "results/smoke/scores/none.csv", "results/smoke/scores/split-k0.5.csv",
                    "results/smoke/scores/control.csv", "results/smoke/scores/repeat-every1.csv",
                    "results/smoke/scores/cfg-g1.5.csv")
    plan = out.stdout + out.stderr
    jobs = re.findall(r"rule (selfchat\w*):.*?wildcards: setting=([\w.-]+), shard=\d+", plan, flags=re.S)
    routed = {setting: rule for rule, setting in jobs}
    assert routed == {"none": "selfchat_vllm", "control": "selfchat_vllm", "repeat-every1": "selfchat_vllm",
                      "split-k0.5": "selfchat", "cfg-g1.5": "selfchat"}
    vllm_cli = {line for line in plan.splitlines() if " selfchat --params" in line and "--setting none" in line}
    assert vllm_cli and all(".venv-vllm" in line or "make setup" in line for line in vllm_cli), vllm_cli
    # the MMLU of a vLLM setting runs on the HF engine (the internals backend)
    assert '\\"backend\\": \\"hf\\"' in plan or '"backend": "hf"' in plan
