"""Several "devices" on one CPU, with CUDA's rules about mixing them, for device-placement tests.

A model spread over several GPUs (an accelerate device map) fails on the first operation that
combines tensors of two devices. No GPU is needed to find such operations: this module renames
torch's spare backend (``privateuse1``) to ``vdev`` and runs every operation under a dispatch
mode that

* keeps each tensor's data on the CPU, wrapped in :class:`VirtualTensor`, which reports its
  virtual device (``vdev:0``, ``vdev:1``, ...) as ``.device``;
* creates a tensor on ``vdev:i`` when an operation asks for that device (factories, ``.to``);
* raises :class:`DeviceMixError` on any operation whose tensors sit on two devices, with the
  exceptions CUDA makes: ``copy_`` / ``.to`` move data, indexing accepts CPU indices, and a
  zero-dimensional CPU tensor is a scalar that may meet any device.

:func:`spread_over_virtual_devices` places a Hugging Face causal LM's modules on several virtual
devices and moves each module's inputs to its device with accelerate's own ``AlignDevicesHook``
(what ``device_map`` installs), so the KV cache of each layer lives on that layer's device, and
the logits on the last one.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

BACKEND = "vdev"


class DeviceMixError(RuntimeError):
    """An operation combined tensors on two devices (CUDA would raise here)."""


def _install_backend() -> None:
    name = torch._C._get_privateuse1_backend_name()
    if name == BACKEND:
        return
    if name != "privateuseone":
        raise RuntimeError(f"torch's privateuse1 backend is already named {name!r}")
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    # the backend's name, a device module, hooks and a device guard: what C++ code (indexing,
    # device guards) asks of a device; every operation itself runs under VirtualDevices
    _setup_privateuseone_for_python_backend(rename=BACKEND)


class VirtualTensor(torch.Tensor):
    """CPU data (``elem``) presented as living on a virtual device."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device):
        out = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=device, requires_grad=elem.requires_grad,
        )
        out.elem = elem
        return out

    def __repr__(self):
        return f"VirtualTensor({self.elem!r}, device={self.device})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise DeviceMixError(f"{func} on a virtual tensor outside VirtualDevices()")

    # torch turns a list index into a tensor on the indexed tensor's device without dispatching
    # (a virtual device cannot take that); as a CPU tensor it is an index CUDA accepts too
    @staticmethod
    def _index(key):
        if isinstance(key, list):
            return _original_tensor(key)
        if isinstance(key, tuple):
            return tuple(_original_tensor(k) if isinstance(k, list) else k for k in key)
        return key

    def tolist(self):  # CUDA copies to the host, then reads
        return self.cpu().tolist()

    def __getitem__(self, key):
        return super().__getitem__(self._index(key))

    def __setitem__(self, key, value):
        return super().__setitem__(self._index(key), value)


def _dev(t: torch.Tensor) -> torch.device:
    return t.device


# operations CUDA allows across devices: copies, and CPU indices into a device tensor
_TO = {torch.ops.aten._to_copy.default, torch.ops.aten.to.device, torch.ops.aten.to.dtype_layout,
       torch.ops.aten.to.dtype, torch.ops.aten.to.other}
_MOVES = _TO | {torch.ops.aten.copy_.default, torch.ops.aten.copy.default,
                torch.ops.aten._copy_from.default, torch.ops.aten._copy_from_and_resize.default}
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
             torch.ops.aten._index_put_impl_.default}


class VirtualDevices(TorchDispatchMode):
    """The dispatch mode (see the module docstring). ``ops`` counts operations run per device;
    ``transfers`` lists the copies between the host and a device."""

    def __init__(self):
        super().__init__()
        _install_backend()
        self.ops: dict[str, int] = {}
        self.transfers: list[tuple[str, str, int]] = []  # (from, to, elements) between host and a device

    def _check(self, func, args, kwargs) -> torch.device | None:
        """The device the operation runs on; raises if its tensors sit on two."""
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if func in _MOVES:
            return None
        if func in _INDEXING:
            self_dev = _dev(tensors[0])
            for t in tensors[1:]:
                d = _dev(t)
                if d != self_dev and d.type != "cpu":
                    raise DeviceMixError(f"{func}: indices on {d} for a tensor on {self_dev}")
            return self_dev
        devices = {_dev(t) for t in tensors if not (t.dim() == 0 and _dev(t).type == "cpu")}
        if len(devices) > 1:
            shapes = [(tuple(t.shape), str(_dev(t))) for t in tensors]
            raise DeviceMixError(f"{func} mixes devices {sorted(map(str, devices))}: {shapes}")
        if devices:
            return devices.pop()
        return _dev(tensors[0]) if tensors else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        run_on = self._check(func, args, kwargs)
        asked = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.device)]
        if asked:  # a factory or a move names the device it creates on
            target = asked[0]
            to_cpu = lambda a: torch.device("cpu") if isinstance(a, torch.device) and a.type == BACKEND else a  # noqa: E731
            args, kwargs = tree_map(to_cpu, args), tree_map(to_cpu, kwargs)
        elif func is torch.ops.aten.to.other:
            target = _dev(args[1])
        elif func in _TO:
            target = _dev(args[0])
        else:
            target = run_on
        if target is not None:
            self.ops[str(target)] = self.ops.get(str(target), 0) + 1
        if func is torch.ops.aten._local_scalar_dense.default and _dev(args[0]).type != "cpu":
            self.transfers.append((str(_dev(args[0])), "cpu", 1))  # a value read on the host
        if func in _MOVES:
            src, dst = (_dev(args[0]), target) if func in _TO else (_dev(args[1]), _dev(args[0]))
            if dst is not None and (src.type == "cpu") != (dst.type == "cpu"):
                self.transfers.append((str(src), str(dst), args[0].numel()))
        unwrap = lambda t: t.elem if isinstance(t, VirtualTensor) else t  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        first = func._schema.arguments[0] if func._schema.arguments else None
        if first is not None and first.alias_info is not None and first.alias_info.is_write:
            return args[0]  # in place: the data changed under the first argument's wrapper
        if target is None or target.type != BACKEND:
            return out

        def wrap(t):
            if isinstance(t, torch.Tensor) and not isinstance(t, VirtualTensor):
                return VirtualTensor(t, target)
            return t

        return tree_map(wrap, out)


def _tensor_on(data, dtype=None, device=None, requires_grad=False, pin_memory=False):
    """``torch.tensor`` that creates on the CPU and then moves: torch's own ``torch.tensor``
    writes to the target device without dispatching, which a virtual device cannot take."""
    t = _original_tensor(data, dtype=dtype, requires_grad=requires_grad)
    return t if device is None else t.to(device)


_original_tensor = torch.tensor


@contextlib.contextmanager
def virtual_devices():
    """Run the enclosed code under :class:`VirtualDevices`; yields the mode."""
    mode = VirtualDevices()
    torch.tensor = _tensor_on
    try:
        with mode:
            yield mode
    finally:
        torch.tensor = _original_tensor


def _place(module: torch.nn.Module, device: torch.device) -> None:
    for name, p in list(module.named_parameters(recurse=False)):
        module._parameters[name] = torch.nn.Parameter(VirtualTensor(p.data.clone(), device), requires_grad=False)
    for name, b in list(module.named_buffers(recurse=False)):
        if b is not None:
            module._buffers[name] = VirtualTensor(b.clone(), device)


def spread_over_virtual_devices(model: torch.nn.Module, n_devices: int = 3) -> dict[str, torch.device]:
    """Place a Llama-style causal LM over ``n_devices`` virtual devices, under an active
    :func:`virtual_devices`: the embeddings (and rotary tables) on ``vdev:0``, the decoder layers
    spread over the rest, the final norm and the LM head on the last; untie the head if tied.
    Returns the device map used (module name -> device)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    inner = model.model
    layers = list(inner.layers)
    if model.lm_head.weight is inner.embed_tokens.weight:
        model.lm_head.weight = torch.nn.Parameter(inner.embed_tokens.weight.detach().clone())
        model.config.tie_word_embeddings = False
    dev = lambda i: torch.device(BACKEND, i)  # noqa: E731
    device_map = {"model.embed_tokens": dev(0), "model.rotary_emb": dev(0)}
    rest = max(1, n_devices - 1)
    for i in range(len(layers)):
        device_map[f"model.layers.{i}"] = dev(1 + i * rest // len(layers))
    device_map["model.norm"] = dev(n_devices - 1)
    device_map["lm_head"] = dev(n_devices - 1)
    for name, d in device_map.items():
        module = model.get_submodule(name)
        for sub in module.modules():
            _place(sub, d)
        add_hook_to_module(module, AlignDevicesHook(execution_device=d, io_same_device=False))
    model.hf_device_map = {k: str(v) for k, v in device_map.items()}
    return device_map
