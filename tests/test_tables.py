"""The one table writer: plain and gzip tables, their sidecars, and atomic writes."""

from __future__ import annotations

import gzip

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
