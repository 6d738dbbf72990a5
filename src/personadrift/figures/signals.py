"""The judge-free drift signals beside the judge's curve: one panel per measure, per round."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from personadrift.figures.style import KIND_COLOR, KIND_LABEL, band, caption

PANELS = (("judge", "judge score (0-1)", "the judges"),
          ("kl", "mean per-token KL(p_dialog || p_fresh), nats", "KL from the fresh context"),
          ("projection", "mean projection on the persona's vector", "persona-vector projection"))


def _drift_words(change: pd.DataFrame, signal: str, kind: str) -> str:
    row = change[(change["setting"] == "none") & (change["signal"] == signal) & (change["kind"] == kind)
                 & (change["claim"] == "drift")]
    if row.empty:
        return f"{signal} ({kind}): no drift claim (fewer than two dialog rounds)"
    r = row.iloc[0]
    verdict = "significant" if bool(r["significant"]) else "not significant"
    span = f"{int(r['first_round'])}-{int(r['last_round'])}"
    return (f"{signal} ({kind}) changes by {r['change']:+.3g} over rounds {span} "
            f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}], Holm p {r['p_holm']:.2g}, {verdict}")


def drift_signals(judge_by_round_csv: str, signals_by_round_csv: str, signals_change_csv: str):
    judge = pd.read_csv(judge_by_round_csv)
    sig = pd.read_csv(signals_by_round_csv)
    change = pd.read_csv(signals_change_csv)
    judge = judge[judge["setting"] == "none"].assign(signal="judge")
    sig = sig[sig["setting"] == "none"]
    both = pd.concat([judge, sig], ignore_index=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"wspace": 0.3})
    for ax, (signal, ylabel, title) in zip(axes, PANELS):
        d = both[both["signal"] == signal]
        for kind in ("agent", "user"):
            k = d[d["kind"] == kind].sort_values("round")
            if not k.empty:
                band(ax, k["round"], k["mean"], k["ci_low"], k["ci_high"], KIND_COLOR[kind], KIND_LABEL[kind])
        if d.empty:
            ax.text(0.5, 0.5, "no persona vectors" if signal == "projection" else "no data",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
        rounds = sorted(d["round"].unique()) if not d.empty else []
        ax.set_xticks(rounds)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    conf = float(sig["confidence"].iloc[0]) if len(sig) else float("nan")
    words = [_drift_words(change, s, k) for s in ("kl", "projection") for k in ("agent", "user")
             if not change[(change["signal"] == s)].empty]
    text = (f"Baseline setting: the judge's mean score per round beside the two judge-free signals of the same "
            f"probe answers (teacher-forced; {conf:.0%} intervals over conversations). KL is zero at round 0 by "
            f"design (the fresh context is round 0's). " + "; ".join(words) + ".")
    caption(fig, text, width=160)
    if np.isnan(conf):
        axes[1].set_title("KL from the fresh context (no answers)", fontsize=9)
    return fig
