"""Which matrix-multiply kernel the model's linear layers use on a CPU (``model.linear_kernel``).

On x86 CPUs torch runs a float32 ``nn.Linear`` on MKL's sgemm. At the batch sizes of a self-chat
(one row per conversation and step: 12 to 128 rows) oneDNN's matmul is faster on the same
weights: all linear layers of SmolLM2-135M at 12 rows took 66 ms against MKL's 80, at 36 rows 91
against 119-130 on 2 threads, and the engine ran about 1.25x faster on 2 threads and 1.05x on 1
(measured side by side; README, Benchmarks). Both are float32 with float32 accumulation: outputs
agree within a few 1e-6 of each other and of a float64 product.

``onednn`` switches every float32 ``nn.Linear`` on the CPU to :class:`OneDNNLinear` (the same
module, same parameters, so tied embeddings stay tied; only ``forward`` calls oneDNN) after
checking, on one of the model's own layers, that oneDNN agrees with torch's kernel (it is an
error if it is missing or disagrees). ``auto`` does the same where oneDNN is there, agrees, and
the layers are at least ``AUTO_MIN_WIDTH`` wide: on narrower layers (the test suite's tiny
models) oneDNN's per-call cost made it slower than MKL, down to half MKL's speed at one row
(measured at widths 128-2048, 1 and 2 threads). Layers on a GPU or in another dtype always keep
torch's kernel; no model class is changed. ``torch`` keeps torch's kernel everywhere. The kernel
in use is recorded in provenance and in the self-chat checkpoint fingerprint.

With oneDNN, sibling projections that read the same input (an attention block's ``q_proj``,
``k_proj``, ``v_proj``; a gated MLP's ``gate_proj``, ``up_proj``) run as one product over their
stacked weights (:class:`GroupLeadLinear`): at a self-chat's small batches one wider product is
faster than three narrow ones (measured once, side by side, on SmolLM2's shapes at 12 rows and
2 threads: q, k, v 145 against 225 us; gate and up 376 against 429; on 1 thread 192 against 231
and about even). The first member computes the whole product and hands each other
member its slice for that very input tensor (:class:`GroupMemberLinear`); a member called with any
other tensor, after its weights changed in place, or while gradients are recorded, computes its
own product, and a group whose weights were replaced (not views of the stack any more) computes
layer by layer. The members' weights
become views into the stacked tensor: parameters, names and ``state_dict`` are unchanged.
"""

from __future__ import annotations

import logging
import platform

import torch

log = logging.getLogger(__name__)

KERNELS = ("auto", "onednn", "torch")
AUTO_MIN_WIDTH = 512  # narrowest layer input for which ``auto`` picks oneDNN
ONEDNN = "onednn"
TORCH = "torch"


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's dense linear op (x86 CPU builds do)."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on oneDNN's dense matmul (no fused activation)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose float32 CPU forward runs on oneDNN (anything else: torch's kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _onednn_applies(x, self.weight):
            return super().forward(x)  # the oneDNN op has no autograd; training uses torch's kernel
        return _onednn_linear(x, self.weight, self.bias)


def _onednn_applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)))


# Projections of one module that read the same input, in the order the module calls them.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class GroupLeadLinear(OneDNNLinear):
    """The first of sibling projections (``SIBLINGS``): computes all their outputs in one oneDNN
    product over the stacked weights and hands the others their slices."""

    group_weight: torch.Tensor
    group_bias: torch.Tensor | None
    group_sizes: list[int]
    members: list[GroupMemberLinear]

    group_ptrs: list[int]  # where each layer's weight starts in the stack

    def _intact(self) -> bool:
        """Every layer's weight is still its view of the stack (not replaced, e.g. ``.data = ...``)."""
        layers = (self, *self.members)
        return all(m.weight.data_ptr() == p for m, p in zip(layers, self.group_ptrs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_onednn_applies(x, self.weight) and self._intact()):
            for member in self.members:  # nothing from an earlier call may be taken for this one
                member.handed = None
            return super().forward(x)
        own, *rest = _onednn_linear(x, self.group_weight, self.group_bias).split(self.group_sizes, dim=-1)
        for member, y in zip(self.members, rest):
            # a parameter's version counter is its own (not its base's): a member's in-place edit shows there
            member.handed = (x, y, member.weight._version)
        return own


class GroupMemberLinear(OneDNNLinear):
    """A sibling projection after the first: returns the slice the first computed for this very
    input tensor (identity, not equality) with its weights as they are now (not changed in place
    since), else its own product. A slice is taken at most once."""

    handed: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handed, self.handed = self.handed, None
        if handed is not None and handed[0] is x and handed[2] == self.weight._version:
            return handed[1]
        return super().forward(x)


_KERNEL_CLASSES = (torch.nn.Linear, OneDNNLinear, GroupLeadLinear, GroupMemberLinear)
_GROUP_ATTRS = ("group_weight", "group_bias", "group_sizes", "group_ptrs", "members", "handed")


def _linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) in _KERNEL_CLASSES]


def _sibling_groups(model) -> list[list[torch.nn.Linear]]:
    """Groups of ``SIBLINGS`` that can share one product: float32 CPU layers of one module with the
    same input width, all with or all without bias, none of their weights shared with another layer."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    groups = []
    for module in model.modules():
        for names in SIBLINGS:
            layers = [getattr(module, n, None) for n in names]
            if not all(type(m) in _KERNEL_CLASSES and _eligible(m) for m in layers):
                continue
            if (len({m.in_features for m in layers}) == 1 and len({m.bias is None for m in layers}) == 1
                    and all(uses[id(m.weight)] == 1 for m in layers)):
                groups.append(layers)
    return groups


def _group(layers: list[torch.nn.Linear]) -> None:
    """Stack the layers' weights (theirs become views of the stack) and switch them to the group classes."""
    lead, *members = layers
    with torch.no_grad():
        weight = torch.cat([m.weight.detach() for m in layers])
        bias = None if lead.bias is None else torch.cat([m.bias.detach() for m in layers])
        start = 0
        for m in layers:
            n = m.out_features
            m.weight.data = weight[start:start + n]
            if bias is not None:
                m.bias.data = bias[start:start + n]
            start += n
    lead.__class__ = GroupLeadLinear
    lead.group_weight, lead.group_bias = weight, bias
    lead.group_sizes = [m.out_features for m in layers]
    lead.group_ptrs = [m.weight.data_ptr() for m in layers]
    lead.members = members
    for m in members:
        m.__class__ = GroupMemberLinear
        m.handed = None


def _eligible(m: torch.nn.Linear) -> bool:
    return m.weight.device.type == "cpu" and m.weight.dtype == torch.float32


def _agrees(layer: torch.nn.Linear) -> bool:
    """oneDNN and torch's kernel give the same product on this layer within float32 rounding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, layer.in_features, generator=g)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
        got = _onednn_linear(x, layer.weight, layer.bias)
    scale = float(ref.abs().max()) or 1.0
    return got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-4 * scale


class KernelUnavailable(RuntimeError):
    """``onednn`` was asked for where torch has no oneDNN linear, or where it disagrees with torch's."""


def set_linear_kernel(model, kernel: str = "auto") -> str:
    """Switch the model's linear layers to ``kernel`` ("auto", "onednn" or "torch"); returns the
    kernel now in use by its float32 CPU layers: "onednn" or "torch"."""
    if kernel not in KERNELS:
        raise ValueError(f"linear kernel must be one of {KERNELS}, not {kernel!r}")
    layers = _linears(model)
    eligible = [m for m in layers if _eligible(m)]
    use_onednn = False
    if kernel == "onednn":
        if not onednn_available():
            raise KernelUnavailable("this torch build has no oneDNN linear (x86 CPU builds have it)")
        if eligible and not _agrees(eligible[0]):
            raise KernelUnavailable("oneDNN's linear disagrees with torch's on this machine")
        use_onednn = bool(eligible)
    elif kernel == "auto" and eligible and onednn_available():
        if min(m.in_features for m in eligible) >= AUTO_MIN_WIDTH:
            use_onednn = _agrees(eligible[0])
            if not use_onednn:
                log.warning("oneDNN's linear disagrees with torch's on this machine: keeping torch's kernel")
    for m in layers:
        for attr in _GROUP_ATTRS:
            m.__dict__.pop(attr, None)
        m.__class__ = OneDNNLinear if use_onednn and _eligible(m) else torch.nn.Linear
    if use_onednn:
        for group in _sibling_groups(model):
            _group(group)
    return ONEDNN if use_onednn else TORCH


def linear_kernel_of(model) -> str:
    """The kernel the model's linear layers use now ("onednn" if any layer was switched)."""
    return ONEDNN if any(isinstance(m, OneDNNLinear) for m in model.modules()) else TORCH
