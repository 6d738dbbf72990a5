"""Figures of attention decay: the measured decay, its link to stability, and the dilution model."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from personadrift.figures import figure
from personadrift.figures.style import caption


def _mean_ci(values: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    m = v.mean()
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return m, m - z * se, m + z * se


def _boundaries(d: pd.DataFrame) -> list[tuple[int, str]]:
    """Positions where a new message starts in one conversation, with the speaker."""
    d = d.sort_values("position")
    starts = d[d["entry"].diff().fillna(1) != 0]
    return list(zip(starts["position"], starts["speaker"]))


@figure("attention_decay")
def attention_decay(per_token_csv: str, per_layer_round_csv: str):
    tok = pd.read_csv(per_token_csv)
    lay = pd.read_csv(per_layer_round_csv)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    g = tok.groupby("position")["prompt_share"]
    stats = np.array([_mean_ci(v.to_numpy()) for _, v in g])
    pos = np.array(list(g.groups))
    ax.plot(pos, stats[:, 0], color="#1f77b4", lw=1, label="system-prompt share (mean over conversations)")
    ax.fill_between(pos, stats[:, 1], stats[:, 2], color="#1f77b4", alpha=0.2, lw=0)
    first = tok.groupby("position")["first_share"].mean()
    ax.plot(first.index, first.to_numpy(), color="#7f7f7f", lw=0.8, ls="--", label="first-token (sink) share")
    ref = tok[tok["conversation"] == tok["conversation"].min()]
    for p, speaker in _boundaries(ref):
        ax.axvline(p, color="#d62728" if speaker == "user" else "#2ca02c", lw=0.5, alpha=0.6)
    ax.set_xlabel("token position in the agent's view (red: user turn starts, green: agent turn starts;"
                  " from the first conversation)", fontsize=7)
    ax.set_ylabel("attention share")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Attention to the system prompt as the dialog grows", fontsize=9)
    for layer, d in lay.groupby("layer"):
        ax2.plot(d["round"], d["prompt_share"], color=plt.cm.viridis(layer / max(lay["layer"].max(), 1)), lw=0.8)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(lay["layer"].min(), lay["layer"].max()))
    fig.colorbar(sm, ax=ax2, label="layer")
    ax2.set_xlabel("round")
    ax2.set_ylabel("prompt share of the agent's tokens")
    ax2.set_xticks(sorted(lay["round"].unique()))
    ax2.set_title("Per layer", fontsize=9)
    n = tok["conversation"].nunique()
    caption(fig, f"Mean over all heads (and the configured layers, left) of the attention that each token pays to "
                 f"the system-prompt tokens (template markers and the first token excluded), over {n} stored "
                 f"baseline conversations, teacher-forced; band: 95% normal CI over conversations. The first "
                 f"token, an attention sink, is shown separately.", width=150)
    return fig


@figure("attention_vs_stability")
def attention_vs_stability(joined_csv: str, correlation_json: str):
    d = pd.read_csv(joined_csv)
    corr = json.loads(open(correlation_json).read())
    fig, ax = plt.subplots(figsize=(5.6, 4))
    sc = ax.scatter(d["prompt_share"], d["score"], c=d["round"], cmap="viridis", s=18, alpha=0.8)
    fig.colorbar(sc, ax=ax, label="round")
    rounds = d.groupby("round")[["prompt_share", "score"]].mean()
    ax.plot(rounds["prompt_share"], rounds["score"], "k-o", lw=1, ms=4, label="per-round means")
    ax.set_xlabel("mean prompt share of the agent's tokens in the round")
    ax.set_ylabel("stability score in the round")
    ax.legend(fontsize=8)
    r, lo, hi = corr["pearson_r"], corr["ci_low"], corr["ci_high"]
    verdict = ("The interval excludes 0." if np.isfinite(lo) and (lo > 0 or hi < 0)
               else "The interval includes 0: this data shows no reliable link.")
    caption(fig, f"Each point is one conversation and round ({corr['n_points']} points, {corr['n_conversations']} "
                 f"conversations, model {corr['model']}). Pearson r = {r:.2f}, {corr['confidence']:.0%} bootstrap "
                 f"CI over conversations [{lo:.2f}, {hi:.2f}]. {verdict}", width=90)
    return fig


@figure("theory_attention_decay")
def theory_attention_decay(curve_csv: str, fits_csv: str, synthetic_json: str):
    curve = pd.read_csv(curve_csv)
    fits = pd.read_csv(fits_csv)
    syn = json.loads(open(synthetic_json).read())
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    g = curve.groupby("position")[["measured", "predicted"]].mean()
    ax.plot(g.index, g["measured"], color="#1f77b4", lw=1, label="measured")
    ax.plot(g.index, g["predicted"], color="#ff7f0e", lw=1, ls="--", label="dilution model S_p / (S_p + c n)")
    ax.set_xlabel("token position")
    ax.set_ylabel("prompt share (mean over heads, layers, conversations)")
    ax.legend(fontsize=8)
    ax.set_title("Measured decay against this project's softmax-dilution model", fontsize=9)
    ns = np.asarray(syn["n"])
    ax2.errorbar(ns + 1, syn["predicted"], yerr=syn["stated_error"], fmt="o", color="#ff7f0e", ms=3,
                 label="predicted +- stated error")
    ax2.plot(ns + 1, syn["measured"], "x", color="#1f77b4", label="measured")
    ax2.set_xscale("log")
    ax2.set_xlabel("non-prompt keys n (+1)")
    ax2.set_title("Synthetic check: one random layer", fontsize=9)
    ax2.legend(fontsize=7)
    resid = g["measured"] - g["predicted"]
    ss = ((g["measured"] - g["measured"].mean()) ** 2).sum()
    r2 = 1 - (resid**2).sum() / ss if ss > 0 else np.nan
    caption(fig, f"This project's model, not the paper's theorem (which could not be read): if the system-prompt "
                 f"keys keep unnormalised weight S_p and each later token adds c on average, the prompt share after "
                 f"n tokens is S_p / (S_p + c n). S_p and c are fitted per layer and head from the recorded attention "
                 f"logits of the same runs; median per-head r2 = {fits['r2'].median():.2f}; r2 of the averaged curve "
                 f"= {r2:.2f}. Synthetic check {'holds' if syn['holds'] else 'FAILS'} within its stated error.",
            width=150)
    return fig
