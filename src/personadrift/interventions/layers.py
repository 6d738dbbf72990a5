"""Layer sets of split-softmax (and the attention analysis): ``"all"``, a list of indices, or
``{start, stop}`` (stop exclusive). A set that selects no layer would make the method a silent
no-op, so it is an error, as is an index past the model's depth."""

from __future__ import annotations

from typing import Any

from personadrift.interventions.base import EntryError
from personadrift.names import short_repr


def layers_problem(spec) -> str | None:
    """None if ``spec`` is a well-formed, non-empty layer set, else the problem."""
    if spec in (None, "all"):
        return None
    if isinstance(spec, dict):
        if set(spec) != {"start", "stop"} or not all(_is_index(spec[k]) for k in ("start", "stop")):
            return f'expected {{start: i, stop: j}} with integers i, j >= 0, got {short_repr(spec)}'
        if spec["stop"] <= spec["start"]:
            return f"start {spec['start']} .. stop {spec['stop']} selects no layer (stop is exclusive)"
        return None
    if isinstance(spec, list):
        if not spec:
            return "an empty list selects no layer"
        if not all(_is_index(i) for i in spec):
            return f"expected layer indices (integers >= 0), got {short_repr(spec)}"
        if len(set(spec)) != len(spec):
            return f"a layer is listed twice in {short_repr(spec)}"
        return None
    return f'expected "all", a list of layer indices or {{start, stop}}, got {short_repr(spec)}'


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def layer_indices(spec) -> Any:
    """``"all"`` or the sorted list of indices of a checked layer set."""
    if spec in (None, "all"):
        return "all"
    if isinstance(spec, dict):
        return list(range(int(spec["start"]), int(spec["stop"])))
    return sorted(int(x) for x in spec)


def check_layers_depth(spec, n_layers: int, key: str = "layers") -> None:
    """Every selected layer exists in a model of ``n_layers`` layers."""
    idx = layer_indices(spec)
    if idx == "all":
        return
    past = [i for i in idx if i >= n_layers]
    if past:
        raise EntryError(key, f"layer {past[0]} does not exist: the model has {n_layers} layers (0..{n_layers - 1})")


def parse_layers_flag(text: str):
    """A command-line layer set (``all``, ``0,2,5`` or ``start:stop``) as "all" or a list of
    indices (``personadrift serve --split-layers``)."""
    import argparse

    text = text.strip()
    if text in ("", "all"):
        return "all"
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return list(range(int(a), int(b)))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, a comma list or start:stop, got {text!r}") from None
