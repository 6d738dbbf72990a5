"""The stability-against-capability table: one row per setting, with paired comparisons.

Stability is the agent probe's score averaged over dialog rounds (>= 1) per conversation;
capability is MMLU accuracy in one of two forms (contract 4 of the MMLU table):

* ``letter``: the answer letter's next-token probability (columns ``letter_correct`` ...;
  older tables have ``correct``/``p_correct``/``predicted``, read as this form);
* ``cloze``: the length-normalised log-likelihood of each answer's text (``cloze_*``).

A small model may answer one letter to everything; a form is only informative when the
baseline's accuracy is above chance (0.25) by its Wilson interval. :func:`choose_form` picks that
form (the letter form if both are), and every row says which form its capability columns use.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from personadrift.analysis.stats import holm, mean_interval

CHANCE = 0.25
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


def tradeoff_rows(settings: list[dict], chosen: set, scores: pd.DataFrame, mmlu: pd.DataFrame, *,
                  method: str = "t", confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                  baseline: str = "none") -> pd.DataFrame:
    """One row per setting (dicts with name, family, method, value): stability and MMLU with
    intervals, paired differences from the baseline with Holm-adjusted p-values (stability and
    MMLU each adjusted across the non-baseline settings)."""
    kw = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    form, reason = choose_form(mmlu, confidence, baseline)
    mm_all = mmlu_form(mmlu, form)
    agent = scores[(scores["kind"] == "agent") & (scores["round"] >= 1) & np.isfinite(scores["score"])]
    per_conv = agent.groupby(["setting", "conversation"])["score"].mean().unstack("setting")
    base_mm = mm_all[mm_all["setting"] == baseline].set_index("index")["correct"].astype(float)
    rows = []
    for s in settings:
        name = s["name"]
        stab = per_conv[name].dropna() if name in per_conv else pd.Series(dtype=float)
        st = mean_interval(stab, **kw)
        if name == baseline or baseline not in per_conv or name not in per_conv:
            sd = None
        else:
            sd = mean_interval((per_conv[name] - per_conv[baseline]).dropna(), **kw)
        mm = mm_all[mm_all["setting"] == name].set_index("index")
        acc = wilson(mm["correct"], confidence)
        md = None if name == baseline else mean_interval((mm["correct"].astype(float) - base_mm).dropna(), **kw)
        pc = mean_interval(mm["p_correct"], **kw) if "p_correct" in mm else None
        top = float(mm["predicted"].value_counts(normalize=True).max()) if "predicted" in mm and len(mm) else np.nan
        rows.append({
            "setting": name, "family": s["family"], "method": s["method"], "value": s["value"],
            "chosen": name in chosen, "stability": st.mean, "stability_ci_low": st.low, "stability_ci_high": st.high,
            "stability_diff": sd.mean if sd else (0.0 if name == baseline else np.nan),
            "stability_diff_ci_low": sd.low if sd else np.nan, "stability_diff_ci_high": sd.high if sd else np.nan,
            "stability_diff_p": sd.p_value if sd else np.nan,
            "mmlu_form": form, "mmlu_form_reason": reason,
            "mmlu_accuracy": acc["accuracy"], "mmlu_ci_low": acc["ci_low"], "mmlu_ci_high": acc["ci_high"],
            "mmlu_diff": md.mean if md else 0.0, "mmlu_diff_ci_low": md.low if md else np.nan,
            "mmlu_diff_ci_high": md.high if md else np.nan, "mmlu_diff_p": md.p_value if md else np.nan,
            "mmlu_p_correct": pc.mean if pc else np.nan, "mmlu_p_correct_ci_low": pc.low if pc else np.nan,
            "mmlu_p_correct_ci_high": pc.high if pc else np.nan, "mmlu_n": acc["n"],
            "mmlu_top_answer_share": top, "n_conversations": int(stab.size),
            "interval_method": method, "confidence": confidence,
        })
    df = pd.DataFrame(rows)
    alpha = 1 - confidence
    for col in ("stability_diff", "mmlu_diff"):
        df[f"{col}_p_holm"] = holm(df[f"{col}_p"])
        df[f"{col}_significant"] = (df[f"{col}_p_holm"] < alpha).fillna(False).astype(bool)
    df["n_comparisons"] = int(np.isfinite(df["stability_diff_p"]).sum())
    return df
