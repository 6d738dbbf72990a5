"""Intervention settings: every grid point of every configured method, with a stable name.

``interventions: {ss: {method: split_softmax, k: [0.5, 0.25]}}`` gives the settings
``ss-k0.5`` and ``ss-k0.25``; a method without a grid (``none``) gives one setting named by its
key: the baseline ``none`` and, e.g., the length-only control ``control``. A setting's name is a
path component, so the same conversations under each setting sit side by side.

What a setting does is decided by its method object (``interventions/<method>.py``); a
``Setting`` only carries the config values and asks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from personadrift.generation.api import Intervention
from personadrift.interventions.base import EntryError, Method, phase_name
from personadrift.interventions.registry import METHODS
from personadrift.names import short_repr


@dataclass(frozen=True)
class Setting:
    name: str  # e.g. "none", "ss-k0.5"
    family: str  # the config key, e.g. "ss"
    method: str  # a registered method: none | split_softmax | repetition | cfg
    value: Any = None  # the grid value (a number; None for methods without a grid)
    options: dict = field(default_factory=dict, compare=False, hash=False)  # method keys, defaults filled
    backend: str | None = None  # a registered backend (runtime/backends/); None = the study's
    # the method's input files (Method.inputs), name -> path, once a step has them (with_inputs)
    inputs: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def impl(self) -> Method:
        return METHODS[self.method]

    @property
    def needs_internals(self) -> bool:
        return self.impl.needs_internals

    @property
    def apply_to(self) -> str:
        return self.options.get("apply_to", "both")

    @property
    def user_persona(self) -> bool:
        """False for the length-only control: the user bot talks without a persona."""
        return self.impl.user_persona(self)

    def with_inputs(self, paths: dict) -> Setting:
        """This setting with its method's input files (the rule's ``--method-inputs``)."""
        return replace(self, inputs=dict(paths))

    def engine_intervention(self) -> Intervention:
        return self.impl.intervention(self)

    def repetition(self):
        return self.impl.repetition(self)

    def negative_messages(self, messages: list[dict]) -> list[dict] | None:
        return self.impl.negative_messages(self, messages)

    def intervenes(self, phase: str) -> bool:
        """Whether a request of ``phase`` ("dialog", "probe", "mmlu") gets the engine intervention."""
        return self.impl.intervenes(self, phase_name(phase))

    def rows_per_sample(self) -> int:
        """Sequences decoded per sampled reply when intervened (guidance: two)."""
        return self.impl.rows_per_sample(self)

    @property
    def is_control(self) -> bool:
        """A control (e.g. the length-only control): no MMLU job, no row in the trade-off."""
        return self.impl.is_control(self)

    def backend_for(self, study_backend: str) -> str:
        return self.backend or study_backend

    def describe(self) -> dict:
        out = {"name": self.name, "family": self.family, "method": self.method, "value": self.value,
               **{k: v for k, v in self.options.items() if k not in ("method", "backend", self.impl.grid_key)}}
        if self.backend:
            out["backend"] = self.backend
        if self.inputs:  # which files, by content: a changed file is another setting's output
            from personadrift.generation.models import sha256_file

            out["inputs"] = {k: {"path": str(p), "sha256": sha256_file(p)} for k, p in sorted(self.inputs.items())}
        return out


def value_label(v) -> str:
    """A grid value as written in a setting name: exact (shortest round-trip form), so two
    different values never share a name; integral values without a fraction (2.0 -> "2")."""
    if isinstance(v, float) and not v.is_integer():
        return repr(v).replace("e+", "e")
    return str(int(v))


def expand_family(family: str, entry: dict) -> list[Setting]:
    impl = METHODS[entry["method"]]
    options = {**impl.defaults(), **{k: v for k, v in entry.items() if k != "backend"}}
    if not impl.grid_key:
        return [Setting(family, family, impl.name, None, options, entry.get("backend"))]
    return [Setting(f"{family}-{impl.short}{value_label(v)}", family, impl.name, v, options, entry.get("backend"))
            for v in entry[impl.grid_key]]


def expand_settings(interventions: dict) -> list[Setting]:
    """All settings, baseline first, then families in config order and grid order."""
    out = expand_family("none", interventions.get("none", {"method": "none"}))
    for family, entry in interventions.items():
        if family != "none":
            out.extend(expand_family(family, entry))
    return out


def setting_by_name(interventions: dict, name: str) -> Setting:
    for s in expand_settings(interventions):
        if s.name == name:
            return s
    raise KeyError(f"no setting named {name!r}")


def mitigation_settings(interventions: dict) -> list[Setting]:
    """The baseline and every intervention setting (controls excluded)."""
    return [s for s in expand_settings(interventions) if not s.is_control]


def settings_from_flags(values: dict) -> list[Setting]:
    """The settings ``personadrift serve``'s method flags ask for: ``values`` maps each flag of
    a method's ``serve_flags`` to its value (None: not given). A method is on when its first
    flag is given; its entry is checked against the method's schema and checks, as a config
    entry is, and an error names the flag."""
    import jsonschema

    from personadrift.errors import InputError

    out = []
    for impl in METHODS.values():
        flags = list(impl.serve_flags.items())
        if not flags or values.get(flags[0][0]) is None:
            continue
        (grid_flag, (grid_key, _)), *rest = flags
        flag_of = {key: flag for flag, (key, _) in flags}
        entry = {"method": impl.name, grid_key: [values[grid_flag]]}
        entry.update({key: values[flag] for flag, (key, _) in rest if values.get(flag) is not None})
        schema = impl.entry_schema()
        err = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(entry))
        if err is not None:
            key = str(err.absolute_path[0]) if err.absolute_path else grid_key
            raise InputError("(command line)", flag_of.get(key, grid_flag), err.message)
        try:
            out += check_family(impl.name, entry)
        except EntryError as e:
            raise InputError("(command line)", flag_of.get(e.key, grid_flag), e.problem) from None
    # an engine takes one hook of each kind: two methods acting through the same one cannot share it
    by_kind: dict[str, list[str]] = {}
    for s in out:
        for hook in s.engine_intervention().hooks:
            by_kind.setdefault(hook.kind, []).append(next(iter(s.impl.serve_flags)))
    for kind, clashing in by_kind.items():
        if len(clashing) > 1:
            raise InputError("(command line)", clashing[-1], f"{' and '.join(clashing)} both act through the engine's "
                             f"{kind} hook, and an engine takes one of each kind: give one of them")
    return out


def mmlu_from_baseline(setting: Setting) -> bool:
    """Whether ``setting``'s MMLU scores are the baseline's (its method leaves a single-turn
    prompt unchanged, e.g. repetition): the workflow copies them instead of a model job."""
    return setting.impl.single_turn_as_baseline  # False for method none: the baseline and controls


def chosen_settings(interventions: dict) -> list[Setting]:
    """One setting per intervention family for the over-rounds figure: ``chosen`` or the grid's middle."""
    by_family: dict[str, list[Setting]] = {}
    for s in expand_settings(interventions):
        if s.impl.grid_key:
            by_family.setdefault(s.family, []).append(s)
    out = []
    for family, grid in by_family.items():
        want = interventions[family].get("chosen")
        pick = next((s for s in grid if want is not None and float(s.value) == float(want)), None)
        out.append(pick or grid[len(grid) // 2])
    return out


def check_family(family: str, entry: dict) -> list[Setting]:
    """Cross-key checks of one (schema-valid) entry; its settings. Raises EntryError."""
    impl = METHODS[entry["method"]]
    impl.check(family, entry)
    settings = expand_family(family, entry)
    if impl.grid_key and entry.get("chosen") is not None:
        if not any(float(s.value) == float(entry["chosen"]) for s in settings):
            raise EntryError("chosen", f"{short_repr(entry['chosen'])} is not one of the grid values "
                                       f"{short_repr(entry[impl.grid_key])} ({impl.grid_key})")
    return settings


def layers_spec(spec) -> object:
    """Config layers ("all", [i, ...], {start, stop}) as "all" or a list of indices."""
    from personadrift.interventions.layers import layer_indices

    return layer_indices(spec)
