"""The one rule for names that become paths or Snakemake wildcards.

Study, model name, intervention keys, setting names and persona ids all end up as a folder or
file name (``results/<study>/transcripts/<setting>/``) or inside a shell command. Letters,
digits, ``_``, ``-`` and ``.`` only, not starting with ``.`` (so never ``..``), at most 100
characters: such a name can neither leave its folder nor break a command line.
"""

from __future__ import annotations

import re

NAME_RULE = "letters, digits, '_', '-' and '.' only, not starting with '.', at most 100 characters"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


def is_safe_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def short_repr(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, so no message quotes a huge value in full."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 8
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def name_problem(value: object) -> str | None:
    """None if ``value`` is a safe name, else the problem in words."""
    if is_safe_name(value):
        return None
    return f"{short_repr(value)} is not a usable name ({NAME_RULE})"


def short_text(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (for paths and other values quoted without repr)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
