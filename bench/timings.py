"""The timing table of docs/measurements.md, from the Snakemake benchmark files of a run.

Every rule writes ``benchmarks/<study>/<rule>/...tsv`` (wall seconds, memory, CPU). This prints one
Markdown row per rule (jobs, total and largest wall time, peak memory), the machine's matmul rate
measured now (so a reader can scale the table to their machine). The workflow's own wall time is
the "Elapsed time" line at the end of the run's Snakemake log (``.snakemake/log/``).

    python bench/timings.py benchmarks/embedded-default
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def table(folder: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted(folder.rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        rule = tsv.relative_to(folder).parts[0].removesuffix(".tsv")
        rows.append({"rule": rule, "job": str(tsv.relative_to(folder).with_suffix("")), "s": float(df["s"].iloc[-1]),
                     "max_rss_mb": float(df["max_rss"].iloc[-1]) if "max_rss" in df else float("nan")})
    if not rows:
        raise SystemExit(f"no benchmark files under {folder}")
    jobs = pd.DataFrame(rows)
    return (jobs.groupby("rule").agg(jobs=("job", "size"), total_s=("s", "sum"), largest_s=("s", "max"),
                                     peak_rss_mb=("max_rss_mb", "max"))
            .sort_values("total_s", ascending=False).reset_index())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="benchmarks/<study>")
    ap.add_argument("--no-matmul", action="store_true", help="do not measure the matmul rate")
    args = ap.parse_args(argv)
    t = table(args.folder)
    print("| Rule | Jobs | Wall time, all jobs | Largest job | Peak memory |")
    print("|---|---|---|---|---|")
    for r in t.itertuples():
        print(f"| {r.rule} | {r.jobs} | {r.total_s:.0f} s | {r.largest_s:.0f} s | {r.peak_rss_mb:.0f} MB |")
    print(f"| **sum of job wall times** | {int(t.jobs.sum())} | {t.total_s.sum():.0f} s | | |")
    if not args.no_matmul:
        from _common import matmul_rate  # bench/ is on sys.path; torch only when measuring

        print(f"\nMachine: 2048x2048 float32 matmul at {matmul_rate(2048, 2048, 2048):.0f} GFLOP/s "
              "(measured by this script).")


if __name__ == "__main__":
    main()
