"""Verdicts over seeds (make robustness; the Snakemake runs: steps/robustness.py).

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

import statistics
from collections import Counter
from pathlib import Path

from personadrift.reproduce.manifest import read_manifest


def seed_studies(config: dict) -> list[tuple[int, str]]:
    """(seed, study name) for every seed of ``robustness.seeds``, in the config's order."""
    study, own = config["study"], config["seed"]
    return [(k, study if k == own else f"{study}-seed{k}") for k in config["robustness"]["seeds"]]


def robustness_path(config: dict) -> Path:
    return Path("results") / f"{config['study']}-robustness" / "claims.csv"


def claims_by_seed(manifests: dict[int, Path]) -> dict[int, dict[str, dict]]:
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
