"""The linear-layer kernel choice (``model.linear_kernel``): oneDNN's matmul where it agrees with
torch's, on real layers and a real model forward; torch's kernel everywhere else."""

import pytest
import torch

from personadrift.generation.linear_kernels import (
    GroupLeadLinear,
    GroupMemberLinear,
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
    assert linears and all(isinstance(m, OneDNNLinear) for m in linears)
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


class Siblings(torch.nn.Module):
    """An attention block's projections and a gated MLP's, called as transformers' Llama calls them."""

    def __init__(self, width=64, bias=False):
        super().__init__()
        self.q_proj = torch.nn.Linear(width, 48, bias=bias)
        self.k_proj = torch.nn.Linear(width, 16, bias=bias)
        self.v_proj = torch.nn.Linear(width, 16, bias=bias)
        self.gate_proj = torch.nn.Linear(width, 96, bias=bias)
        self.up_proj = torch.nn.Linear(width, 96, bias=bias)

    def forward(self, x):
        return (self.q_proj(x), self.k_proj(x), self.v_proj(x), self.gate_proj(x), self.up_proj(x))


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_sibling_projections_share_one_product_and_each_keeps_its_own_numbers(bias):
    torch.manual_seed(0)
    block = Siblings(bias=bias).eval()
    names = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    before = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(12, 64)
    with torch.no_grad():
        ref = block(x)
    assert set_linear_kernel(block, "onednn") == "onednn"
    kinds = [type(getattr(block, n)) for n in names]
    assert kinds == [GroupLeadLinear, GroupMemberLinear, GroupMemberLinear, GroupLeadLinear, GroupMemberLinear]
    state = block.state_dict()  # same names, shapes and values: the weights became views of the stack
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    assert block.q_proj.group_weight.shape == (80, 64)
    assert block.k_proj.weight.untyped_storage().data_ptr() == block.q_proj.group_weight.untyped_storage().data_ptr()
    with torch.no_grad():
        got = block(x)
        for r, g in zip(ref, got):
            assert g.shape == r.shape and torch.allclose(g, r, rtol=1e-5, atol=1e-5)
        # one product per group: the members' outputs are slices of their lead's
        storage = [t.untyped_storage().data_ptr() for t in got]
        assert storage[0] == storage[1] == storage[2] != storage[3] == storage[4]
        # a member called with another tensor (equal values, not the same one) computes its own
        other = x.clone()
        block.q_proj(x)
        assert block.k_proj.handed is not None
        own = block.k_proj(other)
        assert torch.allclose(own, ref[1], rtol=1e-5, atol=1e-5) and block.k_proj.handed is None
        # a member called with no product handed over computes its own too
        assert torch.allclose(block.v_proj(x), ref[2], rtol=1e-5, atol=1e-5)
    # the product is really shared: the lead's stacked weight is what the members' slices come from
    with torch.no_grad():
        block.q_proj.group_weight[48:64].zero_()
        assert torch.equal(block.k_proj.weight, torch.zeros_like(block.k_proj.weight))
        block.q_proj(x)
        k = block.k_proj(x)
        assert torch.equal(k, torch.zeros_like(k) + (block.k_proj.bias if bias else 0))
        # a slice left over (v was not called) is not taken once the weights changed in place
        block.q_proj(x)
        block.v_proj.weight.add_(1.0)
        assert torch.allclose(block.v_proj(x), torch.nn.functional.linear(x, block.v_proj.weight, block.v_proj.bias))
        block.v_proj.weight.sub_(1.0)
        block.q_proj(x)  # leaves slices for k and v, for the calls with gradients below not to take
        # a group whose weight was replaced (not a view of the stack any more) computes layer by layer
        block.k_proj.weight.data = block.k_proj.weight.data.clone()
        q, k = block.q_proj(x), block.k_proj(x)
        assert q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()
        block.k_proj.weight.add_(1.0)  # the replaced weight is the one used
        k = block.k_proj(x)
        assert torch.allclose(k, torch.nn.functional.linear(x, block.k_proj.weight, block.k_proj.bias))
    # with gradients recorded, every layer computes its own product and gets its own gradient
    block.train()
    sum(t.sum() for t in block(x)).backward()
    assert all(getattr(block, n).weight.grad is not None for n in names)
    # back to torch's kernel: plain layers, nothing handed over is kept
    assert set_linear_kernel(block, "torch") == "torch"
    assert all(type(getattr(block, n)) is torch.nn.Linear for n in names)
    assert not any(hasattr(getattr(block, n), "handed") and getattr(block, n).handed is not None for n in names)


@needs_onednn
def test_siblings_are_not_grouped_when_a_weight_is_shared_or_the_widths_differ():
    block = Siblings()
    block.v_proj.weight = block.k_proj.weight  # tied: stacking would untie them
    set_linear_kernel(block, "onednn")
    assert type(block.q_proj) is OneDNNLinear and type(block.k_proj) is OneDNNLinear
    assert type(block.gate_proj) is GroupLeadLinear  # the MLP pair is still grouped
    block = Siblings()
    block.up_proj = torch.nn.Linear(32, 96)
    set_linear_kernel(block, "onednn")
    assert type(block.gate_proj) is OneDNNLinear and type(block.up_proj) is OneDNNLinear


@needs_onednn
def test_the_real_model_groups_every_layer_and_keeps_its_logits(embedded_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir / "weights", dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (12, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in model.modules():  # oneDNN layer by layer, not grouped: the reference
            if type(m) is torch.nn.Linear:
                m.__class__ = OneDNNLinear
        ref = model(ids).logits
        set_linear_kernel(model, "onednn")
        layers = model.config.num_hidden_layers
        assert sum(type(m) is GroupLeadLinear for m in model.modules()) == 2 * layers
        assert sum(type(m) is GroupMemberLinear for m in model.modules()) == 3 * layers
        handed = []
        member = next(m for m in model.modules() if type(m) is GroupMemberLinear)
        hook = member.register_forward_hook(lambda m, args, out: handed.append(out.untyped_storage().data_ptr()))
        lead_out = []
        lead = next(m for m in model.modules() if type(m) is GroupLeadLinear)
        hook2 = lead.register_forward_hook(lambda m, args, out: lead_out.append(out.untyped_storage().data_ptr()))
        got = model(ids).logits
        hook.remove()
        hook2.remove()
    assert handed == lead_out and len(handed) == 1  # the member took its slice of the lead's product
    assert torch.allclose(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
