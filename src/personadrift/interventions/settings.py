"""Intervention settings: every grid point of every configured method, with a stable name.

``interventions: {ss: {method: split_softmax, k: [0.5, 0.25]}}`` gives the settings
``ss-k0.5`` and ``ss-k0.25``; the baseline is always ``none``. A setting's name is a path
component, so the same conversations under each setting sit side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from personadrift.generation.api import Intervention
from personadrift.generation.dialog import Repetition

GRID_KEY = {"split_softmax": "k", "repetition": "every", "cfg": "guidance_scale"}
SHORT = {"k": "k", "every": "every", "guidance_scale": "g"}


@dataclass(frozen=True)
class Setting:
    name: str  # e.g. "none", "ss-k0.5"
    family: str  # the config key, e.g. "ss"
    method: str  # none | split_softmax | repetition | cfg
    value: float | int | None = None  # the grid value
    options: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def apply_to(self) -> str:
        return self.options.get("apply_to", "both")

    def engine_intervention(self) -> Intervention:
        if self.method == "split_softmax":
            return Intervention(split_k=float(self.value), split_layers=layers_spec(self.options.get("layers", "all")))
        if self.method == "cfg":
            return Intervention(guidance_scale=float(self.value))
        return Intervention()

    def repetition(self) -> Repetition | None:
        if self.method != "repetition":
            return None
        return Repetition(every=int(self.value), placement=self.options.get("placement", "system_message"))

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "method": self.method, "value": self.value, **{
            k: v for k, v in self.options.items() if k not in ("method", GRID_KEY.get(self.method))
        }}


def layers_spec(spec) -> object:
    """Config layers ("all", [i, ...], {start, stop}) as "all" or a list of indices."""
    if spec in (None, "all"):
        return "all"
    if isinstance(spec, dict):
        return list(range(int(spec["start"]), int(spec["stop"])))
    return [int(x) for x in spec]


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand_settings(interventions: dict) -> list[Setting]:
    """All settings, baseline first, then methods in config order and grid order."""
    out = [Setting("none", "none", "none")]
    for family, opts in interventions.items():
        method = opts["method"]
        if method == "none":
            continue
        key = GRID_KEY[method]
        for v in opts[key]:
            out.append(Setting(f"{family}-{SHORT[key]}{_fmt(v)}", family, method, v, dict(opts)))
    return out


def setting_by_name(interventions: dict, name: str) -> Setting:
    for s in expand_settings(interventions):
        if s.name == name:
            return s
    raise KeyError(f"no setting named {name!r}")


def chosen_settings(interventions: dict) -> list[Setting]:
    """One setting per family for the over-rounds figure: ``chosen`` or the grid's middle."""
    by_family: dict[str, list[Setting]] = {}
    for s in expand_settings(interventions)[1:]:
        by_family.setdefault(s.family, []).append(s)
    out = []
    for family, grid in by_family.items():
        want = interventions[family].get("chosen")
        pick = next((s for s in grid if want is not None and float(s.value) == float(want)), None)
        out.append(pick or grid[len(grid) // 2])
    return out
