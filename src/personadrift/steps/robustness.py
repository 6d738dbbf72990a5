"""Steps of ``personadrift robustness`` (make robustness): one Snakemake run per seed of
``robustness.seeds`` up to its outputs manifest, then the claims table over the seeds (the
logic: ``reproduce/robustness.py``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from personadrift.command import Command, arg
from personadrift.errors import InputError
from personadrift.reproduce.robustness import (
    claims_by_seed,
    robustness_path,
    robustness_table,
    seed_studies,
    summary_lines,
)

log = logging.getLogger(__name__)


def _snakemake() -> list[str]:
    """Snakemake on PATH (an activated venv, make's .venv/bin), else the one beside this Python."""
    found = shutil.which("snakemake")
    return [found] if found else [sys.executable, "-m", "snakemake"]


def run_seeds(config: dict, config_path: str | None, *, cores: int, snakefile,
              extra: Sequence[str] = ()) -> dict[int, Path]:
    """One Snakemake run per seed up to its manifest; seed -> manifest path. A seed whose
    outputs are up to date costs Snakemake's planning only."""
    manifests = {}
    for seed, study in seed_studies(config):
        target = Path("results") / study / "manifest.json"
        cmd = [*_snakemake(), "--snakefile", str(snakefile), str(target), "--cores", str(cores),
               *(["--configfile", str(Path(config_path).resolve())] if config_path else []),
               "--config", f"study={study}", f"seed={seed}", *extra]
        log.info("seed %d: %s", seed, " ".join(cmd))
        print(f"robustness: seed {seed} -> results/{study}", flush=True)
        proc = subprocess.run(cmd, env={**os.environ})
        if proc.returncode:
            raise InputError("(robustness)", f"seed {seed}", f"the Snakemake run of study {study} failed "
                             f"(exit status {proc.returncode}); its log says why, and a rerun resumes it")
        manifests[seed] = target
    return manifests


def robustness(config: dict, config_path: str | None, *, cores: int, snakefile, out=None, run: bool = True,
               extra: Sequence[str] = ()) -> Path:
    """Run every seed (``run``; else read the manifests already there) and write the table."""
    from personadrift.tables import write_table

    if run:
        manifests = run_seeds(config, config_path, cores=cores, snakefile=snakefile, extra=extra)
    else:
        manifests = {seed: Path("results") / study / "manifest.json" for seed, study in seed_studies(config)}
    table = robustness_table(claims_by_seed(manifests), config["seed"])
    out = Path(out) if out else robustness_path(config)
    write_table(table, out, seeds={str(s): str(p) for s, p in manifests.items()}, reference_seed=config["seed"])
    print("\n".join(summary_lines(table)))
    print(f"robustness: {out} ({len(table)} claims, {len(manifests)} seeds)")
    return out


def _robustness(config: dict, args) -> None:
    from personadrift.config import REPO_ROOT, validate_config

    if args.seeds:
        config["robustness"]["seeds"] = args.seeds
        validate_config(config, args.config or "config.yaml")  # the seeds given obey the key's rules
    snakefile = args.snakefile or ("Snakefile" if Path("Snakefile").exists() else REPO_ROOT / "Snakefile")
    robustness(config, args.config, cores=args.cores, snakefile=snakefile, out=args.out, run=not args.no_run)


COMMANDS = [
    Command("robustness", "rerun the study under robustness.seeds; each claim's share of seeds", _robustness,
            (arg("--cores", type=int, default=2, help="Snakemake --cores of each seed's run"),
             arg("--seeds", type=int, nargs="+", help="seeds (default: the config's robustness.seeds)"),
             arg("--out", help="claims table (default: results/<study>-robustness/claims.csv)"),
             arg("--snakefile", help="the workflow (default: ./Snakefile, else the package's checkout)"),
             arg("--no-run", action="store_true", help="only tabulate the seeds' manifests already there"))),
]
