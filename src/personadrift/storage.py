"""Atomic file writes: a reader (or a killed job) never sees half a file."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def temp_file_beside(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, uniquely named file beside ``path`` (its folder made if missing), open for writing:
    ``(fd, tmp_path)``. Its mode is what ``open()`` would give, 0666 less the umask (mkstemp's
    0600 would make every renamed result unreadable to the user's group on a shared cluster)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer's temp file by that name: draw again
            continue


def umask() -> int:
    """The process umask. Read by setting it (the only portable way): call it from one thread."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def match_umask(folder: Path) -> None:
    """Give every file below ``folder`` the mode ``open()`` gives a new one, 0666 less the umask
    (safetensors, for one, creates its files 0600)."""
    mode = 0o666 & ~umask()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(mode)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
