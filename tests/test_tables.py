"""The one table writer: plain and gzip tables, their sidecars, and atomic writes."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pandas as pd

from personadrift.storage import read_json
from personadrift.tables import provenance_path, read_table, write_table


def _table() -> pd.DataFrame:
    return pd.DataFrame({"conversation": [0, 1], "answer": ["None", "tennis, always"], "score": [0.5, None]})


def test_a_gzip_table_reads_back_as_written_and_its_bytes_do_not_depend_on_when(tmp_path):
    df = _table()
    write_table(df, tmp_path / "a.csv.gz", layers=[1, 2])
    first = (tmp_path / "a.csv.gz").read_bytes()
    write_table(df, tmp_path / "a.csv.gz", layers=[1, 2])
    assert (tmp_path / "a.csv.gz").read_bytes() == first  # no timestamp in the gzip header
    assert gzip.decompress(first).decode() == df.to_csv(index=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.csv.gz"), df)
    write_table(df, tmp_path / "a.csv")
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.csv"), df)
    side = read_json(provenance_path(tmp_path / "a.csv.gz"))
    assert side["rows"] == 2 and side["columns"] == list(df.columns) and side["layers"] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.csv", "a.csv.gz", "a.csv.gz.provenance.json", "a.csv.provenance.json"]  # no temporary file left


def test_written_files_get_the_mode_open_would_give_under_the_umask(tmp_path):
    # a subprocess, so that setting the umask leaves this test process alone
    script = """
import io, os, stat, sys
from pathlib import Path
import pandas as pd
from personadrift.capability.mmlu.data import _atomic_copy
from personadrift.storage import atomic_write_json
from personadrift.tables import write_table
out = Path(sys.argv[1])
for mask in (0o022, 0o077, 0o002):
    os.umask(mask)
    d = out / oct(mask)
    write_table(pd.DataFrame({"a": [1]}), d / "t.csv")
    write_table(pd.DataFrame({"a": [1]}), d / "t.csv.gz")
    atomic_write_json(d / "c.json", {"a": 1})
    _atomic_copy(io.BytesIO(b"x"), d / "m.jsonl", None, origin="test")
    print(oct(mask), sorted({oct(stat.S_IMODE(p.stat().st_mode)) for p in d.iterdir()}))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["0o22 ['0o644']", "0o77 ['0o600']", "0o2 ['0o664']"], proc.stdout
    assert not list(tmp_path.rglob(".*"))  # no temporary file left
