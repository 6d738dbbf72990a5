"""The stability-against-capability table: one row per setting, with paired comparisons.

Stability is the agent probe's score averaged over dialog rounds (>= 1) per conversation (the
level over the dialog); its change over the dialog is the fitted change from round 1 to the last
(``analysis.stats``: claim ``drift``). Each is compared with the baseline on the same
conversations, and the two claims of every setting are Holm-adjusted together. Capability is MMLU
accuracy in one of two forms (the MMLU table of ``evaluate``, capability/mmlu/scoring.py):

* ``letter``: the answer letter's next-token probability (columns ``letter_correct`` ...;
  older tables have ``correct``/``p_correct``/``predicted``, read as this form);
* ``cloze``: the length-normalised log-likelihood of each answer's text (``cloze_*``).

A small model may answer one letter to everything; a form is only informative when the
baseline's accuracy is above chance (0.25) by its Wilson interval. :func:`choose_form` picks that
form (the letter form if both are), and every row says which form its capability columns use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from personadrift.analysis.stats import (
    JUDGE_ERROR_TREATMENT,
    TESTED,
    TREATMENT_SUFFIX,
    holm,
    mean_interval,
    other_treatment,
    vs_baseline,
)

CHANCE = 0.25
MMLU_COPIED = "fixed by design: zero (this setting's MMLU table is the baseline's)"
FORMS = ("letter", "cloze")


def mmlu_form(mmlu: pd.DataFrame, form: str) -> pd.DataFrame | None:
    """The table's columns of one form renamed to ``correct``/``p_correct``/``predicted``; None if absent."""
    cols = {c: c[len(form) + 1:] for c in mmlu.columns if c.startswith(f"{form}_")}
    if f"{form}_correct" not in mmlu and form == "letter" and "correct" in mmlu:
        cols = {c: c for c in ("correct", "p_correct", "predicted") if c in mmlu}
    if "correct" not in cols.values():
        return None
    return mmlu[["setting", "index", *cols]].rename(columns=cols)


def wilson(correct, confidence: float) -> dict:
    from scipy.stats import binomtest

    c = np.asarray(correct, dtype=bool)
    if len(c) == 0:
        return {"accuracy": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0}
    ci = binomtest(int(c.sum()), len(c)).proportion_ci(confidence_level=confidence, method="wilson")
    return {"accuracy": float(c.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high), "n": len(c)}


def choose_form(mmlu: pd.DataFrame, confidence: float, baseline: str = "none") -> tuple[str, str]:
    """(form, reason): the form whose baseline accuracy is above chance by its CI."""
    found = {}
    for form in FORMS:
        t = mmlu_form(mmlu, form)
        if t is not None:
            found[form] = wilson(t.loc[t["setting"] == baseline, "correct"], confidence)
    if not found:
        raise ValueError("MMLU table: no letter_correct, cloze_correct or correct column")
    above = [f for f, a in found.items() if a["ci_low"] > CHANCE]
    if above:
        f = above[0]
        return f, (f"{f} form: the baseline's accuracy {found[f]['accuracy']:.2f} "
                   f"[{found[f]['ci_low']:.2f}, {found[f]['ci_high']:.2f}] is above chance ({CHANCE})")
    f = max(found, key=lambda k: found[k]["accuracy"])
    listed = "; ".join(f"{k} {a['accuracy']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]" for k, a in found.items())
    return f, (f"{f} form, but no form's baseline accuracy is above chance ({CHANCE}) by its CI ({listed}): "
               f"capability loss cannot be measured with this model")


def _flag(v) -> bool:
    return bool(v) if isinstance(v, (bool, np.bool_)) else False


def tradeoff_rows(settings: list[dict], chosen: set, scores: pd.DataFrame, mmlu: pd.DataFrame, *,
                  method: str = "t", confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                  baseline: str = "none") -> pd.DataFrame:
    """One row per setting (dicts with name, family, method, value): stability's level and change
    over the dialog and MMLU, with intervals, and paired differences from the baseline.

    ``stability_diff*`` (level) and ``drift_diff*`` (change over the dialog) are one Holm family
    across the non-baseline settings (``n_comparisons`` counts both), each with its naive ``_se``
    and persona-clustered ``_se_clustered`` (``analysis.stats.clustered_se``); MMLU is its own
    family. A setting whose MMLU table is the baseline's copied under its name (``mmlu_copied`` in
    its dict: it leaves single-turn prompts as the baseline runs them) has an MMLU difference of 0
    by design: reported, not tested (``mmlu_diff_family`` says so, no p-value).
    Judge errors are scored 0 (``analysis.stats.JUDGE_ERROR_TREATMENT``); ``judge_errors`` counts
    the setting's agent answers in rounds >= 1 whose judge raised, and the ``*_if_dropped``
    columns give both claims with those answers dropped."""
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    form, reason = choose_form(mmlu, confidence, baseline)
    mm_all = mmlu_form(mmlu, form)
    assert mm_all is not None, form  # the form was chosen among the table's
    names = [s["name"] for s in settings]
    claims = vs_baseline(scores[scores["setting"].isin(names) & (scores["round"] >= 1)], baseline=baseline, **kw)
    claims = claims.set_index(["setting", "claim"]) if not claims.empty else claims
    alt = TREATMENT_SUFFIX[other_treatment(JUDGE_ERROR_TREATMENT)]
    base_mm = mm_all[mm_all["setting"] == baseline].set_index("index")["correct"].astype(float)
    rows = []
    for s in settings:
        name = s["name"]
        row = {"setting": name, "family": s["family"], "method": s["method"], "value": s["value"],
               "chosen": name in chosen}
        for claim, col, own in (("level", "stability_diff", "stability"), ("drift", "drift_diff", "drift")):
            c = claims.loc[(name, claim)] if len(claims) and (name, claim) in claims.index else None
            get = (lambda k, c=c: c[k]) if c is not None else (lambda k: np.nan)  # noqa: E731
            row.update({own: get("mean"), f"{own}_ci_low": get("mean_ci_low"), f"{own}_ci_high": get("mean_ci_high"),
                        col: get("diff_vs_baseline"), f"{col}_ci_low": get("ci_low"),
                        f"{col}_ci_high": get("ci_high"), f"{col}_p": get("p_value"),
                        f"{col}_p_holm": get("p_holm"), f"{col}_significant": _flag(get("significant")),
                        f"{col}_se": get("se"), f"{col}_se_clustered": get("se_clustered"),
                        f"{col}_clustered_by": get("clustered_by") if c is not None else "",
                        f"{col}_if_{alt}": get(f"diff_vs_baseline_if_{alt}"),
                        f"{col}_p_holm_if_{alt}": get(f"p_holm_if_{alt}"),
                        f"{col}_significant_if_{alt}": _flag(get(f"significant_if_{alt}"))})
            if name == baseline:
                row[f"{col}_ci_low"] = row[f"{col}_ci_high"] = np.nan
        c = claims.loc[(name, "level")] if len(claims) and (name, "level") in claims.index else None
        row["judge_errors"] = int(c["judge_errors"]) if c is not None else 0
        row["n_conversations"] = int(c["n_conversations"]) if c is not None else 0
        row["n_stopped"] = int(c["n_stopped"]) if c is not None else 0
        mm = mm_all[mm_all["setting"] == name].set_index("index")
        acc = wilson(mm["correct"], confidence)
        copied = bool(s.get("mmlu_copied")) and name != baseline
        d = (mm["correct"].astype(float) - base_mm).dropna()
        md = None if name == baseline else mean_interval(d, **kw)
        pc = mean_interval(mm["p_correct"], **kw) if "p_correct" in mm else None
        top = float(mm["predicted"].value_counts(normalize=True).max()) if "predicted" in mm and len(mm) else np.nan
        row.update({
            "mmlu_form": form, "mmlu_form_reason": reason,
            "mmlu_accuracy": acc["accuracy"], "mmlu_ci_low": acc["ci_low"], "mmlu_ci_high": acc["ci_high"],
            "mmlu_diff": md.mean if md else 0.0, "mmlu_diff_ci_low": md.low if md else np.nan,
            "mmlu_diff_ci_high": md.high if md else np.nan,
            "mmlu_diff_p": md.p_value if md and not copied else np.nan,
            "mmlu_diff_se": float(d.std(ddof=1) / np.sqrt(len(d))) if md and len(d) > 1 else np.nan,
            "mmlu_diff_family": MMLU_COPIED if copied else TESTED if md else "",
            "mmlu_p_correct": pc.mean if pc else np.nan, "mmlu_p_correct_ci_low": pc.low if pc else np.nan,
            "mmlu_p_correct_ci_high": pc.high if pc else np.nan, "mmlu_n": acc["n"],
            "mmlu_top_answer_share": top, "judge_error_treatment": TREATMENT_SUFFIX[JUDGE_ERROR_TREATMENT],
            "interval_method": method, "confidence": confidence,
        })
        rows.append(row)
    df = pd.DataFrame(rows)
    alpha = 1 - confidence
    df["mmlu_diff_p_holm"] = holm(df["mmlu_diff_p"])
    df["mmlu_diff_significant"] = (df["mmlu_diff_p_holm"] < alpha).fillna(False).astype(bool)
    df["n_comparisons"] = int(np.isfinite(df["stability_diff_p"]).sum() + np.isfinite(df["drift_diff_p"]).sum())
    df["mmlu_n_comparisons"] = int(np.isfinite(df["mmlu_diff_p"]).sum())
    return df
