"""The ``vllm`` backend: vLLM's offline engine on the fetched weights, in the job's process
(generation/vllm_engine.py), for settings that need no model internals (none, the control,
repetition). vLLM pins its own torch and transformers, so its self-chat jobs run in an
environment of their own: ``envs/vllm.yaml`` under ``--sdm conda``, ``.venv-vllm`` (``make
setup``, from requirements-vllm.txt) otherwise."""

from __future__ import annotations

from personadrift.errors import InputError
from personadrift.runtime.backends.base import Backend, register

# model.dtype values vLLM takes as they are; the others (bfloat16_if_native) leave it the checkpoint's
_DTYPES = ("float32", "float16", "bfloat16", "auto")


@register
class VLLM(Backend):
    name = "vllm"
    description = "vLLM's offline engine on the fetched model, in the job's process (its own environment)"
    section = "vllm"
    env = "vllm"

    def check(self, config, path):
        if config["model"].get("device_map"):
            raise InputError(path, "model.device_map", "backend vllm places the model itself "
                             "(tensor_parallel_size from resources.gpus); leave device_map unset")

    def engine(self, config, model_dir, setting=None, *, sampling, threads=None):
        from personadrift.generation.models import verify_manifest
        from personadrift.generation.vllm_engine import VLLMEngine

        manifest = verify_manifest(model_dir)
        m, v = config["model"], config.get("vllm") or {}
        dtype = m.get("dtype", "float32")
        import torch

        if threads:
            torch.set_num_threads(threads)
        gpus = int((config.get("resources") or {}).get("gpus", 0) or 0)
        return VLLMEngine(
            manifest["weights_path"], sampling=sampling, fold_system_prompt=m.get("fold_system_prompt"),
            dtype=dtype if dtype in _DTYPES else "auto",
            # the context policy (selfchat.context_policy) keeps prompt + reply within this
            max_model_len=m.get("max_context"),
            # the job's GPUs (resources.gpus); on a CPU, one worker
            tensor_parallel_size=max(1, gpus) if torch.cuda.is_available() else 1,
            enforce_eager=v.get("enforce_eager", False), gpu_memory_utilization=v.get("gpu_memory_utilization", 0.9),
            cpu_kvcache_gib=v.get("cpu_kvcache_gib"), max_num_seqs=v.get("max_num_seqs"),
            identity=_identity(manifest, dtype))


def _identity(manifest: dict, dtype: str) -> dict:
    """What provenance records about the weights (as the HF engine's ``LoadedModel.identity``)."""
    keys = ("name", "source", "repo_id", "revision", "package", "gguf_sha256", "weights_dir")
    out = {k: manifest[k] for k in keys if k in manifest}
    out["weights_sha256"] = {k: v.get("sha256") for k, v in manifest.get("files", {}).items()}
    out["dtype"] = dtype
    return out
