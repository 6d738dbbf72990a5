"""Round-0 calibration and the study's persona pool.

Calibration asks each persona's probe right after its system prompt, and the same probe without
any system prompt (the model's default behaviour, which tells a persona the model follows from
one its judge scores high anyway). The pool keeps every persona, or those the model follows at
round 0: mean score with the persona >= ``keep_threshold`` and, if ``min_lift`` is set, at least
that much above the same judge on answers given without any persona. The engine that answers is
the caller's (steps/personas.py); this module says what is asked, how it is scored and what is
kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from personadrift.errors import InputError
from personadrift.protocol.personas import persona_record
from personadrift.protocol.scoring import score_answer
from personadrift.seeding import derive_seed


@dataclass(frozen=True)
class Prompt:
    """One calibration prompt: ``persona`` is the persona's id, or None for the probe alone."""

    messages: list[dict]
    seed: int
    probe: str
    persona: str | None


def prompts(personas: Sequence, seed: int) -> list[Prompt]:
    """Every persona's probe after its system prompt, then every distinct probe alone (answers
    without a persona depend on the probe only), each with its own seed."""
    with_persona = [Prompt([{"role": "system", "content": p.system_prompt}, {"role": "user", "content": p.probe}],
                           derive_seed(seed, "calibration", p.id), p.probe, p.id) for p in personas]
    alone = [Prompt([{"role": "user", "content": q}], derive_seed(seed, "calibration", q), q, None)
             for q in sorted({p.probe for p in personas})]
    return with_persona + alone


def calibration_table(personas: Sequence, asked: Sequence[Prompt], answers: Sequence[Sequence[str]], *,
                      fluency_gate: bool, clean: Callable[[str], str]) -> pd.DataFrame:
    """One row per persona, condition (``persona`` | ``no_persona``) and sample: each answer
    (``answers[i]`` to ``asked[i]``) scored by the persona's judge as the self-chat would store
    it (``clean``)."""
    by_persona = {a.persona: texts for a, texts in zip(asked, answers) if a.persona is not None}
    alone = {a.probe: texts for a, texts in zip(asked, answers) if a.persona is None}
    rows = []
    for p in personas:
        for condition, group in (("persona", by_persona[p.id]), ("no_persona", alone[p.probe])):
            for i, text in enumerate(group):
                score, error = score_answer(persona_record(p), clean(text), fluency_gate)
                rows.append({"persona": p.id, "category": p.category, "condition": condition, "sample": i,
                             "score": score, "error": error, "answer": text})
    return pd.DataFrame(rows)


@dataclass
class Pool:
    """The personas kept and dropped (records with their round-0 scores), the rule that chose
    them, and one summary row per persona."""

    kept: list[dict]
    dropped: list[dict]
    rule: str
    summary: pd.DataFrame


def select(personas: Sequence, calibration: pd.DataFrame, cal: dict, *, source: str) -> Pool:
    """The pool under ``cal`` (the config's ``personas.calibration``) from the calibration
    table; fewer than ``min_kept`` personas kept is an input error (``source``: the table)."""
    means = calibration.groupby(["persona", "condition"])["score"].mean().unstack("condition")
    threshold, min_lift = cal["keep_threshold"], cal["min_lift"]
    kept: list = []
    dropped: list = []
    summary: list = []
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
            f"or use a stronger model (see {source})",
        )
    if threshold is None:
        rule = "all personas (no calibration threshold)"
    else:
        rule = f"round-0 score >= {threshold} over {cal['samples']} samples"
        rule += f" and >= {min_lift} above the same probe without a persona" if min_lift is not None else ""
    return Pool(kept, dropped, rule, pd.DataFrame(summary))


class PoolPersona:
    """A persona read back from the pool file (the attributes of personas.Persona the self-chat uses)."""

    def __init__(self, record: dict):
        self.__dict__.update({k: record[k] for k in ("id", "category", "system_prompt", "probe", "judge",
                                                     "judge_args")})
