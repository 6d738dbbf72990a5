#!/usr/bin/env bash
# Run by Snakemake once after it creates envs/vllm.yaml's environment: remove the CUDA-built
# packages pip pulled in as vLLM's dependencies (see envs/vllm.yaml).
set -euo pipefail
"$CONDA_PREFIX/bin/python" -m pip uninstall --yes torchvision torchaudio torchcodec triton
