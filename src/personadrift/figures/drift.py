"""Figure: persona stability and adoption of the user's persona against round."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd

from personadrift.figures import figure
from personadrift.figures.style import KIND_COLOR, KIND_LABEL, band, caption


def drift_sentence(change: pd.DataFrame, setting: str = "none", kind: str = "agent") -> str:
    """One honest sentence on whether this data shows drift."""
    row = change[(change["setting"] == setting) & (change["kind"] == kind)]
    if row.empty:
        return "Only one round: drift cannot be measured."
    r = row.iloc[0]
    ci = f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
    what = "stability" if kind == "agent" else "adoption"
    if r.significant:
        direction = "fell" if r.change < 0 else "rose"
        return (f"Mean {what} {direction} from {r.first_mean:.2f} (round {r.first_round}) to "
                f"{r.last_mean:.2f} (round {r.last_round}), paired change {r.change:+.2f} {ci}.")
    return (f"No significant change in {what} was measured: round {r.first_round} {r.first_mean:.2f}, "
            f"round {r.last_round} {r.last_mean:.2f}, paired change {r.change:+.2f} {ci} includes 0 "
            f"(with this model and sample size the data cannot show drift).")


@figure("drift_over_rounds")
def drift_over_rounds(by_round_csv: str, change_csv: str, study_json: str):
    df = pd.read_csv(by_round_csv)
    change = pd.read_csv(change_csv)
    study = json.loads(open(study_json).read())
    df = df[df["setting"] == "none"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for kind in ("agent", "user"):
        d = df[df["kind"] == kind].sort_values("round")
        if d.empty:
            continue
        band(ax, d["round"], d["mean"], d["ci_low"], d["ci_high"], KIND_COLOR[kind], KIND_LABEL[kind])
    ax.set_xlabel("round (one user message + one agent reply)")
    ax.set_ylabel("judge score (0-1)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted(df["round"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Persona drift in self-chat: {study['model']}")
    kept = study["personas_kept"]
    text = (
        f"n = {study['conversations']} conversations x {study['runs']} samples per probe and round; "
        f"bands: {study['confidence']:.0%} bootstrap CI over {study['bootstrap_unit']}s. "
        f"{drift_sentence(change, 'none', 'agent')} {drift_sentence(change, 'none', 'user')} "
        f"Persona pool: {len(kept)} personas ({study['persona_rule']}); "
        f"{len(study['personas_dropped'])} dropped."
        + ("" if study["user_system_prompt"] else " Control: the user bot had no system prompt.")
        + (f" {study['judge_errors']} answers could not be judged (NaN, excluded)." if study["judge_errors"] else "")
    )
    caption(fig, text)
    return fig
