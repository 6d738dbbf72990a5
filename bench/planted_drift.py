"""Planted drift: coverage, false-positive rate and power of the workflow's statistics.

    python bench/planted_drift.py [--studies 200] [--methods t,signflip,bca,percentile]
                                  [--sizes 8,200] [--confidence 0.95] [--seed 0]
    python bench/planted_drift.py --skip-coverage --configs config.yaml,configs/laptop.yaml,configs/paper.yaml

With ``--configs``, the power tables use each config's own shape instead of ``--sizes``: its
conversations, rounds (turns / 2), probe samples (runs) and number of mitigation comparisons.

Simulated studies (analysis/simulate.py: no model; binary judges, 2 samples per probe, 4 dialog
rounds plus round 0, between-conversation spread 1.0 and round wobble 0.5 on the logit scale,
stability 0.5 at round 0, adoption 0.1) go through the same tables as the workflow. Printed:

1. coverage of each interval against its nominal level, and the rate of "significant" claims,
   with no drift (false-positive rate) and with planted drift and intervention effects (power);
2. power of "significant drift in stability" (Holm over the 2 drift claims) against the true
   change in mean stability, and of "setting differs from none" (Holm over 4 settings, as in the
   default config) against the true difference; and the smallest effects detected with 80% power.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from personadrift.analysis import simulate as sim

DEFAULT_SETTINGS = ("ss-k0.5", "ss-k0.25", "repeat-e1", "cfg-g1.5")  # 4 comparisons, as in config.yaml


def coverage_table(sizes, methods, studies, confidence, seed) -> pd.DataFrame:
    parts = []
    for label, drop, effect in (("no drift, no effect", 0.0, 0.0), ("drift and effect", 1.5, 1.0)):
        for n in sizes:
            effects = {"none": 0.0, **{s: 0.0 for s in DEFAULT_SETTINGS}}
            effects[DEFAULT_SETTINGS[0]] = effect
            design = sim.drifting(n, drop=drop, effects=effects)
            for m in methods:
                t0 = time.perf_counter()
                r = sim.check(design, studies=studies, method=m, confidence=confidence, seed=seed)
                r.insert(0, "truth", label)
                r["seconds"] = time.perf_counter() - t0
                parts.append(r)
    return pd.concat(parts, ignore_index=True)


def shape_of(config_file: str) -> sim.StudyShape:
    import yaml

    return sim.shape_of(yaml.safe_load(open(config_file)), label=config_file)


def _settings(shape: sim.StudyShape) -> tuple:
    return tuple(f"setting-{i}" for i in range(shape.comparisons))


def power_drift(shapes, drops, studies, confidence, seed) -> pd.DataFrame:
    rows = []
    for sh in shapes:
        n = sh.conversations
        for drop in drops:
            design = sim.drifting(n, drop=drop, rounds=sh.rounds, runs=sh.runs)
            r = sim.check(design, studies=studies, confidence=confidence, seed=seed, round_means=False)
            r = r.set_index("claim")
            rows.append({"study": sh.label, "n": n, "logit_drop": drop, "true_change": sim.true_change(design),
                         "power": r.loc["drift (agent)", "significant_rate"],
                         "coverage": r.loc["drift (agent)", "coverage"]})
    return pd.DataFrame(rows)


def power_effect(shapes, effects, studies, confidence, seed) -> pd.DataFrame:
    rows = []
    for sh in shapes:
        n, names = sh.conversations, _settings(sh)
        for e in effects:
            eff = {"none": 0.0, **{s: 0.0 for s in names}}
            eff[names[0]] = e
            design = sim.drifting(n, drop=1.0, effects=eff, rounds=sh.rounds, runs=sh.runs)
            sig, cov = [], []
            for i in range(studies):
                sc = sim.simulate_scores(design, seed=seed * 1_000_003 + i)
                from personadrift.analysis.stats import paired_vs_baseline

                pv = paired_vs_baseline(sc, confidence=confidence).set_index("setting")
                r = pv.loc[names[0]]
                sig.append(bool(r["significant"]))
                cov.append(r["ci_low"] <= sim.true_effect(design, names[0]) <= r["ci_high"])
            rows.append({"study": sh.label, "n": n, "logit_effect": e,
                         "true_difference": sim.true_effect(design, names[0]),
                         "power": float(np.mean(sig)), "coverage": float(np.mean(cov))})
    return pd.DataFrame(rows)


def smallest(df: pd.DataFrame, study: str, size_col: str, target: float = 0.8) -> str:
    d = df[(df["study"] == study) & (df["power"] >= target)]
    if d.empty:
        best = df[df["study"] == study].sort_values("power").iloc[-1]
        return (f"not reached in the scanned range (largest {abs(best[size_col]):.2f} has power "
                f"{best['power']:.2f})")
    return f"{abs(d.sort_values(size_col, key=abs).iloc[0][size_col]):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--methods", default="t,signflip,bca,percentile")
    p.add_argument("--sizes", default="8,200")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-coverage", action="store_true")
    p.add_argument("--configs", default=None,
                   help="comma-separated config files: power tables in each one's shape (instead of --sizes)")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    shapes = ([shape_of(f) for f in args.configs.split(",")] if args.configs
              else [sim.StudyShape(f"n={n}", n) for n in sizes])
    for sh in shapes:
        print(f"{sh.label}: {sh.conversations} conversations, {sh.runs} sample(s) per probe, {sh.rounds} rounds, "
              f"Holm over {sh.comparisons} mitigation comparison(s)")
    methods = args.methods.split(",")
    pd.set_option("display.width", 160)
    t0 = time.perf_counter()
    if not args.skip_coverage:
        cov = coverage_table(sizes, methods, args.studies, args.confidence, args.seed)
        print(f"## Coverage (nominal {args.confidence}) and rate of 'significant' over {args.studies} studies each")
        print(cov.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    drops = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    pdrift = power_drift(shapes, drops, args.studies, args.confidence, args.seed)
    print("\n## Power of 'significant drift in stability' (t-interval, Holm over 2 claims)")
    print(pdrift.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    peff = power_effect(shapes, [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0], max(50, args.studies // 2), args.confidence,
                        args.seed)
    print("\n## Power of 'setting differs from none' (t-interval, Holm over the study's mitigation settings)")
    print(peff.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print()
    for sh in shapes:
        print(f"{sh.label} (n = {sh.conversations}): smallest drop in mean stability (round 0 to round {sh.rounds}) detected "
              f"with 80% power: {smallest(pdrift, sh.label, 'true_change')}; smallest difference from no "
              f"intervention: {smallest(peff, sh.label, 'true_difference')}.")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
