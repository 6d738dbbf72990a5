"""Figures of drift control: stability over rounds per method, and stability against MMLU."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from personadrift.analysis.stats import describe, detectable_change
from personadrift.figures.style import band, caption
from personadrift.interventions import METHODS

# a method without its own colour (Method.color) takes the next spare one
_SPARE = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
_GIVEN: dict[str, str] = {}


def method_color(method: str) -> str:
    """The registered method's own colour (interventions/<method>.py), else a spare one."""
    own = METHODS[method].color if method in METHODS else None
    if own:
        return own
    if method not in _GIVEN:
        _GIVEN[method] = _SPARE[len(_GIVEN) % len(_SPARE)]
    return _GIVEN[method]


def method_label(method: str) -> str:
    """The registered method's own label (interventions/<method>.py)."""
    return METHODS[method].label if method in METHODS else method


def _label(row) -> str:
    if row["method"] == "none":
        return method_label("none")
    return f"{method_label(row['method'])} ({METHODS[row['method']].short}={row['value']:g})"


def _method(t: pd.DataFrame) -> tuple[str, float]:
    """The interval method and confidence the table was made with (older tables: percentile, 0.95)."""
    method = t["interval_method"].iloc[0] if "interval_method" in t else "percentile"
    return method, float(t["confidence"].iloc[0]) if "confidence" in t else 0.95


def _verdict(r, col: str, up: str, down: str) -> str:
    if not r.get(f"{col}_significant", False):
        x = detectable_change(float(r.get(f"{col}_se", np.nan)), int(r["n_conversations"]),
                              int(r["n_comparisons"]), confidence=float(r["confidence"]))
        return "no significant difference" + (f"; shown with 80% power only from ±{x:.2f}" if np.isfinite(x) else "")
    return up if r[col] > 0 else down


def mitigation_sentence(r) -> str:
    """What one method at its chosen setting is measured to do, worded by what each claim measures."""
    def stat(col):
        return (f"{r[col]:+.2f} [{r[f'{col}_ci_low']:+.2f}, {r[f'{col}_ci_high']:+.2f}], "
                f"Holm p = {r[f'{col}_p_holm']:.3f}")

    text = (f"{_label(r)}: level over the dialog {stat('stability_diff')} "
            f"({_verdict(r, 'stability_diff', 'raises the level', 'lowers the level')})")
    if "drift_diff" in r and pd.notna(r["drift_diff"]):
        text += (f"; change over the dialog {stat('drift_diff')} "
                 f"({_verdict(r, 'drift_diff', 'reduces the decline', 'steepens the decline')})")
    return text + "."


def _stopped_clause(shown: pd.DataFrame) -> str:
    """How many conversations the context policy stopped early, per compared setting (in it or in
    the baseline: a paired claim uses the rounds both reached)."""
    if "n_stopped" not in shown:
        return ""
    rows = shown[shown["method"] != "none"]
    if not int(rows["n_stopped"].sum()):
        return "none stopped early"
    return "stopped early, in the setting or the baseline: " + ", ".join(
        f"{_label(r)} {int(r['n_stopped'])} ({int(r['n_stopped']) / int(r['n_conversations']):.0%})"
        for _, r in rows.iterrows())


def _errors_sentence(t: pd.DataFrame) -> str:
    """Judge errors of the compared settings and what dropping them instead changes."""
    if "judge_errors" not in t or int(t["judge_errors"].sum()) == 0:
        return "Every answer could be judged."
    text = f"{int(t['judge_errors'].sum())} agent answers could not be judged; they are scored 0."
    flips = []
    for col in ("stability_diff", "drift_diff"):
        alt = f"{col}_significant_if_dropped"
        if alt in t:
            d = t[(t["method"] != "none") & (t[f"{col}_significant"].astype(bool) != t[alt].astype(bool))]
            flips += [f"{_label(r)} ({'level' if col == 'stability_diff' else 'change'})" for _, r in d.iterrows()]
    return text + (" Dropped instead, the verdict changes for: " + ", ".join(flips) + "." if flips
                   else " Dropped instead, no claim changes its verdict.")


def mitigation_over_rounds(by_round_csv: str, tradeoff_csv: str):
    rounds = pd.read_csv(by_round_csv)
    trade = pd.read_csv(tradeoff_csv)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    shown = trade[trade["chosen"]]
    for _, row in shown.iterrows():
        d = rounds[rounds["setting"] == row["setting"]].sort_values("round")
        band(ax, d["round"], d["mean"], d["ci_low"], d["ci_high"], method_color(row["method"]), _label(row))
    ax.set_xlabel("round")
    ax.set_ylabel("stability (agent persona kept)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted(rounds["round"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    how = describe(*_method(trade))
    claims = [mitigation_sentence(r) for _, r in shown.iterrows() if r["method"] != "none"]
    caption(fig, "Stability per round for no intervention and each method at its chosen setting, on the same "
                 f"conversations (same seeds and persona pairs; n = {int(shown['n_conversations'].max())}"
                 + (f", {stopped}" if (stopped := _stopped_clause(shown)) else "") + "); bands: "
                 f"{how}. Two claims per method, each a paired difference from no intervention with its {how}: "
                 "the level over the dialog (mean over rounds 1 and later; higher: the method raises the level) "
                 "and the change over the dialog (fitted least-squares change from round 1 to the last; less "
                 "negative: the method reduces the decline). The methods also act on the probes, so a higher level "
                 "alone does not show less drift. p-values Holm-adjusted over all "
                 f"{int(trade['n_comparisons'].max())} claims of the settings compared. "
                 + (" ".join(claims) if claims else "No method configured.") + " " + _errors_sentence(trade),
            width=110)
    return fig


def tradeoff_stability_mmlu(tradeoff_csv: str):
    t = pd.read_csv(tradeoff_csv)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families = t.groupby("method")["family"].unique()  # a method in two families: both named, marked apart
    for family, d in t[t["method"] != "none"].groupby("family", sort=False):
        d = d.sort_values("value")
        m = d["method"].iloc[0]
        nth = list(families[m]).index(family)
        label = method_label(m) + (f" ({family})" if len(families[m]) > 1 else "")
        ax.errorbar(d["mmlu_accuracy"], d["stability"],
                    xerr=[d["mmlu_accuracy"] - d["mmlu_ci_low"], d["mmlu_ci_high"] - d["mmlu_accuracy"]],
                    yerr=[d["stability"] - d["stability_ci_low"], d["stability_ci_high"] - d["stability"]],
                    fmt="-" + "o^vD"[nth % 4], color=method_color(m), ms=4, lw=1, capsize=2, label=label)
        for _, r in d.iterrows():
            ax.annotate(f"{r['value']:g}", (r["mmlu_accuracy"], r["stability"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    b = t[t["method"] == "none"].iloc[0]
    ax.errorbar([b["mmlu_accuracy"]], [b["stability"]],
                xerr=[[b["mmlu_accuracy"] - b["mmlu_ci_low"]], [b["mmlu_ci_high"] - b["mmlu_accuracy"]]],
                yerr=[[b["stability"] - b["stability_ci_low"]], [b["stability_ci_high"] - b["stability"]]],
                fmt="s", color="k", ms=6, capsize=2, label="no intervention")
    ax.axhline(b["stability"], color="k", lw=0.5, ls=":")
    ax.axvline(b["mmlu_accuracy"], color="k", lw=0.5, ls=":")
    ax.axvline(0.25, color="#999999", lw=0.8, ls="--", label="chance (0.25)")
    ax.set_xlabel(f"MMLU accuracy ({b.get('mmlu_form', 'letter')} form, zero-shot, n = {int(b['mmlu_n'])} "
                  "questions, persona prompt in place)")
    ax.set_ylabel("stability, mean over rounds")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    method, conf = _method(t)
    form = t["mmlu_form"].iloc[0] if "mmlu_form" in t else "letter"
    notes = [f"MMLU {t['mmlu_form_reason'].iloc[0]}." if "mmlu_form_reason" in t else f"MMLU {form} form."]
    if (t["mmlu_ci_low"] <= 0.25).all():
        top = t["mmlu_top_answer_share"].max() if "mmlu_top_answer_share" in t else t["mmlu_top_letter_share"].max()
        notes.append(f"Every setting's MMLU accuracy is within its CI of chance (0.25); the model picks one answer for "
                     f"{top:.0%} of questions at most, so capability loss cannot be measured with this model.")
    sig = t[(t["method"] != "none") & t.get("mmlu_diff_significant", False)]
    if len(sig):
        notes.append("MMLU differs from no intervention (Holm-adjusted over the settings) for: "
                     + ", ".join(_label(r) for _, r in sig.iterrows()) + ".")
    for m in t["method"].unique():
        if m in METHODS and METHODS[m].single_turn_as_baseline:
            notes.append(f"{m.capitalize()} cannot act on a single-turn MMLU prompt, so its "
                         "accuracy equals no intervention.")
    caption(fig, "Stability gained against capability kept: each curve is one method across its grid (labels: grid "
                 f"values), with {conf:.0%} intervals on both axes (stability, mean over rounds 1 and later: "
                 f"{describe(method, conf)}; MMLU: Wilson). " + " ".join(notes), width=100)
    return fig
