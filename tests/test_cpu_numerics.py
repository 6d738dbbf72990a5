"""CPU numerics pinned before torch loads (``model.cpu_numerics``, numerics.py): a fresh interpreter
given a config through the command line runs torch, oneDNN, MKL and numpy at the pinned settings; native
leaves the environment alone; the settings reach provenance and the self-chat fingerprint.

Each library reads its variable when it loads, so every check runs in a fresh interpreter."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import yaml

from personadrift.numerics import PINNED, VARIABLES, mode_of_argv, unpinned_environ
from support.workflow import REPO

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the pinned settings are x86-64 instruction sets")

# A fresh interpreter: the command line's entry with a config (validate imports no torch), then
# torch and one oneDNN linear, whose verbose log names the instruction set oneDNN runs at.
PROBE = """
import json, os, sys
from personadrift.cli import main
assert main(sys.argv[1:]) == 0
assert "torch" not in sys.modules
from numpy._core._multiarray_umath import __cpu_features__
import torch
torch.ops.mkldnn._linear_pointwise(torch.randn(8, 64), torch.randn(32, 64), None, "none", [], "")
from personadrift.provenance import hardware
print(json.dumps({"env": {k: os.environ.get(k) for k in %r}, "capability": torch.backends.cpu.get_cpu_capability(),
                  "provenance": hardware()["cpu_numerics"],
                  "numpy_avx512": sorted(k for k in %r if __cpu_features__.get(k))}))
"""
NUMPY_AVX512_TARGETS = tuple(PINNED["pinned_avx2"]["NPY_DISABLE_CPU_FEATURES"].split())
PROBE %= (VARIABLES, NUMPY_AVX512_TARGETS)
# numpy's AVX-512 targets this machine has, as numpy detects them with nothing disabled
NUMPY_AVX512 = ("import json; from numpy._core._multiarray_umath import __cpu_features__ as f; "
                f"print(json.dumps(sorted(k for k in {NUMPY_AVX512_TARGETS!r} if f.get(k))))")


def fresh(argv, **env):
    clean = unpinned_environ()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=REPO,
                          env={**clean, "ONEDNN_VERBOSE": "1", **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    isa = next((ln.split("isa:")[1] for ln in lines if ",isa:" in ln), None)
    return json.loads(lines[-1]), isa


def config_with(tmp_path, mode=None):
    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    if mode:
        cfg["model"]["cpu_numerics"] = mode
    path = tmp_path / f"{mode or 'default'}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_fresh_interpreter_given_the_config_runs_pinned_at_avx2(tmp_path):
    out, isa = fresh(["validate", "--config", str(config_with(tmp_path))])  # the default: pinned_avx2
    assert out["env"] == PINNED["pinned_avx2"]
    assert out["capability"] == "AVX2"
    assert isa == "Intel AVX2"
    assert out["numpy_avx512"] == []  # numpy's exp and log run their AVX2 loops, AVX-512 machine or not
    prov = out["provenance"]
    assert prov["mode"] == "pinned_avx2" and prov["cpu_capability"] == "AVX2"
    assert all(prov[k] == v for k, v in PINNED["pinned_avx2"].items())


def test_pinned_wins_over_an_inherited_setting_and_native_leaves_it(tmp_path):
    # an inherited cap below AVX2 shows the variables are read at load: native keeps it, pinned replaces it
    out, isa = fresh(["validate", "--config", str(config_with(tmp_path, "native"))],
                     ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41")
    assert out["capability"] == "DEFAULT" and isa == "Intel SSE4.1"
    assert out["provenance"]["mode"] == "native" and out["provenance"]["ATEN_CPU_CAPABILITY"] == "default"
    detected = subprocess.run([sys.executable, "-c", NUMPY_AVX512], capture_output=True, text=True,
                              env=unpinned_environ(), check=True).stdout
    assert out["numpy_avx512"] == json.loads(detected)  # native: numpy's own choice
    out, isa = fresh(["validate", "--config", str(config_with(tmp_path, "pinned_avx2"))],
                     ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41")
    assert out["capability"] == "AVX2" and isa == "Intel AVX2"


def test_rule_params_carry_the_mode(tmp_path):
    """The rules pass the model section as JSON (--params, or @file): its mode, or the default."""
    assert mode_of_argv(["selfchat", "--params", json.dumps({"model": {"cpu_numerics": "native"}})]) == "native"
    assert mode_of_argv(["selfchat", "--params", json.dumps({"model": {"name": "x"}})]) == "pinned_avx2"
    assert mode_of_argv(["score", "--params", json.dumps({"scoring": {}})]) is None  # no model: nothing to pin
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"model": {"cpu_numerics": "native"}}))
    assert mode_of_argv(["mmlu", f"--params=@{f}"]) == "native"
    assert mode_of_argv(["mmlu", "--params", "{not json"]) is None


def test_the_mode_is_a_validated_config_key(tmp_path):
    from personadrift.config import check_config
    from personadrift.errors import InputError

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["model"]["cpu_numerics"] = "avx512"
    with pytest.raises(InputError) as e:
        check_config(cfg, "cfg.yaml", REPO)
    assert e.value.field == "model.cpu_numerics" and "pinned_avx2" in e.value.problem


def test_the_selfchat_fingerprint_holds_the_cpu_numerics():
    from personadrift.config import validate_config
    from personadrift.generation.selfchat import generation_fingerprint
    from personadrift.interventions.settings import expand_settings

    cfg = validate_config(yaml.safe_load((REPO / "configs/smoke.yaml").read_text()))
    setting = expand_settings(cfg["interventions"])[0]
    pinned = {"mode": "pinned_avx2", **PINNED["pinned_avx2"], "cpu_capability": "AVX2", "threads": 1}
    native = {"mode": "native", **dict.fromkeys(VARIABLES), "cpu_capability": "AVX2", "threads": 1}
    fps = {generation_fingerprint(cfg, setting, {"cpu_numerics": n}) for n in (pinned, native, {**pinned, "threads": 2})}
    assert len(fps) == 3
    # an API model (no CPU numerics recorded) keeps one fingerprint whatever the mode
    assert generation_fingerprint(cfg, setting, {}) == generation_fingerprint(cfg, setting, {"cpu_numerics": None})


@pytest.mark.slow
def test_the_smoke_runs_model_jobs_record_the_pinned_settings(smoke):
    """Every model job of the workflow (separate processes, started by Snakemake) ran pinned."""
    rec = json.loads(next((smoke / "results/smoke/transcripts/none").glob("shard-*/conv-*.json")).read_text())
    assert rec["provenance"]["cpu_numerics"]["mode"] == "pinned_avx2"
    assert rec["provenance"]["cpu_numerics"]["cpu_capability"] == "AVX2"
    assert rec["provenance"]["hardware"]["cpu_numerics"]["ATEN_CPU_CAPABILITY"] == "avx2"
    calib = json.loads((smoke / "results/smoke/calibration.csv.provenance.json").read_text())
    assert calib["hardware"]["cpu_numerics"]["MKL_CBWR"] == "AVX2,STRICT"
    assert calib["hardware"]["cpu_numerics"]["threads"] == 1  # resources.threads
