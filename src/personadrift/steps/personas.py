"""Steps of rules/personas.smk: round-0 calibration and the study's persona pool."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personadrift.command import Command, arg
from personadrift.errors import InputError
from personadrift.protocol.personas import load_pool
from personadrift.provenance import provenance
from personadrift.runtime.factory import make_engine, model_identity
from personadrift.storage import atomic_write_json
from personadrift.tables import read_table, write_table


def calibrate(config: dict, model_dir: str | Path, out_csv: str | Path, *, threads=None) -> pd.DataFrame:
    """Round-0 adherence: each persona's probe right after its system prompt, ``samples`` times,
    and the same probe without any system prompt (the model's default behaviour, which tells a
    persona the model follows from one its judge scores high anyway)."""
    from personadrift.protocol.scoring import score_answer
    from personadrift.generation.api import GenRequest
    from personadrift.generation.dialog import clean_reply
    from personadrift.generation.selfchat import persona_record
    from personadrift.seeding import derive_seed

    personas, _ = load_pool(config)
    cal = config["personas"]["calibration"]
    from personadrift.runtime.backends import model_job_backend

    # a backend with an environment of its own (vllm) calibrates on the HF engine, same weights
    engine = make_engine(config, model_dir, threads=threads, backend=model_job_backend(config).name)
    probes = sorted({p.probe for p in personas})  # answers without a persona depend on the probe only
    reqs = [
        GenRequest(messages=[{"role": "system", "content": p.system_prompt}, {"role": "user", "content": p.probe}],
                   seed=derive_seed(config["seed"], "calibration", p.id), n=cal["samples"], persist=False)
        for p in personas
    ] + [
        GenRequest(messages=[{"role": "user", "content": q}], seed=derive_seed(config["seed"], "calibration", q),
                   n=cal["samples"], persist=False)
        for q in probes
    ]
    # one call for every persona and sample: the engine batches them max_batch rows at a time,
    # grouped by prompt length (replies do not depend on the grouping)
    answers = engine.generate(reqs, max_new_tokens=cal["max_new_tokens"])
    with_persona, without = answers[: len(personas)], dict(zip(probes, answers[len(personas):]))
    rows = []
    gate = config["scoring"]["english_fluency_gate"]
    whitespace = config.get("selfchat", {}).get("whitespace", "collapse")   # answers cleaned as the self-chat stores replies
    for p, texts in zip(personas, with_persona):
        for condition, group in (("persona", texts), ("no_persona", without[p.probe])):
            for i, text in enumerate(group):
                score, error = score_answer(persona_record(p), clean_reply(text, True, whitespace), gate)
                rows.append({"persona": p.id, "category": p.category, "condition": condition, "sample": i,
                             "score": score, "error": error, "answer": text})
    df = pd.DataFrame(rows)
    write_table(df, out_csv, model=model_identity(engine), calibration=cal)
    return df


def select_personas(config: dict, calibration_csv: str | Path, out_json: str | Path, out_summary=None) -> dict:
    """The study's persona pool: all personas, or those the model follows at round 0.

    Kept: mean score with the persona >= ``keep_threshold`` and, if ``min_lift`` is set, at
    least that much above the same judge on answers given without any persona.
    """
    from personadrift.generation.selfchat import persona_record

    personas, topics = load_pool(config)
    cal = config["personas"]["calibration"]
    df = read_table(calibration_csv)
    means = df.groupby(["persona", "condition"])["score"].mean().unstack("condition")
    threshold, min_lift = cal["keep_threshold"], cal["min_lift"]
    kept, dropped, summary = [], [], []
    for p in personas:
        a = float(means.loc[p.id, "persona"]) if p.id in means.index else float("nan")
        b = float(means.loc[p.id, "no_persona"]) if p.id in means.index else float("nan")
        reasons = []
        if threshold is not None and not a >= threshold:
            reasons.append(f"round-0 score {a:.2f} < {threshold}")
        if threshold is not None and min_lift is not None and not a - b >= min_lift:
            reasons.append(f"lift over no persona {a - b:+.2f} < {min_lift}")
        (dropped if reasons else kept).append({**persona_record(p), "round0_adherence": a, "no_persona_score": b})
        summary.append({"persona": p.id, "category": p.category, "adherence": a, "no_persona": b,
                        "lift": a - b, "kept": not reasons, "reason": "; ".join(reasons)})
    if len(kept) < cal["min_kept"]:
        raise InputError(
            "config", "personas.calibration.keep_threshold",
            f"only {len(kept)} personas pass round-0 calibration; lower keep_threshold/min_lift "
            f"or use a stronger model (see {calibration_csv})",
        )
    if threshold is None:
        rule = "all personas (no calibration threshold)"
    else:
        rule = f"round-0 score >= {threshold} over {cal['samples']} samples"
        rule += f" and >= {min_lift} above the same probe without a persona" if min_lift is not None else ""
    pool = {"personas": kept, "dropped": dropped, "topics": topics, "rule": rule,
            "provenance": provenance(calibration=str(calibration_csv))}
    atomic_write_json(out_json, pool)
    if out_summary:
        write_table(pd.DataFrame(summary), out_summary, rule=rule)
    return pool


class _PoolPersona:
    """A persona read back from the pool file (same attributes as personas.Persona)."""

    def __init__(self, d: dict):
        self.__dict__.update({k: d[k] for k in ("id", "category", "system_prompt", "probe", "judge", "judge_args")})


COMMANDS = [
    Command("calibrate", "round-0 adherence of every persona",
            lambda config, a: calibrate(config, a.model_dir, a.out, threads=a.threads),
            (arg("--model-dir", required=True), arg("--out", required=True))),
    Command("select-personas", "the study's persona pool from the calibration",
            lambda config, a: select_personas(config, a.calibration, a.out, a.summary),
            (arg("--calibration", required=True), arg("--out", required=True),
             arg("--summary", help="per-persona calibration table (CSV)"))),
]
