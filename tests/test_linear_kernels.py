"""The linear-layer kernel choice (``model.linear_kernel``): oneDNN's matmul where it agrees with
torch's, on real layers and a real model forward; torch's kernel everywhere else."""

import pytest
import torch

from personadrift.generation.linear_kernels import (
    OneDNNLinear,
    linear_kernel_of,
    onednn_available,
    set_linear_kernel,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")


def fresh_tiny(tiny_model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).eval()


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (12, 64), (3, 5, 64)])
def test_onednn_linear_computes_the_same_product_as_torch(shape, bias):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(64, 96, bias=bias).eval()
    x = torch.randn(*shape, generator=g)
    with torch.no_grad():
        ref = layer(x)
        layer.__class__ = OneDNNLinear
        got = layer(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, torch.zeros_like(got))


@needs_onednn
def test_onednn_switches_every_float32_layer_keeps_tied_weights_and_the_logits(tiny_model_dir):
    model = fresh_tiny(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 2]])
    with torch.no_grad():
        ref = model(ids).logits
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    assert set_linear_kernel(model, "onednn") == "onednn" == linear_kernel_of(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is OneDNNLinear for m in linears)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    with torch.no_grad():
        got = model(ids).logits
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4)
    # back to torch's kernel: the very same numbers as before the switch
    assert set_linear_kernel(model, "torch") == "torch" == linear_kernel_of(model)
    assert all(type(m) is torch.nn.Linear for m in linears)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_auto_picks_onednn_only_for_wide_float32_layers_it_agrees_on(tiny_model_dir, monkeypatch):
    from personadrift.generation import linear_kernels

    tiny = fresh_tiny(tiny_model_dir)
    assert min(m.in_features for m in tiny.modules() if isinstance(m, torch.nn.Linear)) < linear_kernels.AUTO_MIN_WIDTH
    assert set_linear_kernel(tiny, "auto") == "torch"  # narrow layers: oneDNN was slower there
    wide = torch.nn.Sequential(torch.nn.Linear(512, 600), torch.nn.Linear(600, 512))
    assert set_linear_kernel(wide, "auto") == ("onednn" if onednn_available() else "torch")
    assert set_linear_kernel(wide.to(torch.bfloat16), "auto") == "torch"  # oneDNN here is float32 only
    with pytest.raises(ValueError, match="linear kernel"):
        set_linear_kernel(tiny, "mkl")
    if onednn_available():  # a kernel that disagrees is never picked, and refused when asked for
        monkeypatch.setattr(linear_kernels, "_agrees", lambda layer: False)
        wide = torch.nn.Sequential(torch.nn.Linear(512, 600))
        assert set_linear_kernel(wide, "auto") == "torch" and type(wide[0]) is torch.nn.Linear
        with pytest.raises(linear_kernels.KernelUnavailable, match="disagrees"):
            set_linear_kernel(wide, "onednn")
    monkeypatch.setattr(linear_kernels, "onednn_available", lambda: False)
    with pytest.raises(linear_kernels.KernelUnavailable, match="no oneDNN"):
        set_linear_kernel(tiny, "onednn")


@needs_onednn
def test_gradients_still_flow_through_a_switched_layer():
    layer = torch.nn.Linear(8, 4)
    layer.__class__ = OneDNNLinear
    layer(torch.randn(3, 8)).sum().backward()  # falls back to torch's kernel when grad is needed
    assert layer.weight.grad is not None


def test_load_model_uses_and_records_the_configured_kernel(tiny_model_dir, tmp_path):
    import json

    from personadrift.errors import InputError
    from personadrift.generation.models import fetch_model, load_model
    from personadrift.generation.selfchat import generation_fingerprint
    from personadrift.interventions.settings import expand_settings

    dest = tmp_path / "fetched"
    fetch_model({"name": "tiny-local", "source": "local", "path": str(tiny_model_dir)}, dest)
    plain = load_model(dest, {"linear_kernel": "torch"})
    assert plain.identity["linear_kernel"] == "torch" == linear_kernel_of(plain.model)
    assert load_model(dest).identity["linear_kernel"] == "torch"  # auto, on the tiny model's narrow layers
    if not onednn_available():
        with pytest.raises(InputError, match="model.linear_kernel"):
            load_model(dest, {"linear_kernel": "onednn"})
        return
    fast = load_model(dest, {"linear_kernel": "onednn"})
    assert fast.identity["linear_kernel"] == "onednn" == linear_kernel_of(fast.model)
    json.dumps(fast.identity)
    # a checkpoint made under one kernel is not resumed under the other
    setting = expand_settings({"none": {"method": "none"}})[0]
    config = {"selfchat": {"turns": 2}, "seed": 0, "backend": "hf"}
    fp = [generation_fingerprint(config, setting, {"model": lm.identity}) for lm in (fast, plain)]
    assert fp[0] != fp[1]


def test_the_embedded_model_runs_on_onednn_by_default_where_torch_has_it(embedded_model):
    model, _ = embedded_model
    assert linear_kernel_of(model) == ("onednn" if onednn_available() else "torch")


@needs_onednn
def test_a_switched_layer_packs_its_weight_once_and_again_when_the_weight_changes():
    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(64, 96).eval()
    layer.__class__ = OneDNNLinear
    x = torch.randn(12, 64, generator=g)
    with torch.no_grad():
        first = layer(x)
        pack = layer.__dict__["_onednn_pack"]
        packed = pack.weight
        assert packed is not None and packed.is_mkldnn  # oneDNN's blocked copy, not the parameter
        assert torch.equal(layer(x), first) and pack.weight is packed  # reused, not packed per call
        layer.weight.mul_(2.0)  # in place through the parameter: seen by its version counter
        assert pack.weight is packed  # nothing repacks until the next forward
        assert torch.allclose(layer(x), 2 * first - layer.bias, rtol=1e-5, atol=1e-5)
        assert pack.weight is not packed
        layer.weight = torch.nn.Parameter(torch.zeros(96, 64))  # a new parameter: new storage
        assert torch.allclose(layer(x), layer.bias.expand(12, 96))


@needs_onednn
def test_one_row_keeps_the_plain_weight_and_more_rows_agree_with_it():
    from personadrift.generation.linear_kernels import _onednn_linear

    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(576, 192).eval()
    layer.__class__ = OneDNNLinear
    with torch.no_grad():
        one = torch.randn(1, 576, generator=g)
        assert torch.equal(layer(one), _onednn_linear(one, layer.weight, layer.bias))
        assert "_onednn_pack" not in layer.__dict__  # no pack made for one row
        for rows in (2, 12, 36, 130):
            x = torch.randn(rows, 576, generator=g)
            assert torch.allclose(layer(x), _onednn_linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_packed_model_copies_and_switches_back_cleanly(tiny_model_dir):
    import copy

    model = fresh_tiny(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 2], [3, 4, 5, 6, 7, 8, 9]])
    set_linear_kernel(model, "onednn")
    with torch.no_grad():
        ref = model(ids).logits  # packs every layer
    assert all("_onednn_pack" in m.__dict__ for m in model.modules() if type(m) is OneDNNLinear)
    twin = copy.deepcopy(model)  # oneDNN's packed tensors cannot be copied: the copy packs its own
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, ref)
    set_linear_kernel(model, "torch")
    assert not any("_onednn_pack" in m.__dict__ for m in model.modules())  # packs freed


@needs_onednn
def test_a_layer_made_under_inference_mode_runs_on_packed_weights():
    with torch.inference_mode():  # its weight is an inference tensor: no version counter to read
        layer = torch.nn.Linear(64, 96).eval()
        x = torch.randn(12, 64)
        ref = layer(x)
        layer.__class__ = OneDNNLinear
        assert torch.allclose(layer(x), ref, rtol=1e-5, atol=1e-5)
        assert layer.__dict__["_onednn_pack"].weight is not None
