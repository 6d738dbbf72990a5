"""Figure: persona stability and adoption of the user's persona against round."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from personadrift.analysis.stats import METHOD_NAME
from personadrift.figures import figure
from personadrift.figures.style import KIND_COLOR, KIND_LABEL, band, caption

CONTROL = "control"  # the setting whose user bot has no persona (length-only drift)
WHAT = {"agent": "stability", "user": "adoption"}
CLAIM_NAME = {"shift": "round-0 shift", "drift": "decline over the dialog"}


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


def drift_sentence(change: pd.DataFrame, setting: str = "none", kind: str = "agent") -> str:
    """One honest sentence on whether this data shows a decline over the dialog's rounds (round 1
    to the last), with the round-0 shift beside it (Holm-adjusted over the table's claims)."""
    what = WHAT[kind] + (" in the control" if setting == CONTROL else "")
    d, s = _claim(change, setting, kind, "drift"), _claim(change, setting, kind, "shift")
    if d is None and s is None:
        return f"Too few rounds: no change in {what} can be measured."
    out = []
    if d is not None:
        if d.significant:
            verb = "fell" if d.change < 0 else "rose"
            out.append(f"Over the dialog, mean {what} {verb} from {d.first_mean:.2f} (round {d.first_round}) to "
                       f"{d.last_mean:.2f} (round {d.last_round}); fitted change {_stat(d)}.")
        else:
            out.append(f"No significant change in {what} over the dialog was measured (round {d.first_round} "
                       f"{d.first_mean:.2f}, round {d.last_round} {d.last_mean:.2f}; fitted change {_stat(d)}): "
                       f"with this model and sample size the data cannot show drift.")
    if s is not None:
        verdict = "significant" if s.significant else "not significant"
        out.append(f"Round-0 shift (round 0, before any dialog, to round {s.last_round}): {s.first_mean:.2f} to "
                   f"{s.last_mean:.2f}, {_stat(s)} ({verdict}).")
    return " ".join(out)


def control_sentence(change: pd.DataFrame, kind: str = "agent") -> str:
    """The difference in differences: the baseline's claims minus the control's, same seeds."""
    parts = []
    for claim in ("drift", "shift"):
        r = _claim(change, "none", kind, claim, versus=CONTROL)
        if r is not None:
            verdict = "significant" if r.significant else "not significant"
            parts.append(f"{CLAIM_NAME[claim]} {_stat(r)} ({verdict})")
    if not parts:
        return ""
    return (f"{WHAT[kind].capitalize()} against the control on the same conversation seeds (difference in "
            f"differences): " + "; ".join(parts) + ".")


def judge_error_sentence(change: pd.DataFrame, study: dict) -> str:
    """How many answers could not be judged, how they were treated, and what the other treatment changes."""
    n = int(study.get("judge_errors", 0))
    if not n:
        return "Every answer could be judged."
    treatment = study.get("judge_error_treatment", "scored_0")
    other = "dropped" if treatment == "scored_0" else "scored_0"
    said = {"scored_0": "scored 0", "dropped": "dropped"}
    text = f"{n} answers could not be judged (the judge raised); they are {said[treatment]}."
    col = f"significant_if_{other}"
    if col in change and "claim" in change:
        flips = change[change["significant"].astype(bool) != change[col].fillna(False).astype(bool)]
        moved = (change["change"] - change[f"change_if_{other}"]).abs().max()
        if flips.empty:
            text += (f" {said[other].capitalize()} instead, no claim changes its verdict (estimates move by at most "
                     f"{moved:.2f}).")
        else:
            names = [f"{CLAIM_NAME[r.claim]} of {WHAT[r.kind]} ({r.setting}"
                     + (f" vs {r.versus}" if isinstance(r.versus, str) and r.versus else "") + ")"
                     for r in flips.itertuples()]
            text += f" {said[other].capitalize()} instead, the verdict changes for: " + "; ".join(names) + "."
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


@figure("drift_over_rounds")
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
    kept = study["personas_kept"]
    method = study.get("method", "percentile")
    unit = study["bootstrap_unit"]
    sentences = [drift_sentence(change, "none", "agent"), drift_sentence(change, "none", "user")]
    if not ctl.empty:
        sentences += [drift_sentence(change, CONTROL, "agent"), control_sentence(change, "agent")]
    n_claims = int(change["n_comparisons"].max()) if "n_comparisons" in change and len(change) else 0
    text = (
        f"n = {study['conversations']} conversations x {study['runs']} sample{'s' if study['runs'] != 1 else ''} "
        "per probe and round; "
        f"bands: {study['confidence']:.0%} {METHOD_NAME.get(method, method)} over {unit}s. Claims, each on "
        "per-conversation values with the same interval: the decline over the dialog is the fitted "
        "(least-squares) change from round 1 to the last round; the round-0 shift is round 1 minus round 0"
        + ("; against the control, the per-conversation difference of the two settings on the same seeds"
           if not ctl.empty else "")
        + f". Significant when the Holm-adjusted p-value (over all {n_claims} claims) is below "
        f"{1 - study['confidence']:.2g}. "
        + ("Round 0 is asked before any dialog with fresh seeds (not the calibration that selected the "
           "personas), so the change from round 0 is not regression to the mean; it measures the dialog's "
           "arrival in context, not the decline over the dialog. " if study.get("round_zero") else
           "This study has no round 0: the first point was measured after the first round. ")
        + " ".join(s for s in sentences if s)
        + (" Dashed: the control (the user bot has no persona), so drift from dialog length alone can be told "
           "apart from drift toward the user's persona." if not ctl.empty else "")
        + (f" Shaded rounds {', '.join(map(str, flagged))}: some prompts did not fit the context as is "
           f"(truncated or overflow)." if flagged else "")
        + f" Persona pool: {len(kept)} personas ({study['persona_rule']}); "
        f"{len(study['personas_dropped'])} dropped."
        + ("" if study["user_system_prompt"] else " Control: the user bot had no system prompt.")
        + " " + judge_error_sentence(change, study)
    )
    caption(fig, text, width=150)
    return fig
