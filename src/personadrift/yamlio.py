"""Reading YAML data files strictly: safe types only, duplicate keys refused, errors with lines.

PyYAML silently keeps the last of two equal keys; a config or persona file with a key given
twice would then lose the first value without a word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from personadrift.errors import InputError

MAX_ITEMS = 20_000  # more values than any real config has; a YAML alias bomb has millions


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML data file; syntax errors become InputError with the line number."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(p, None, f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(p, None, f"cannot read file: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise InputError(p, None, f"invalid YAML at {where}: {what}") from None
    except yaml.YAMLError as e:
        raise InputError(p, None, f"invalid YAML: {e}") from None


def check_size(config: dict, path) -> None:
    """Refuse absurdly large values (a YAML alias bomb) before anything walks or prints them."""
    for key, value in config.items():
        stack, seen = [value], 0
        while stack:
            item = stack.pop()
            seen += 1
            if seen > MAX_ITEMS:
                raise InputError(path, str(key), f"value too large (more than {MAX_ITEMS} items; a YAML alias bomb?)")
            if isinstance(item, dict):
                stack.extend(item.values())
                stack.extend(item.keys())
            elif isinstance(item, list | tuple):
                stack.extend(item)
