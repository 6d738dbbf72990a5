"""Verdicts over seeds (``personadrift robustness``, make robustness).

The study is rerun under each seed of ``robustness.seeds``: the config's own seed is the study
itself (``results/<study>``), every other seed ``k`` a study of its own (``results/<study>-seed<k>``),
each built up to its outputs manifest (rules/verify.smk) by its own Snakemake run; the fetched
model and MMLU are shared (resources/). Every seed's claims are read from its manifest, and the
table ``results/<study>-robustness/claims.csv`` gives, per claim, the verdict at the reference
seed (the config's, when it is among the seeds, else the most common verdict), the share of seeds
where that verdict holds, the share where the claim is significant, and the min / median / max of
its estimate, then each seed's estimate and verdict.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

from personadrift.command import Command, arg
from personadrift.errors import InputError

log = logging.getLogger(__name__)


def seed_studies(config: dict) -> list[tuple[int, str]]:
    """(seed, study name) for every seed of ``robustness.seeds``, in the config's order."""
    study, own = config["study"], config["seed"]
    return [(k, study if k == own else f"{study}-seed{k}") for k in config["robustness"]["seeds"]]


def robustness_path(config: dict) -> Path:
    return Path("results") / f"{config['study']}-robustness" / "claims.csv"


def _snakemake() -> list[str]:
    """Snakemake on PATH (an activated venv, make's .venv/bin), else the one beside this Python."""
    found = shutil.which("snakemake")
    return [found] if found else [sys.executable, "-m", "snakemake"]


def run_seeds(config: dict, config_path: str | None, *, cores: int, snakefile, extra: list[str] = ()) -> dict[int, Path]:
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


def claims_by_seed(manifests: dict[int, Path]) -> dict[int, dict[str, dict]]:
    from personadrift.steps.verify import read_manifest

    return {seed: {c["claim"]: c for c in read_manifest(path)["claims"]} for seed, path in manifests.items()}


def robustness_table(by_seed: dict[int, dict[str, dict]], reference_seed: int | None):
    """One row per claim (any seed's): reference verdict, share of seeds where it holds, share
    significant, spread of the estimate, and each seed's estimate and verdict."""
    import pandas as pd

    seeds = list(by_seed)
    claims = list(dict.fromkeys(c for s in seeds for c in by_seed[s]))
    rows = []
    for claim in claims:
        present = {s: by_seed[s][claim] for s in seeds if claim in by_seed[s]}
        verdicts = [c["verdict"] for c in present.values()]
        if reference_seed in present:
            ref, ref_seed = present[reference_seed]["verdict"], reference_seed
        else:
            ref, ref_seed = Counter(verdicts).most_common(1)[0][0], None
        estimates = [c["estimate"] for c in present.values() if c["estimate"] is not None]
        row = {
            "claim": claim, "reference_seed": ref_seed, "verdict": ref, "seeds": len(present),
            "holds_share": sum(v == ref for v in verdicts) / len(present),
            "significant_share": sum(v.startswith("significant") for v in verdicts) / len(present),
            "estimate_min": min(estimates) if estimates else None,
            "estimate_median": statistics.median(estimates) if estimates else None,
            "estimate_max": max(estimates) if estimates else None,
        }
        for s in seeds:
            c = present.get(s)
            row[f"estimate_seed{s}"] = c["estimate"] if c else None
            row[f"verdict_seed{s}"] = c["verdict"] if c else "missing"
        rows.append(row)
    return pd.DataFrame(rows)


def summary_lines(table) -> list[str]:
    def n(x):
        return "nan" if x is None or x != x else f"{x:+.3f}"
    return [f"{r.claim}: {r.verdict} in {round(r.holds_share * r.seeds)} of {r.seeds} seeds; estimate "
            f"{n(r.estimate_min)} / {n(r.estimate_median)} / {n(r.estimate_max)} (min / median / max)"
            for r in table.itertuples()]


def robustness(config: dict, config_path: str | None, *, cores: int, snakefile, out=None, run: bool = True,
               extra: list[str] = ()) -> Path:
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
