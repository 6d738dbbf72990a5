"""Which matrix-multiply kernel the model's linear layers use on a CPU (``model.linear_kernel``).

On x86 CPUs torch runs a float32 ``nn.Linear`` on MKL's sgemm. At the batch sizes of a self-chat
(one row per conversation and step: 12 to 128 rows) oneDNN's matmul is faster on the same
weights: all linear layers of SmolLM2-135M at 12 rows took 66 ms against MKL's 80, at 36 rows 91
against 119-130 on 2 threads, and the engine ran about 1.25x faster on 2 threads and 1.05x on 1
(measured side by side; docs/measurements.md, Benchmarks). Both are float32 with float32 accumulation: outputs
agree within a few 1e-6 of each other and of a float64 product.

Weights are handed to oneDNN pre-packed: given a plain ``[out, in]`` weight, oneDNN reorders it
into its blocked layout on every call, which at these batch sizes cost nearly as much as the
product itself. Each layer keeps one packed copy of its weight (made at its first forward, made
again when the weight is replaced or changed in place through the parameter).
``bench/linear_packing.py`` compares the two side by side: all linear layers of SmolLM2-135M once
at 12 rows took 50 ms instead of 88 on one thread, at 36 rows 113 instead of 150, and the engine
at the default shard ran 1.21x faster (docs/measurements.md, Benchmarks). On the project machine the packed and
the plain weight give bitwise the same product from two rows up and differ in the last bits at one
row; one row therefore keeps the plain weight, so every product, and so every transcript, is what
it was before packing. The price is memory: one more float32 copy of the linear weights (540 MB for
SmolLM2-135M) while the model runs on oneDNN.

``onednn`` switches every float32 ``nn.Linear`` on the CPU to :class:`OneDNNLinear` (the same
module, same parameters, so tied embeddings stay tied; only ``forward`` calls oneDNN) after
checking, on one of the model's own layers, that oneDNN agrees with torch's kernel (it is an
error if it is missing or disagrees). ``auto`` does the same where oneDNN is there, agrees, and
the layers are at least ``AUTO_MIN_WIDTH`` wide: on narrower layers (the test suite's tiny
models) oneDNN's per-call cost made it slower than MKL, down to half MKL's speed at one row
(measured at widths 128-2048, 1 and 2 threads, before packing; docs/measurements.md, "Where a
step's time goes", has a later scratch measurement). Layers on a GPU or in another dtype always keep
torch's kernel; no model class is changed. ``torch`` keeps torch's kernel everywhere. The kernel
in use is recorded in provenance and in the self-chat checkpoint fingerprint.

Batch invariance (``model.batch_invariant``): with the packed weight, oneDNN's product for a row
was bitwise the same at every row count (1 to 1,000) and every position in the batch, on 1 and 2
threads, for every layer shape of SmolLM2-135M and of the tiny test model; the plain weight
differs at one row and MKL from one to three rows (and, on 2 threads, at some larger counts).
:class:`InvariantOneDNNLinear` therefore uses the packed weight at every row count, so a row's
product does not depend on what shares its batch (tests/test_batch_invariance.py checks it). That
holds for oneDNN's AVX2 kernels: its AVX-512 ones (a CPU with AVX-512 and ``model.cpu_numerics:
native``) gave a row of SmolLM2-135M's down projection other bits alone than beside other rows, so
switching a model to batch invariance first probes each of its layer shapes at a few row counts
and refuses where a row's product varies.
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


# The batch size oneDNN picks the packed layout for: hints of 8 to 128 gave times within each
# other's noise at 4 to 1,024 rows (one scratch measurement, 1 and 2 threads, not kept).
PACK_ROWS_HINT = 16


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on oneDNN's dense matmul (no fused activation); ``weight`` plain or packed."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _Pack:
    """A layer's weight in oneDNN's blocked layout, and which state of the weight it was made from.

    Copies of a module (``copy.deepcopy``, pickling) get an empty pack and make their own: oneDNN's
    opaque tensors cannot be copied."""

    def __init__(self):
        self.source: tuple | None = None
        self.weight: torch.Tensor | None = None

    def of(self, w: torch.Tensor) -> torch.Tensor:
        # Storage, in-place version and shape: a replaced weight (``model.to``, a new parameter)
        # or one changed in place through the parameter (``load_state_dict``) is packed again.
        # An edit through ``weight.data``, or of a weight made under ``torch.inference_mode`` (which
        # has no version counter), is not seen: call set_linear_kernel after one.
        source = (w.data_ptr(), None if w.is_inference() else w._version, tuple(w.shape))
        if source != self.source:
            with torch.no_grad():
                self.weight = torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS_HINT)
            self.source = source
        assert self.weight is not None
        return self.weight

    def __reduce__(self):  # copy.deepcopy and pickle: an empty pack
        return (_Pack, ())


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose float32 CPU forward runs on oneDNN with a pre-packed weight (anything
    else: torch's kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return super().forward(x)  # the oneDNN op has no autograd; training uses torch's kernel
        if x.numel() <= x.shape[-1]:  # one row (or none): the plain weight, whose product packing would change
            return _onednn_linear(x, w, self.bias)
        pack = self.__dict__.get("_onednn_pack")
        if pack is None:
            pack = self.__dict__["_onednn_pack"] = _Pack()
        return _onednn_linear(x, pack.of(w), self.bias)


class InvariantOneDNNLinear(OneDNNLinear):
    """:class:`OneDNNLinear` with the packed weight at every row count, one row included: the
    kernel and its summation order are then those of any other row count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return torch.nn.functional.linear(x, w, self.bias)
        pack = self.__dict__.get("_onednn_pack")
        if pack is None:
            pack = self.__dict__["_onednn_pack"] = _Pack()
        return _onednn_linear(x, pack.of(w), self.bias)


def _linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) in (torch.nn.Linear, OneDNNLinear, InvariantOneDNNLinear)]


def _eligible(m: torch.nn.Linear) -> bool:
    return m.weight.device.type == "cpu" and m.weight.dtype == torch.float32


def _agrees(layer: torch.nn.Linear) -> bool:
    """oneDNN and torch's kernel give the same product on this layer within float32 rounding."""
    g = torch.Generator().manual_seed(0)
    packed = _Pack().of(layer.weight)
    for rows, weight in ((5, packed), (1, layer.weight)):  # as OneDNNLinear runs them
        x = torch.randn(rows, layer.in_features, generator=g)
        with torch.no_grad():
            ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
            got = _onednn_linear(x, weight, layer.bias)
        scale = float(ref.abs().max()) or 1.0
        if got.shape != ref.shape or float((got - ref).abs().max()) > 1e-4 * scale:
            return False
    return True


INVARIANCE_PROBE_ROWS = (2, 7, 48)  # row counts a probe row is compared at against itself alone


def _rows_vary(layers: list[torch.nn.Linear]) -> str | None:
    """Where the packed oneDNN product of a row is not bitwise the same alone and beside other rows
    (first and last in a batch of each of ``INVARIANCE_PROBE_ROWS``): the first layer shape where it
    varies, or None. One layer of each shape, its own weight, the threads in force. oneDNN picks its
    kernels by instruction set, and its AVX-512 ones varied with the row count where the AVX2 ones
    did not (SmolLM2-135M's 1536 -> 576 layer on an AMD EPYC with AVX-512)."""
    g = torch.Generator().manual_seed(0)
    seen = set()
    for layer in layers:
        shape = (layer.in_features, layer.out_features)
        if shape in seen:
            continue
        seen.add(shape)
        packed = _Pack().of(layer.weight)
        row = torch.randn(1, layer.in_features, generator=g)
        with torch.no_grad():
            alone = _onednn_linear(row, packed, layer.bias)
            for n in INVARIANCE_PROBE_ROWS:
                mates = torch.randn(n - 1, layer.in_features, generator=g)
                for at, x in ((0, torch.cat([row, mates])), (n - 1, torch.cat([mates, row]))):
                    if not torch.equal(_onednn_linear(x, packed, layer.bias)[at:at + 1], alone):
                        return f"a {shape[0]} -> {shape[1]} layer, alone against row {at + 1} of {n}"
    return None


class KernelUnavailable(RuntimeError):
    """``onednn`` was asked for where torch has no oneDNN linear, or where it disagrees with torch's."""


def set_linear_kernel(model, kernel: str = "auto", *, batch_invariant: bool = False) -> str:
    """Switch the model's linear layers to ``kernel`` ("auto", "onednn" or "torch"); returns the
    kernel now in use by its float32 CPU layers: "onednn" or "torch".

    ``batch_invariant``: every layer of the model on :class:`InvariantOneDNNLinear` ("auto" then
    means "onednn" whatever the width); an error (KernelUnavailable) where that cannot be: torch's
    kernel asked for, oneDNN missing or disagreeing, or a layer off the CPU or not float32."""
    if kernel not in KERNELS:
        raise ValueError(f"linear kernel must be one of {KERNELS}, not {kernel!r}")
    layers = _linears(model)
    eligible = [m for m in layers if _eligible(m)]
    use_onednn = False
    if batch_invariant:
        if kernel == TORCH:
            raise KernelUnavailable("a batch-invariant forward needs oneDNN's packed linear, not torch's kernel")
        if len(eligible) != len(layers):
            raise KernelUnavailable("a batch-invariant forward needs every linear layer on the CPU in float32")
        kernel = ONEDNN
    if kernel == "onednn":
        if not onednn_available():
            raise KernelUnavailable("this torch build has no oneDNN linear (x86 CPU builds have it)")
        if eligible and not _agrees(eligible[0]):
            raise KernelUnavailable("oneDNN's linear disagrees with torch's on this machine")
        if batch_invariant and (where := _rows_vary(eligible)):
            raise KernelUnavailable(
                f"oneDNN's packed linear gives a row other results beside other rows on this CPU ({where}): "
                "its AVX-512 kernels do; model.cpu_numerics: pinned_avx2 caps oneDNN at AVX2, where they did not")
        use_onednn = bool(eligible)
    elif kernel == "auto" and eligible and onednn_available():
        if min(m.in_features for m in eligible) >= AUTO_MIN_WIDTH:
            use_onednn = _agrees(eligible[0])
            if not use_onednn:
                log.warning("oneDNN's linear disagrees with torch's on this machine: keeping torch's kernel")
    fast = InvariantOneDNNLinear if batch_invariant else OneDNNLinear
    for m in layers:
        m.__class__ = fast if use_onednn and _eligible(m) else torch.nn.Linear
        m.__dict__.pop("_onednn_pack", None)  # packed again at the next forward (or freed)
    return ONEDNN if use_onednn else TORCH


def linear_kernel_of(model) -> str:
    """The kernel the model's linear layers use now ("onednn" if any layer was switched)."""
    return ONEDNN if any(isinstance(m, OneDNNLinear) for m in model.modules()) else TORCH


def linears_batch_invariant(model) -> bool:
    """Whether every linear layer of the model computes a row the same at any row count."""
    layers = _linears(model)
    return bool(layers) and all(type(m) is InvariantOneDNNLinear for m in layers)
