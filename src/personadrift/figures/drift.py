"""Figure: persona stability and adoption of the user's persona against round."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from personadrift.analysis.stats import METHOD_NAME, detectable_change
from personadrift.figures.style import KIND_COLOR, KIND_LABEL, band, caption

CONTROL = "control"  # the setting whose user bot has no persona (length-only drift)
WHAT = {"agent": "stability", "user": "adoption"}


def _claim(change: pd.DataFrame, setting: str, kind: str, claim: str, versus: str = ""):
    if "claim" not in change:
        return None
    v = (change["versus"].astype(object).fillna("").astype(str) if "versus" in change
         else pd.Series("", index=change.index))
    row = change[(change["setting"] == setting) & (change["kind"] == kind) & (change["claim"] == claim) & (v == versus)]
    return None if row.empty else row.iloc[0]


def _stat(r) -> str:
    p = f", Holm p = {r.p_holm:.3f}" if "p_holm" in r and np.isfinite(r.p_holm) else ""
    return f"{r.change:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]{p}"


def fitted_ends(by_round: pd.DataFrame, d) -> tuple[float, float]:
    """The fitted line of drift claim ``d`` at its first and last round: the line with the claim's
    change (the mean of the per-conversation fitted changes) through the mean of the per-round
    means over the claim's rounds, so "from a to b" is the same estimate as the claim."""
    rows = by_round[(by_round["setting"] == d.setting) & (by_round["kind"] == d.kind)
                    & by_round["round"].between(d.first_round, d.last_round)]
    span = float(d.last_round - d.first_round)
    centre = float(rows["round"].mean()) - d.first_round
    start = float(rows["mean"].mean()) - d.change * centre / span
    return start, start + d.change


def detectable_clause(r) -> str:
    """For a claim not shown: the smallest change the study would have shown with 80% power."""
    comparisons = int(r.n_comparisons) if r.family == "holm" and np.isfinite(r.n_comparisons) else 1
    x = detectable_change(float(r.se), int(r.n_conversations), comparisons, confidence=float(r.confidence))
    return f"; a change of {x:.2f} or more either way would have been shown with 80% power" if np.isfinite(x) else ""


def stopped_clause(by_round: pd.DataFrame, setting: str = "none", kind: str = "agent") -> str:
    """How many of a setting's conversations the context policy stopped before its last round."""
    rows = by_round[(by_round["setting"] == setting) & (by_round["kind"] == kind)]
    if rows.empty or not {"n_stopped", "n_running"} <= set(rows.columns):
        return ""
    stopped, total = int(rows["n_stopped"].max()), int((rows["n_running"] + rows["n_stopped"]).max())
    if not stopped:
        return "none stopped early"
    return (f"{stopped} of {total} conversations, {stopped / total:.0%}, stopped early with their context full: a "
            "round's mean is over those still running")


def verdict_sentence(by_round: pd.DataFrame, change: pd.DataFrame, setting: str = "none",
                     kind: str = "agent") -> str:
    """The one verdict the drift figure carries: did stability change over the dialog's rounds."""
    d = _claim(change, setting, kind, "drift")
    what = WHAT[kind].capitalize()
    if d is None:
        return f"Too few dialog rounds: no change in {WHAT[kind]} over the dialog can be measured."
    a, b = fitted_ends(by_round, d)
    ends = f"from {a:.2f} (round {d.first_round}) to {b:.2f} (round {d.last_round}) on the fitted line"
    if d.significant:
        verb = "fell" if d.change < 0 else "rose"
        return f"{what} {verb} significantly over the dialog, {ends}: change {_stat(d)}."
    return f"{what} did not change significantly over the dialog: {ends}, change {_stat(d)}{detectable_clause(d)}."


def judge_error_note(change: pd.DataFrame, study: dict) -> str:
    """A clause on answers the judge could not score: how many, their treatment, how many verdicts
    the other treatment changes ("" when every answer was judged)."""
    n = int(study.get("judge_errors", 0))
    if not n:
        return ""
    said = {"scored_0": "scored 0", "dropped": "dropped"}
    treatment = study.get("judge_error_treatment", "scored_0")
    other = "dropped" if treatment == "scored_0" else "scored_0"
    text = f"{n} answers could not be judged and are {said[treatment]}"
    col = f"significant_if_{other}"
    if col in change:
        flips = int((change["significant"].astype(bool) != change[col].fillna(False).astype(bool)).sum())
        changes = "1 claim changes" if flips == 1 else f"{flips or 'no'} claims change"
        text += f" ({said[other]} instead, {changes} verdict)"
    return text


def _forest(ax, change: pd.DataFrame) -> None:
    """The stability claims as estimates with intervals: shift and decline, baseline, control, difference."""
    rows = []
    for setting, versus, label in (("none", "", "none"), (CONTROL, "", "control"),
                                   ("none", CONTROL, "none - control")):
        for claim in ("shift", "drift"):
            r = _claim(change, setting, "agent", claim, versus)
            if r is not None:
                span = "round 0\u21921" if claim == "shift" else f"rounds 1\u2192{int(r.last_round)}"
                rows.append((f"{label}\n{span}", r))
    for i, (_label, r) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.errorbar([r.change], [y], xerr=[[r.change - r.ci_low], [r.ci_high - r.change]], fmt="o",
                    color=KIND_COLOR["agent"], mfc=KIND_COLOR["agent"] if r.significant else "white", capsize=2)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label for label, _ in reversed(rows)], fontsize=7)
    ax.set_xlabel("change in stability", fontsize=8)
    ax.set_title("claims (filled: significant)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3, axis="x")


def _context_rounds(df: pd.DataFrame) -> list[int]:
    if "context_not_ok" not in df:
        return []
    return sorted(int(r) for r in df.loc[df["context_not_ok"] > 0, "round"].unique())


def drift_over_rounds(by_round_csv: str, change_csv: str, study_json: str):
    allr = pd.read_csv(by_round_csv)
    change = pd.read_csv(change_csv)
    study = json.loads(open(study_json).read())
    df = allr[allr["setting"] == "none"]
    ctl = allr[allr["setting"] == CONTROL]
    fig, (ax, fax) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1.4], "wspace": 0.35})
    for kind in ("agent", "user"):
        d = df[df["kind"] == kind].sort_values("round")
        if not d.empty:
            band(ax, d["round"], d["mean"], d["ci_low"], d["ci_high"], KIND_COLOR[kind], KIND_LABEL[kind])
        c = ctl[ctl["kind"] == kind].sort_values("round")
        if not c.empty:
            band(ax, c["round"], c["mean"], c["ci_low"], c["ci_high"], KIND_COLOR[kind],
                 KIND_LABEL[kind].split(" (")[0] + ", control: user bot without persona", ls="--", mfc="white")
    flagged = _context_rounds(allr)
    for r in flagged:
        ax.axvspan(r - 0.4, r + 0.4, color="#999999", alpha=0.15, lw=0)
    rounds = sorted(allr["round"].unique())
    ax.set_xlabel("round (0: probe right after the system prompt; then one user message + one agent reply)"
                  if 0 in rounds else "round (one user message + one agent reply)", fontsize=8)
    ax.set_ylabel("judge score (0-1)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"Persona drift in self-chat: {study['model']}")
    _forest(fax, change)
    caption(fig, drift_caption(allr, change, study, flagged), width=150)
    return fig


def drift_caption(by_round: pd.DataFrame, change: pd.DataFrame, study: dict, flagged: list[int]) -> str:
    """The figure's own caption, three sentences: what is plotted, the verdict on stability over
    the dialog, where every other claim is (the report's caption defines them)."""
    method = study.get("method", "percentile")
    control = (by_round["setting"] == CONTROL).any()
    stopped = stopped_clause(by_round)
    plotted = (f"Mean judge score per round, n = {study['conversations']} conversations x {study['runs']} "
               f"sample{'s' if study['runs'] != 1 else ''} per probe" + (f" ({stopped})" if stopped else "")
               + f"; bands: {study['confidence']:.0%} "
               f"{METHOD_NAME.get(method, method)} over {study['bootstrap_unit']}s"
               + ("; dashed: the control, whose user bot has no persona" if control else "")
               + (f"; shaded rounds {', '.join(map(str, flagged))}: some prompts did not fit the context"
                  if flagged else "") + ".")
    errors = judge_error_note(change, study)
    rest = ("Every claim (round-0 shift, adoption, against the control), Holm-adjusted together, is in the right "
            "panel and in tables/none/change.csv" + (f"; {errors}" if errors else "") + ".")
    return " ".join((plotted, verdict_sentence(by_round, change, "none", "agent"), rest))
