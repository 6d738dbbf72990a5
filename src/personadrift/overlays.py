"""Config files as overlays: a config names its base with ``extends:`` and holds its differences.

``extends: <path>`` (relative to the file that says it) reads the base first, itself possibly an
overlay; the file's keys are then merged into it: mappings key by key, every other value (lists
included) replacing the base's. Two directives, in the spelling of Kustomize's strategic merge
patches, say what a plain merge cannot:

    model:                 # this mapping replaces the base's model instead of being merged into it
      $patch: replace
      name: tiny-llama2
    interventions:
      cfg: {$patch: delete}   # the key is removed from the merged config

The result remembers which file last set each key, so an error found in the merged config names
the file that holds the bad key (:meth:`Overlay.file_of`). A chain that comes back to a file is
refused with the files in order.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from personadrift.errors import InputError
from personadrift.yamlio import check_size, read_yaml

EXTENDS = "extends"
PATCH = "$patch"
PATCHES = ("replace", "delete")


@dataclass
class Overlay:
    """A config read through its ``extends:`` chain: the merged mapping and where each key came from."""

    config: dict
    files: list[str]  # base first, the file named last
    origins: dict[tuple, str] = field(default_factory=dict)  # key path -> the file that set it

    def __str__(self) -> str:  # the file a user named: what an error names when no layer is known
        return self.files[-1]

    def file_of(self, dotted: str | None) -> str:
        """The file that set ``dotted`` (``model.dtype``, ``personas.files[0]``), or its nearest
        enclosing key; the file named last when no layer set any of it (a default, a missing key)."""
        if not dotted or dotted == "(top level)":
            return str(self)
        keys = tuple(k for k in re.split(r"\.|\[\d+\]", dotted) if k)  # a list's items share its file
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.origins:
                return self.origins[keys[:n]]
        return str(self)


def read_config(path: str | Path) -> Overlay:
    """``path`` merged over its ``extends:`` chain (a plain config: itself, directives removed)."""
    return read_configs([path])


def read_configs(paths, overrides: dict | None = None) -> Overlay:
    """Each of ``paths`` over its own chain, merged in order, then ``overrides`` (Snakemake's
    ``--configfile a b --config k=v``: the later file, then the command line, wins)."""
    merged = Overlay({}, [])
    for path in paths:
        for file, data in _layers(path, ()):
            merged.files.append(file)
            _merge(merged, merged.config, data, (), file)
    if overrides:
        _merge(merged, merged.config, overrides, (), "--config")
    return merged


def _display(path: Path) -> str:
    return os.path.normpath(path)


def _layers(path: str | Path, chain: tuple[Path, ...]) -> list[tuple[str, dict]]:
    """(file, its keys) of ``path``'s chain, base first; ``chain``: the files that extend it."""
    shown = _display(Path(path))
    here = Path(path).resolve()
    if here in chain:
        loop = " -> ".join(_display(Path(os.path.relpath(p))) for p in (*chain, here))
        raise InputError(_display(Path(os.path.relpath(chain[-1]))), EXTENDS, f"the chain of bases is a cycle: {loop}")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(shown, None, "expected a mapping of keys at the top level")
    check_size(data, shown)  # before the merge walks it: an alias bomb expands there
    if PATCH in data:
        raise InputError(shown, PATCH, "a directive of a mapping inside the config, not of the whole file")
    data = dict(data)
    base_name = data.pop(EXTENDS, None)
    if base_name is None:
        return [(shown, data)]
    if not isinstance(base_name, str) or not base_name:
        raise InputError(shown, EXTENDS, f"expected the path of a base config, got {base_name!r}")
    base_path = Path(path).parent / base_name
    if not base_path.is_file():
        raise InputError(shown, EXTENDS, f"{_display(base_path)}: file not found (relative to {shown})")
    return [*_layers(base_path, (*chain, here)), (shown, data)]


def _merge(into: Overlay, target: dict, layer: dict, at: tuple, file: str) -> None:
    """Merge ``layer`` (one file's mapping at key path ``at``) into ``target`` in place."""
    for key, value in layer.items():
        where = (*at, key)
        if isinstance(value, dict) and PATCH in value:
            patch = value[PATCH]
            dotted = ".".join(map(str, (*where, PATCH)))
            if patch not in PATCHES:
                raise InputError(file, dotted, f"{patch!r} is not one of {list(PATCHES)}")
            _forget(into, where)
            if patch == "delete":
                if len(value) > 1:
                    raise InputError(file, dotted, "delete removes the key: the mapping holds nothing else")
                target.pop(key, None)
                continue
            target[key] = {}
            into.origins[where] = file
            _merge(into, target[key], {k: v for k, v in value.items() if k != PATCH}, where, file)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            into.origins[where] = file  # a section's own problems (an unknown key) are most likely the latest file's
            _merge(into, target[key], value, where, file)
        else:
            _forget(into, where)
            into.origins[where] = file
            target[key] = {} if isinstance(value, dict) else copy.deepcopy(value)
            if isinstance(value, dict):
                _merge(into, target[key], value, where, file)


def _forget(into: Overlay, where: tuple) -> None:
    """Drop the origins of ``where`` and everything under it (its value is being replaced)."""
    for k in [k for k in into.origins if k[:len(where)] == where]:
        del into.origins[k]


def located(error: InputError, source) -> InputError:
    """``error`` naming the file of its key when ``source`` is an :class:`Overlay`."""
    if isinstance(source, Overlay) and error.path == str(source):
        return InputError(source.file_of(error.field), error.field, error.problem)
    return error
