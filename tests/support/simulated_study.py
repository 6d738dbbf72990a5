"""A simulated study (analysis/simulate.py: planted decline, no model) taken through the workflow's
own score and drift-table steps, for tests that need real drift tables without a model."""

from __future__ import annotations

import json
from pathlib import Path


def drift_tables_of_simulated_study(out_dir: Path, conversations: int, seed: int,
                                    stop_share: dict | None = None) -> dict[str, Path]:
    """Transcripts of a planted decline (none and the control; ``stop_share``: setting -> share of
    conversations the context stops early) -> ``score`` -> ``drift_tables``; the paths written:
    each setting's scores (``scores``: list), ``by_round``, ``change``, ``study`` and ``errors``."""
    from personadrift.analysis import simulate as sim
    from personadrift.steps.score import drift_tables, score

    design = sim.drifting(conversations, drop=2.0, effects={"none": 0.0, "control": 0.0}, stop_share=stop_share or {})
    # planted stops exist as score tables only (sim.study_records writes whole transcripts)
    dirs = {} if stop_share else sim.write_study(design, seed=seed, out_dir=out_dir)
    config = {"study": "sim", "seed": 0, "model": {"name": "simulated"},
              "selfchat": {"runs": design.runs, "user_system_prompt": True},
              "scoring": {"english_fluency_gate": False, "confidence": 0.9, "resamples": 200,
                          "bootstrap_unit": "conversation", "method": "t"}}
    csvs = []
    for s, d in dirs.items():
        csvs.append(out_dir / f"{s}.csv")
        score(config, [d], csvs[-1])
    if stop_share:
        for s, part in sim.simulate_scores(design, seed).groupby("setting"):
            csvs.append(out_dir / f"{s}.csv")
            part.to_csv(csvs[-1], index=False)
    pool = out_dir / "pool.json"
    pool.write_text(json.dumps({"personas": [{"id": "p"}], "dropped": [], "rule": "all kept"}))
    out = {k: out_dir / f"{k}.{'json' if k == 'study' else 'csv'}" for k in ("by_round", "change", "study", "errors")}
    drift_tables(config, csvs, pool, out["by_round"], out["change"], out["study"], out_errors=out["errors"])
    return {"scores": csvs, **out}
