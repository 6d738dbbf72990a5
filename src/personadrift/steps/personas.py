"""Steps of rules/personas.smk: round-0 calibration and the study's persona pool (the
protocol: ``protocol/calibration.py``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personadrift.command import Command, arg
from personadrift.protocol import calibration
from personadrift.protocol.personas import load_pool
from personadrift.provenance import provenance
from personadrift.runtime.factory import make_engine, model_identity
from personadrift.storage import atomic_write_json
from personadrift.tables import read_table, write_table


def calibrate(config: dict, model_dir: str | Path, out_csv: str | Path, *, threads=None) -> pd.DataFrame:
    """The calibration table: every calibration prompt answered ``samples`` times, scored."""
    from personadrift.generation.api import GenRequest
    from personadrift.generation.dialog import clean_reply

    personas, _ = load_pool(config)
    cal = config["personas"]["calibration"]
    from personadrift.runtime.backends import model_job_backend

    # a backend with an environment of its own (vllm) calibrates on the HF engine, same weights
    engine = make_engine(config, model_dir, threads=threads, backend=model_job_backend(config).name)
    asked = calibration.prompts(personas, config["seed"])
    # one call for every prompt and sample: the engine batches them max_batch rows at a time,
    # grouped by prompt length (replies do not depend on the grouping)
    answers = engine.generate([GenRequest(messages=a.messages, seed=a.seed, n=cal["samples"], persist=False)
                               for a in asked], max_new_tokens=cal["max_new_tokens"])
    whitespace = config["selfchat"]["whitespace"]   # answers cleaned as the self-chat stores replies
    df = calibration.calibration_table(personas, asked, answers, fluency_gate=config["scoring"]["english_fluency_gate"],
                                       clean=lambda text: clean_reply(text, True, whitespace))
    write_table(df, out_csv, model=model_identity(engine), calibration=cal)
    return df


def select_personas(config: dict, calibration_csv: str | Path, out_json: str | Path, out_summary=None) -> dict:
    """The study's persona pool file (and the per-persona summary table) from the calibration."""
    personas, topics = load_pool(config)
    pool = calibration.select(personas, read_table(calibration_csv), config["personas"]["calibration"],
                              source=str(calibration_csv))
    record = {"personas": pool.kept, "dropped": pool.dropped, "topics": topics, "rule": pool.rule,
              "provenance": provenance(calibration=str(calibration_csv))}
    atomic_write_json(out_json, record)
    if out_summary:
        write_table(pool.summary, out_summary, rule=pool.rule)
    return record


COMMANDS = [
    Command("calibrate", "round-0 adherence of every persona",
            lambda config, a: calibrate(config, a.model_dir, a.out, threads=a.threads),
            (arg("--model-dir", required=True), arg("--out", required=True))),
    Command("select-personas", "the study's persona pool from the calibration",
            lambda config, a: select_personas(config, a.calibration, a.out, a.summary),
            (arg("--calibration", required=True), arg("--out", required=True),
             arg("--summary", help="per-persona calibration table (CSV)"))),
]
