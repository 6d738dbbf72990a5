"""The ``hf`` backend: the project's batched engine (generation/engine.py) on the fetched model,
in the job's process. The one backend that gives the model's internals."""

from __future__ import annotations

from personadrift.runtime.backends.base import Backend, register


@register
class HF(Backend):
    name = "hf"
    description = "the project's engine on the fetched Hugging Face model, in the job's process"
    gives_internals = True

    def engine(self, config, model_dir, setting=None, *, sampling, threads=None):
        import torch

        from personadrift.generation.models import load_model
        from personadrift.runtime.factory import hf_engine_for

        if threads:
            torch.set_num_threads(threads)
        return hf_engine_for(load_model(model_dir, config["model"]), config, setting)
