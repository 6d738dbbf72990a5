"""A GPU job fails with one line rather than running on the CPU for days: no GPU seen, layers
mapped to the CPU or disk, cards too small for the model (at planning and before the weights
load), CUDA errors no retry can fix. All on the CPU: where a check needs a GPU to be seen, only
torch's CUDA query functions are replaced (the boundary), never a forward pass."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
import yaml

from personadrift.config import check_gpu_memory
from personadrift.errors import InputError
from personadrift.generation import memory
from personadrift.generation.models import DeviceError, check_gpus_present, check_placement, load_model
from personadrift.job import JobResources
from personadrift.runtime.attempts import NoRetryNote, retryable
from support.workflow import REPO, SMOKE, snakemake

LLAMA2_70B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
              "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
              "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "float16"}


def two_gpus(monkeypatch):
    """torch's CUDA queries answer as on a node with two 80 GiB cards."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30))


def test_no_gpu_seen_is_one_line_naming_what_torch_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError) as e:
        check_gpus_present(2)
    msg = str(e.value)
    assert "\n" not in msg and "resources.gpus is 2" in msg and "no CUDA device" in msg
    assert torch.__version__ in msg and "CUDA_VISIBLE_DEVICES=" in msg
    check_gpus_present(0)  # nothing required: nothing checked


def test_fewer_gpus_than_asked_are_refused(monkeypatch):
    two_gpus(monkeypatch)
    check_gpus_present(2)
    with pytest.raises(DeviceError, match=r"resources.gpus is 4, but torch sees cuda:0 NVIDIA H100 80GB HBM3 80 GiB, "
                                          r"cuda:1 .*"):
        check_gpus_present(4)


def test_a_layer_mapped_to_the_cpu_or_disk_is_refused_with_the_map(tiny_model, monkeypatch):
    model, _ = tiny_model
    two_gpus(monkeypatch)
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": "disk",
                  "lm_head": "disk"}
    monkeypatch.setattr(model, "hf_device_map", device_map, raising=False)
    with pytest.raises(DeviceError) as e:
        check_placement(model, 2)
    msg = str(e.value)
    assert "\n" not in msg and "3 part(s) of the model are not on a GPU" in msg
    assert "model.layers.1: cpu" in msg and "lm_head: disk" in msg and str(device_map) in msg
    assert "cuda:0 NVIDIA H100" in msg  # the devices it saw
    check_placement(model, 0)


def test_a_model_on_the_cpu_with_no_map_is_refused_too(tiny_model, monkeypatch):
    model, _ = tiny_model
    two_gpus(monkeypatch)
    with pytest.raises(DeviceError, match="not on a GPU .*cpu"):
        check_placement(model, 1)


def test_load_model_refuses_before_loading_the_weights(tiny_model_dir, tmp_path, caplog):
    from personadrift.generation.models import fetch_model

    fetch_model({"name": "t", "source": "local", "path": str(tiny_model_dir)}, tmp_path)
    with caplog.at_level(logging.INFO), pytest.raises(DeviceError, match="resources.gpus is 1"):
        load_model(tmp_path, job=JobResources(gpus=1))
    assert "loading the model" not in caplog.text
    assert load_model(tmp_path, job=JobResources()).model is not None  # nothing required: the CPU is fine


def test_the_cards_must_hold_the_model_at_planning(tmp_path):
    folder = tmp_path / "resources" / "models" / "llama"
    (folder / "weights").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"weights_dir": "weights"}))
    (folder / "weights" / "config.json").write_text(json.dumps(LLAMA2_70B))
    config = {"model": {"name": "llama", "source": "hf", "dtype": "bfloat16"},
              "resources": {"gpus": 2, "gpu_memory_gb": 80}}
    with pytest.raises(InputError) as e:
        check_gpu_memory(config, "paper.yaml", tmp_path)
    msg = str(e.value)
    assert msg.startswith("paper.yaml: resources.gpus: 2 GPU(s) of 80 GB") and msg.endswith("need 4")
    assert "69.0B parameters in bfloat16 (138 GB)" in msg and "\n" not in msg
    config["resources"] = {"gpus": 2, "gpu_memory_gb": 141}  # the paper config's H200s
    check_gpu_memory(config, "paper.yaml", tmp_path)
    config["resources"] = {"gpus": 4, "gpu_memory_gb": 80}
    check_gpu_memory(config, "paper.yaml", tmp_path)
    assert memory.parameter_count(LLAMA2_70B) == pytest.approx(68.98e9, rel=1e-3)


def test_the_paper_config_states_its_cards_and_fits_them():
    paper = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    res = paper["resources"]
    assert res["gpu_memory_gb"] and not res.get("cpu_fallback")
    assert memory.fit_problem(LLAMA2_70B, paper["model"]["dtype"], res["gpus"], res["gpu_memory_gb"]) is None


def test_cuda_errors_no_retry_can_fix_are_not_retried(tmp_path):
    fatal = RuntimeError("CUDA error: no kernel image is available for execution on the device")
    assert not retryable(fatal)
    assert not retryable(RuntimeError("The NVIDIA driver on your system is too old... "
                                      "CUDA driver version is insufficient for CUDA runtime version"))
    assert retryable(RuntimeError("CUDA error: an illegal memory access was encountered"))  # maybe the node's
    assert retryable(torch.OutOfMemoryError("CUDA out of memory"))
    assert retryable(DeviceError("no GPU"))  # another node may have them
    note = NoRetryNote(tmp_path / "job.log.no-retry", 1)
    note.record(fatal)
    assert json.loads(note.path.read_text())["error"] == "RuntimeError"


def test_the_model_rules_pass_the_job_its_gpus_and_memory(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["resources"].update(cpu_fallback=False, gpu_memory_gb=80, mem_mb=3000)
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "--configfile", tmp_path / "gpu.yaml", "-n", "-p", "--cores", "1").stdout
    calls = [line for line in out.splitlines() if "personadrift calibrate " in line or "personadrift mmlu " in line]
    assert calls and all("--require-gpus 1 --gpu-memory-gb 80 --mem-mb 3000" in c for c in calls), calls[:3]
    smoke = snakemake(tmp_path, "--configfile", SMOKE, "-n", "-p", "--cores", "1").stdout
    assert "--require-gpus 0" in smoke  # the smoke study's fake GPUs: cpu_fallback
