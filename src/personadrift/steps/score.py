"""Steps of rules/score.smk: judge every probe answer; drift tables."""

from __future__ import annotations

import logging

import pandas as pd

from personadrift.command import Command, arg
from personadrift.storage import atomic_write_json, read_json
from personadrift.tables import read_table, write_table

log = logging.getLogger(__name__)


def score(config: dict, transcript_dirs: list, out_csv) -> None:
    from personadrift.protocol.scoring import score_dirs

    df = score_dirs(transcript_dirs, fluency_gate=config["scoring"]["english_fluency_gate"])
    errors = int((df["error"] != "").sum())
    if errors:
        log.warning("%d answers could not be judged; see the error column of %s", errors, out_csv)
    write_table(df, out_csv, judge_errors=errors, fluency_gate=config["scoring"]["english_fluency_gate"])


def drift_tables(config: dict, score_csvs: list, pool_json, out_by_round, out_change, out_study,
                 out_errors=None) -> None:
    from personadrift.analysis.stats import (
        JUDGE_ERROR_TREATMENT,
        TREATMENT_SUFFIX,
        by_round,
        change_over_dialog,
        judge_error_counts,
        judge_error_flags,
        stopped_flags,
    )

    sc = config["scoring"]
    # the baseline's scores and, when the DAG passes them, the control setting's (user bot
    # without persona): both curves go in one figure, and Holm runs over all their drift claims
    scores = pd.concat([read_table(p) for p in score_csvs], ignore_index=True)
    # the study's seed draws every resample of the bootstrap and sign-flip intervals
    kw = {"method": sc["method"], "confidence": sc["confidence"], "resamples": sc["resamples"],
          "seed": config["seed"]}
    write_table(by_round(scores, unit=sc["bootstrap_unit"], **kw), out_by_round)
    write_table(change_over_dialog(scores, **kw), out_change)
    if out_errors is not None:
        write_table(judge_error_counts(scores), out_errors)
    pool = read_json(pool_json)
    errors = judge_error_flags(scores)
    study = {
        "study": config["study"],
        "model": config["model"]["name"],
        "conversations": int(scores["conversation"].nunique()),
        "rounds": int(scores["round"].max()),
        "round_zero": bool((scores["round"] == 0).any()),
        "settings": sorted(scores["setting"].unique()),
        "runs": config["selfchat"]["runs"],
        "user_system_prompt": config["selfchat"]["user_system_prompt"],
        "personas_kept": [p["id"] for p in pool["personas"]],
        "personas_dropped": [p["id"] for p in pool["dropped"]],
        "persona_rule": pool["rule"],
        "confidence": sc["confidence"],
        "bootstrap_unit": sc["bootstrap_unit"],
        "method": kw["method"],
        "judge_errors": int(errors.sum()),
        "judge_errors_by_setting": {str(s): int(n) for s, n in errors.groupby(scores["setting"]).sum().items()},
        "judge_error_treatment": TREATMENT_SUFFIX[JUDGE_ERROR_TREATMENT],
        # conversations the context policy stopped early (context_policy: stop), per setting
        "conversations_stopped": {str(s): int(g.loc[stopped_flags(g), "conversation"].nunique())
                                  for s, g in scores.groupby("setting")},
    }
    atomic_write_json(out_study, study)


COMMANDS = [
    Command("score", "judge every probe answer into a tidy table",
            lambda config, a: score(config, a.transcripts, a.out),
            (arg("--out", required=True), arg("transcripts", nargs="+", help="transcript folders"))),
    Command("tables", "drift per round, the drift claims, judge errors, study summary",
            lambda config, a: drift_tables(config, a.scores, a.pool, a.by_round, a.change, a.study,
                                           out_errors=a.judge_errors),
            (arg("--pool", required=True), arg("--by-round", required=True), arg("--change", required=True),
             arg("--judge-errors", required=True, help="judge errors per setting, probe kind and persona (CSV)"),
             arg("--study", required=True), arg("scores", nargs="+"))),
]
