"""Result tables: one writer (with a provenance sidecar) and one reader, used by every step."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd

from personadrift.provenance import provenance
from personadrift.storage import atomic_write_bytes, atomic_write_json


def read_table(path) -> pd.DataFrame:
    """A table written by :func:`write_table`: empty cells (no judge error) read as NaN, and
    text such as "None" or "NA" in answers stays text."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def provenance_path(path) -> Path:
    """The provenance sidecar of a table written by :func:`write_table`."""
    path = Path(path)
    return path.with_name(path.name + ".provenance.json")


def write_table(df: pd.DataFrame, path, **extra) -> None:
    """Write a table and its provenance sidecar (``<table>.provenance.json``); a ``.gz`` path is
    gzip-compressed (no timestamp in the header, so the same table gives the same bytes)."""
    path, data = Path(path), df.to_csv(index=False).encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    atomic_write_json(provenance_path(path), provenance(rows=len(df), columns=list(df.columns), **extra))
