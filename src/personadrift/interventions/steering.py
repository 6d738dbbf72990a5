"""Persona-vector steering: add the agent persona's direction to the residual stream, and
optionally cap the activation along it (Chen et al. 2025, arXiv 2507.21509; capping as in the
assistant axis, arXiv 2601.10387). Needs the model's internals: a residual hook
(:class:`~personadrift.generation.hooks.ResidualHook`) on one decoder layer.

The vectors come from rule ``persona_vectors`` (``protocol/persona_vectors.py``): per kept persona,
the difference of mean activations at the output of decoder layer ``layer`` with and without its
system prompt. On an intervened row whose request names persona p, at every position (prompt and
generated tokens) the output h of layer ``layer`` becomes

    h' = h + alpha * s * u_p                       (u_p = v_p / |v_p|; s: the mean residual norm
                                                     at that layer over the vectors' tokens)
    h'' = h' + max(0, tau_p - <h', u_p>) * u_p     (with ``cap``: the projection on u_p is raised
                                                     to at least tau_p, the 25th percentile of the
                                                     persona's own calibration answers' projections)

so ``alpha`` is a fraction of a typical residual norm, comparable across models and layers (Chen et
al. scale the raw difference vector instead, whose norm differs from model to model); alpha = 0
with ``cap`` is capping alone. A request that names no persona (MMLU, whose system prompt is no
persona of the pool) is steered along the pool's mean direction (the normalised mean of the unit
vectors) with its own threshold, at the same magnitude: one vector for every MMLU question, so the
shared system-prompt prefix stays valid. Rows not intervened on are returned untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from personadrift.generation.api import Intervention
from personadrift.generation.hooks import ResidualHook
from personadrift.interventions.base import APPLY_TO, EntryError, Method, applies_to

VECTORS = "persona_vectors"  # the name of the method's input file (Method.inputs, Setting.inputs)


@dataclass(frozen=True)
class SteeringHook(ResidualHook):
    """Adds ``alpha`` residual norms of each row's persona direction at one layer, and with
    ``cap`` raises the projection on it to the persona's threshold (the module docstring)."""

    vectors_path: str = ""
    alpha: float = 0.0
    cap: bool = False
    # the loaded file, filled by prepare (not a parameter: equal hooks are the same intervention)
    _state: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def prepare(self, hidden_size, device, dtype):
        import torch

        from personadrift.protocol.persona_vectors import read_persona_vectors, unit_directions

        pv = read_persona_vectors(self.vectors_path)
        if (pv.layer,) != tuple(self.layers):
            raise ValueError(f"{self.vectors_path} holds vectors of layer {pv.layer}, the hook acts on {self.layers}")
        ids, units, pool = unit_directions(pv.vectors)
        if units.shape[1] != hidden_size:
            raise ValueError(f"{self.vectors_path}: vectors of size {units.shape[1]}, the model's hidden size is "
                             f"{hidden_size} (computed on another model?)")
        taus = [pv.cap_threshold[i] for i in ids] + [pv.pool_threshold]
        self._state.update(
            index={pid: i for i, pid in enumerate(ids)},
            pool=len(ids),  # the row of the pool's mean direction
            units=torch.cat([units, pool[None]]).to(device=device, dtype=torch.float32),
            taus=torch.tensor(taus, dtype=torch.float32, device=device),
            shift=self.alpha * pv.residual_norm,
        )

    def rows(self, personas, active) -> list[int]:
        """Each row's direction: its persona's, the pool's for a row that names none; a persona
        without a vector on an intervened row is an error (inactive rows: any)."""
        index, pool = self._state["index"], self._state["pool"]
        out = []
        for persona, on in zip(personas, active.tolist()):
            if persona is not None and persona not in index and on:
                raise KeyError(f"persona {persona!r} has no vector in {self.vectors_path} (known: {sorted(index)})")
            out.append(pool if persona is None else index.get(persona, pool))
        return out

    def edit(self, layer_idx, hidden, personas, active):
        import torch

        st = self._state
        which = torch.tensor(self.rows(personas, active), device=st["units"].device)
        u = st["units"][which].to(hidden.device)[:, None, :]  # [rows, 1, hidden], float32
        h = hidden.float() + st["shift"] * u  # elementwise: each row alone
        if self.cap:
            tau = st["taus"][which].to(hidden.device)[:, None, None]
            h = h + (tau - (h * u).sum(-1, keepdim=True)).clamp(min=0) * u
        return torch.where(active[:, None, None], h.to(hidden.dtype), hidden)


class Steering(Method):
    name = "steer"
    label = "persona-vector steering"
    color = "#9467bd"
    grid_key = "alpha"
    short = "a"
    needs_internals = True
    grid_item = {"type": "number"}
    grid_description = ("Steering strengths alpha: the persona's unit vector times alpha times the mean residual "
                        "norm at the layer is added at every position (0 with cap: capping alone; negative: away).")
    options = {
        "layer": {"type": "integer", "minimum": 0, "default": 15,
                  "description": "Decoder layer whose output is steered and where the persona vectors are computed "
                                 "(0-based; the default is the middle of SmolLM2-135M's 30 layers)."},
        "cap": {"type": "boolean", "default": False,
                "description": "Also cap: after adding, raise the projection on the persona's unit vector to at least "
                               "the 25th percentile of its calibration answers' projections."},
        "apply_to": APPLY_TO,
    }

    def check(self, family, entry):
        for alpha in entry["alpha"]:
            if not math.isfinite(alpha):
                raise EntryError("alpha", f"{alpha} is not a finite number")
            if alpha == 0 and not entry.get("cap", False):
                raise EntryError("alpha", "0 without cap: true changes nothing (a silent copy of the baseline)")

    def check_depth(self, setting, n_layers):
        layer = setting.options["layer"]
        if layer >= n_layers:
            raise EntryError("layer", f"layer {layer} does not exist: the model has {n_layers} layers "
                                      f"(0..{n_layers - 1})")

    def inputs(self, setting, results):
        from personadrift.protocol.persona_vectors import vectors_path

        return {VECTORS: vectors_path(results, setting.options["layer"])}

    def intervention(self, setting):
        path = setting.inputs.get(VECTORS)
        if path is None:
            raise ValueError(f"setting {setting.name}: steering needs its persona vectors file (the workflow's "
                             "rule persona_vectors makes it; Setting.with_inputs hands it over)")
        hook = SteeringHook(layers=(int(setting.options["layer"]),), vectors_path=str(path),
                            alpha=float(setting.value), cap=bool(setting.options["cap"]))
        return Intervention((hook,))

    def intervenes(self, setting, phase):
        return applies_to(setting, phase)
