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


def drift_sentence(change: pd.DataFrame, setting: str = "none", kind: str = "agent") -> str:
    """One honest sentence on whether this data shows drift (Holm-adjusted over the table's claims)."""
    row = change[(change["setting"] == setting) & (change["kind"] == kind)]
    if row.empty:
        return "Only one round: drift cannot be measured."
    r = row.iloc[0]
    ci = f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
    what = "stability" if kind == "agent" else "adoption"
    if setting == CONTROL:
        what += " in the control"
    p = ""
    if "p_holm" in r and np.isfinite(r.p_holm):
        p = f", Holm-adjusted p = {r.p_holm:.3f} over {int(r.n_comparisons)} claims"
    if r.significant:
        direction = "fell" if r.change < 0 else "rose"
        return (f"Mean {what} {direction} from {r.first_mean:.2f} (round {r.first_round}) to "
                f"{r.last_mean:.2f} (round {r.last_round}), paired change {r.change:+.2f} {ci}{p}.")
    return (f"No significant change in {what} was measured: round {r.first_round} {r.first_mean:.2f}, "
            f"round {r.last_round} {r.last_mean:.2f}, paired change {r.change:+.2f} {ci}{p} "
            f"(with this model and sample size the data cannot show drift).")


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
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
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
    kept = study["personas_kept"]
    method = study.get("method", "percentile")
    unit = study["bootstrap_unit"]
    sentences = [drift_sentence(change, "none", "agent"), drift_sentence(change, "none", "user")]
    if not ctl.empty:
        sentences.append(drift_sentence(change, CONTROL, "agent"))
    text = (
        f"n = {study['conversations']} conversations x {study['runs']} sample{'s' if study['runs'] != 1 else ''} "
        "per probe and round; "
        f"bands: {study['confidence']:.0%} {METHOD_NAME.get(method, method)} over {unit}s; changes: "
        f"the same interval on paired per-conversation differences, significant when the Holm-adjusted "
        f"p-value is below {1 - study['confidence']:.2g}. "
        + ("Round 0 is asked before any dialog with fresh seeds (not the calibration that selected the "
           "personas), so the change from round 0 is not regression to the mean. " if study.get("round_zero") else
           "This study has no round 0: the first point was measured after the first round. ")
        + " ".join(sentences)
        + (" Dashed: the control (the user bot has no persona), so drift from dialog length alone can be told "
           "apart from drift toward the user's persona." if not ctl.empty else "")
        + (f" Shaded rounds {', '.join(map(str, flagged))}: some prompts did not fit the context as is "
           f"(truncated or overflow)." if flagged else "")
        + f" Persona pool: {len(kept)} personas ({study['persona_rule']}); "
        f"{len(study['personas_dropped'])} dropped."
        + ("" if study["user_system_prompt"] else " Control: the user bot had no system prompt.")
        + (f" {study['judge_errors']} answers could not be judged (NaN, excluded)." if study["judge_errors"] else "")
    )
    caption(fig, text)
    return fig
