"""Planted drift: coverage, false-positive rate and power of the workflow's statistics.

    python bench/planted_drift.py [--studies 200] [--methods t,signflip,bca,percentile]
                                  [--sizes 8,200] [--confidence 0.95] [--seed 0]
    python bench/planted_drift.py --skip-coverage --configs config.yaml,configs/laptop.yaml,configs/paper.yaml
    python bench/planted_drift.py --skip-coverage --fit results/laptop/scores/none.csv \
        --configs config.yaml,configs/laptop.yaml
    python bench/planted_drift.py --skip-power      # the coverage table only
    python bench/planted_drift.py --skip-coverage --fit results/laptop/scores/all.csv \
        --configs configs/paper.yaml --stop-share 0.2

Simulated studies (analysis/simulate.py: no model) go through the same tables as the workflow,
with the figures' own Holm families: the drift figure's claims with the control (round-0 shift and
decline over the dialog of both probes, for no intervention and the control, and their
differences: 12 claims, 8 of them tested; the shift minus the control's and the control's own
shift are fixed by design) and the mitigation figure's (level and change over the dialog of each
mitigation setting: 2 x the config's settings). Drift varies between conversations
(``--drift-sd``, logits) and the judges are ``--judges`` (binary, graded or both). The coverage
table has a third truth, "overflow and divergence": a third of the baseline's conversations and
two thirds of the planted setting's stop after a random round, each setting's wobble and drift
correlate 0.5 across settings and the planted effect varies between conversations (sd 0.5 logits).
``--stop-share F`` plants overflow in the power tables too (share F of the baseline's
conversations, 2F of the planted setting's).

Without ``--fit`` the studies start at stability 0.5, spread 1.0 and round wobble 0.5 (logits),
2 samples per probe, 4 dialog rounds plus round 0. With ``--fit SCORES.csv`` every parameter is
fitted to that scores table (``simulate.fit_designs``: its round means, spread, drift
heterogeneity, round wobble, judge (binary, graded, or mixed: the share of 0/1 scores) and its
noise, conversations, rounds and samples), and the planted drift replaces its decline over rounds
1..R. When the table holds settings other than ``none`` and the control (a concatenation of the
study's ``scores/*.csv``), the correlation of wobble and drift across settings is fitted to the
variance of their paired level differences (``simulate.fit_correlation``); without them it is 1
(``--correlation`` sets it by hand) and no paired claim's power is quoted. Before any power table,
the simulated standard error of every claim is printed beside the fitted study's observed one
(``simulate.se_check``); a power row whose claim's two differ by more than
``simulate.SE_TOLERANCE`` (relative) says ``quoted = False`` and its smallest-effect sentence is
replaced by "not quoted". The variances allow more than one fit (``fit_designs`` says why): every table is computed
under each, as ``fit 1``, ``fit 2``, ... in the ``design`` column. To refit to a study, point
``--fit`` at its ``results/<study>/scores/none.csv``; ``--configs`` then names the studies to
simulate with the fitted parameters, each in its own shape (``simulate.in_shape``: its
conversations, probe samples, mitigation comparisons and its first rounds of the fitted study's),
so a fit to the laptop study gives the default's power as well:
``--fit results/laptop/scores/none.csv --configs config.yaml,configs/laptop.yaml``.

Printed:

1. coverage of each interval against its nominal level, and the rate of "significant" claims,
   with no drift (false-positive rate) and with planted drift and intervention effects (power);
2. with ``--fit``: the se check; then power of "stability declines over the dialog" (the fitted
   change from round 1 to the last, Holm over the drift figure's 8 tested claims) against the true
   decline, and of "the setting raises the level over the dialog" and "... reduces the decline" (Holm
   over the mitigation figure's claims) against the true differences; and the smallest effects detected with 80% power.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd

from personadrift.analysis import simulate as sim

DEFAULT_SETTINGS = ("ss-k0.5", "ss-k0.25", "repeat-e1", "cfg-g1.5")  # 4 comparisons, as in config.yaml


OVERFLOW = {"setting_correlation": 0.5, "effect_sd": 0.5,
            "stop_share": {"none": 1 / 3, "control": 1 / 3, DEFAULT_SETTINGS[0]: 2 / 3}}


def coverage_table(sizes, methods, studies, confidence, seed, drift_sd, judges) -> pd.DataFrame:
    parts = []
    for label, drop, effect, more in (("no drift, no effect", 0.0, 0.0, {}), ("drift and effect", 1.5, 1.0, {}),
                                      ("overflow and divergence", 1.5, 1.0, OVERFLOW)):
        for n in sizes:
            for judge in judges:
                effects = {"none": 0.0, "control": 0.0, **{s: 0.0 for s in DEFAULT_SETTINGS}}
                effects[DEFAULT_SETTINGS[0]] = effect
                design = sim.drifting(n, drop=drop, effects=effects, drift_sd=drift_sd, judge=judge, **more)
                for m in methods:
                    t0 = time.perf_counter()
                    r = sim.check(design, studies=studies, method=m, confidence=confidence, seed=seed)
                    r.insert(0, "truth", label)
                    r.insert(1, "judge", judge)
                    r["seconds"] = time.perf_counter() - t0
                    parts.append(r)
    return pd.concat(parts, ignore_index=True)


def shape_of(config_file: str) -> sim.StudyShape:
    from personadrift.overlays import read_config

    return sim.shape_of(read_config(config_file).config, label=config_file)  # an overlay over its base


def _settings(shape: sim.StudyShape) -> tuple:
    return tuple(f"setting-{i}" for i in range(shape.comparisons))


def base_designs(shape: sim.StudyShape, fitted, drift_sd: float, judges) -> list[tuple[str, sim.Design]]:
    """The study's designs before planting, named: each fit in the study's shape, or the defaults
    in its shape for each judge."""
    if fitted:
        return [(f"fit {i + 1}", sim.in_shape(d, shape)) for i, d in enumerate(fitted)]
    return [("default", sim.drifting(shape.conversations, rounds=shape.rounds, runs=shape.runs, drift_sd=drift_sd,
                                     judge=judge)) for judge in judges]


def _stops(settings, planted: str, share: float) -> dict:
    """Overflow to plant: ``share`` of every setting's conversations, twice that of the planted one."""
    return {s: min(1.0, 2 * share if s == planted else share) for s in settings} if share else {}


def quoted(checks: dict, name: str, claim: str) -> bool:
    """Whether power for ``claim`` under fit ``name`` may be quoted: its se check passed (no check
    without --fit: the default designs are not a study's fit, and their power is about them)."""
    if name not in checks:
        return True
    c = checks[name].set_index("claim")
    return bool(claim in c.index and c.loc[claim, "quotable"])


def power_drift(shapes, drops, studies, confidence, seed, fitted, drift_sd, judges, stop_share=0.0,
                checks=None) -> pd.DataFrame:
    rows = []
    for sh in shapes:
        for name, base in base_designs(sh, fitted, drift_sd, judges):
            for drop in drops:
                design = sim.with_drift(base, drop, effects={"none": 0.0, "control": 0.0},
                                        stop_share=_stops(("none", "control"), "", stop_share))
                r = sim.check(design, studies=studies, confidence=confidence, seed=seed, round_means=False)
                r = r.set_index("claim")
                rows.append({"study": sh.label, "design": name, "judge": base.judge, "n": design.conversations,
                             "drift_sd": design.drift_sd, "logit_drop": drop,
                             "true_change": sim.true_change(design),
                             "family": int(r.loc["drift (agent)", "family"]),
                             "power": r.loc["drift (agent)", "significant_rate"],
                             "coverage": r.loc["drift (agent)", "coverage"],
                             "quoted": quoted(checks or {}, name, "drift (agent)")})
    return pd.DataFrame(rows)


def power_effect(shapes, effects, studies, confidence, seed, fitted, drift_sd, judges, stop_share=0.0,
                 checks=None) -> pd.DataFrame:
    """Power of each mitigation claim for a planted level effect and a planted change effect."""
    rows = []
    for sh in shapes:
        names = _settings(sh)
        for name, base in base_designs(sh, fitted, drift_sd, judges):
            for claim in ("level", "drift"):
                for e in effects:
                    eff = {"none": 0.0, **{s: 0.0 for s in names}}
                    drift_eff = {}
                    if claim == "level":
                        eff[names[0]] = e
                    else:
                        drift_eff[names[0]] = e
                    design = sim.with_drift(base, 1.0, effects=eff, drift_effects=drift_eff,
                                            stop_share=_stops(eff, names[0], stop_share))
                    r = sim.check(design, studies=studies, confidence=confidence, seed=seed,
                                  round_means=False).set_index("claim")
                    rows.append({"study": sh.label, "design": name, "judge": base.judge, "claim": claim,
                                 "n": design.conversations,
                                 "logit_effect": e, "true_difference": sim.true_effect(design, names[0], claim),
                                 "family": int(r.loc[f"{claim} vs none", "family"]),
                                 "power": r.loc[f"{claim} vs none", "significant_rate"],
                                 "coverage": r.loc[f"{claim} vs none", "coverage"],
                                 "quoted": quoted(checks or {}, name, f"{claim} vs none")})
    return pd.DataFrame(rows)


def describe(d: sim.Design) -> str:
    """A fitted design in one line (its repr lists every field at full precision)."""
    centres = ", ".join(f"{x:.3f}" for x in d.stability)
    return (f"{d.conversations} conversations, {d.rounds} rounds, {d.runs} sample(s) per probe; spread "
            f"{d.spread:.2f}, drift sd {d.drift_sd:.2f}, round noise {d.round_noise:.2f} logits; {d.judge} judge "
            f"({d.binary_share:.0%} of scores 0 or 1, noise {d.judge_noise():.2f} of a binary judge's); "
            f"stability centres by round {centres}; correlation across settings {d.setting_correlation:.2f}")


def smallest(df: pd.DataFrame, size_col: str, target: float = 0.8) -> str:
    if not df["quoted"].all():
        return "not quoted (its simulated standard error differs from the study's: see the se check)"
    d = df[df["power"] >= target]
    if d.empty:
        largest = df.loc[df[size_col].abs().idxmax()]  # the largest effect scanned, not the most powerful row
        return (f"not reached in the scanned range (largest {abs(largest[size_col]):.2f} has power "
                f"{largest['power']:.2f})")
    return f"{abs(d.sort_values(size_col, key=abs).iloc[0][size_col]):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--methods", default="t,signflip,bca,percentile")
    p.add_argument("--sizes", default="8,200")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-coverage", action="store_true")
    p.add_argument("--skip-power", action="store_true")
    p.add_argument("--drift-sd", type=float, default=1.0,
                   help="sd of a conversation's own drift over the dialog (logits); ignored with --fit")
    p.add_argument("--judges", default="binary,graded", help="simulated judges; ignored with --fit")
    p.add_argument("--fit", default=None, help="a scores table (CSV): fit the design to its 'none' setting")
    p.add_argument("--correlation", type=float, default=None,
                   help="correlation of wobble and drift across settings (default: fitted with --fit, else 1)")
    p.add_argument("--stop-share", type=float, default=0.0,
                   help="power tables: share of conversations that stop early (twice that in the planted setting)")
    p.add_argument("--configs", default=None,
                   help="comma-separated config files: power tables in each one's shape (instead of --sizes)")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    judges = args.judges.split(",")
    shapes = ([shape_of(f) for f in args.configs.split(",")] if args.configs
              else [sim.StudyShape(f"n={n}", n) for n in sizes])
    fitted, checks = [], {}
    if args.fit:
        from personadrift.tables import read_table

        table = read_table(args.fit)
        try:
            fitted = sim.fit_designs(table)
        except ValueError as e:  # a table that cannot be fitted: one line, no traceback
            raise SystemExit(f"planted_drift: {args.fit}: {e}") from None
        paired = [s for s in sorted(table["setting"].unique()) if s not in ("none", "control")]
        for i, d in enumerate(fitted):
            if args.correlation is not None:
                fitted[i] = replace(d, setting_correlation=args.correlation)
            elif paired:
                fitted[i] = sim.fit_correlation(d, table, paired, seed=args.seed)
            print(f"fit {i + 1} to {args.fit}: {describe(fitted[i])}")
        print(f"\n## Standard error of each claim: observed in {args.fit} against simulated under each fit "
              f"({args.studies} studies; power is quoted only within {sim.SE_TOLERANCE:.0%})")
        for i, d in enumerate(fitted):
            checks[f"fit {i + 1}"] = c = sim.se_check(d, table, studies=max(args.studies, 20), seed=args.seed)
            print(f"fit {i + 1}:")
            print(c.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        if not args.configs:
            shapes = [sim.StudyShape(args.fit, fitted[0].conversations, fitted[0].runs, fitted[0].rounds)]
        for sh in shapes:
            try:
                sim.in_shape(fitted[0], sh)
            except ValueError as e:  # a config with more rounds than the fitted study: one line
                raise SystemExit(f"planted_drift: {e}") from None
    for sh in shapes:
        print(f"{sh.label}: {sh.conversations} conversations, {sh.runs} sample(s) per probe, {sh.rounds} rounds, "
              f"{sh.comparisons} mitigation setting(s) compared")
    methods = args.methods.split(",")
    pd.set_option("display.width", 160)
    t0 = time.perf_counter()
    if not args.skip_coverage:
        cov = coverage_table(sizes, methods, args.studies, args.confidence, args.seed, args.drift_sd, judges)
        print(f"## Coverage (nominal {args.confidence}) and rate of 'significant' over {args.studies} studies each")
        print(cov.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.skip_power:
        print(f"\n(total {time.perf_counter() - t0:.0f} s)")
        return
    drops = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    pdrift = power_drift(shapes, drops, args.studies, args.confidence, args.seed, fitted, args.drift_sd, judges,
                         args.stop_share, checks)
    print("\n## Power of 'stability declines over the dialog' (t-interval, Holm over the drift figure's tested claims)")
    print(pdrift.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    peff = power_effect(shapes, [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0], max(2, args.studies // 2), args.confidence,
                        args.seed, fitted, args.drift_sd, judges, args.stop_share, checks)
    print("\n## Power of each mitigation claim against no intervention (t-interval, Holm over the mitigation "
          "figure's claims)")
    print(peff.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print()
    for (study, name, judge), d in pdrift.groupby(["study", "design", "judge"], sort=False):
        e = peff[(peff["study"] == study) & (peff["design"] == name) & (peff["judge"] == judge)]
        rounds = next(sh.rounds for sh in shapes if sh.label == study)
        print(f"{study} ({name}, {judge} judges, n = {int(d['n'].iloc[0])}): smallest decline in mean stability "
              f"over the dialog (round 1 to {rounds}) detected with 80% power: {smallest(d, 'true_change')}; "
              f"smallest difference from no intervention in the level: "
              f"{smallest(e[e['claim'] == 'level'], 'true_difference')}, in the change over the "
              f"dialog: {smallest(e[e['claim'] == 'drift'], 'true_difference')}.")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
