"""Figures of attention decay: the measured decay, its link to stability, and the dilution model."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from personadrift.figures.style import caption


def _mean_ci(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and t-interval over conversations (few of them: a normal quantile would be too narrow)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    m = v.mean()
    if len(v) < 2:
        return m, np.nan, np.nan
    h = stats.t.ppf((1 + confidence) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return m, m - h, m + h


def _boundaries(d: pd.DataFrame) -> list[tuple[int, str]]:
    """Positions where a new message starts in one conversation, with the speaker."""
    d = d.sort_values("position")
    starts = d[d["entry"].diff().fillna(1) != 0]
    return list(zip(starts["position"], starts["speaker"]))


def attention_decay(per_token_csv: str, per_layer_round_csv: str):
    tok = pd.read_csv(per_token_csv)
    lay = pd.read_csv(per_layer_round_csv)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    conf = float(tok["confidence"].iloc[0]) if "confidence" in tok else 0.95
    g = tok.groupby("position")["prompt_share"]
    band = np.array([_mean_ci(v.to_numpy(), conf) for _, v in g])
    pos = np.array(list(g.groups))
    ax.plot(pos, band[:, 0], color="#1f77b4", lw=1, label="system-prompt share (mean over conversations)")
    ax.fill_between(pos, band[:, 1], band[:, 2], color="#1f77b4", alpha=0.2, lw=0)
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
                 f"baseline conversations, teacher-forced; band: {conf:.0%} t-interval over the conversations "
                 f"that reach each position. The first "
                 f"token, an attention sink, is shown separately.", width=150)
    return fig


def attention_vs_stability(joined_csv: str, correlation_json: str):
    from personadrift.analysis.attention import fixed_effect_residuals

    d = pd.read_csv(joined_csv)
    a = json.loads(open(correlation_json).read())
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 4))
    sc = ax.scatter(d["prompt_share"], d["score"], c=d["round"], cmap="viridis", s=18, alpha=0.8)
    rounds = d.groupby("round")[["prompt_share", "score"]].mean()
    ax.plot(rounds["prompt_share"], rounds["score"], "k-o", lw=1, ms=4, label="per-round means")
    ax.set_xlabel("mean prompt share of the agent's tokens in the round")
    ax.set_ylabel("stability score in the round")
    ax.legend(fontsize=8)
    ax.set_title("Pooled (confounded by round and persona)", fontsize=9)
    if len(d) > 2 and d["conversation"].nunique() > 1:
        (rx, ry), _ = fixed_effect_residuals(d, ["prompt_share", "score"])
        ax2.scatter(rx, ry, c=d["round"], cmap="viridis", s=18, alpha=0.8)
        if np.isfinite(a["slope"]):
            xs = np.linspace(rx.min(), rx.max(), 2)
            ax2.plot(xs, a["slope"] * xs, "k-", lw=1, label=f"within slope {a['slope']:.2f}")
            ax2.legend(fontsize=8)
    fig.colorbar(sc, ax=ax2, label="round")
    ax2.set_xlabel("prompt share, net of conversation and round")
    ax2.set_ylabel("stability, net of conversation and round")
    ax2.set_title("Within conversations, net of round", fontsize=9)
    lo, hi = a["ci_low"], a["ci_high"]
    if not np.isfinite(a["slope"]):
        verdict = "Too few conversations or rounds to estimate the within-conversation link."
    elif lo > 0 or hi < 0:
        verdict = "The interval excludes 0: within conversations, rounds with more prompt attention have " + (
            "higher" if a["slope"] > 0 else "lower") + " stability."
    else:
        verdict = "The interval includes 0: this data shows no reliable within-conversation link."
    caption(fig, f"Each point is one conversation and round ({a['n_points']} points, {a['n_conversations']} "
                 f"conversations, model {a['model']}). Both attention and stability fall with round and differ by "
                 f"persona, so the pooled Pearson r = {a['pooled_r']:.2f} (left) says little. Right: method "
                 f"{a['method']}; slope {a['slope']:.2f} stability per unit prompt share, {a['confidence']:.0%} "
                 f"interval [{lo:.2f}, {hi:.2f}], p = {a['p_value']:.3f}; partial r = {a['partial_r']:.2f}. {verdict}",
            width=140)
    return fig


def _layer_list(layers) -> str:
    layers = sorted(int(x) for x in layers)
    if not layers:
        return "none"
    runs, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(runs)


def theory_verdict(fits: pd.DataFrame, threshold: float = 0.5) -> str:
    """In words: does the model explain the decay, and in which layers (median held-out r2 per layer)."""
    from personadrift.analysis.attention import layer_verdicts

    v = layer_verdicts(fits, threshold)
    good, bad = v[v["explained"]]["layer"].tolist(), v[~v["explained"]]["layer"].tolist()
    where = "held-out" if not fits["in_sample"].iloc[0] else "in-sample (one conversation only, nothing held out)"
    if not good:
        best_layer = int(v.loc[v["median_r2"].idxmax(), "layer"])
        return (f"The model does NOT explain the decay in any layer: median {where} r2 per layer is below "
                f"{threshold} everywhere (best {v['median_r2'].max():.2f}, layer {best_layer}).")
    if not bad:
        return f"The model explains the decay in every layer (median {where} r2 per layer >= {threshold})."
    return (f"The model explains the decay in layers {_layer_list(good)} (median {where} r2 >= {threshold}) but "
            f"not in layers {_layer_list(bad)}.")


def theory_attention_decay(curve_csv: str, fits_csv: str, synthetic_json: str):
    curve = pd.read_csv(curve_csv)
    fits = pd.read_csv(fits_csv)
    syn = json.loads(open(synthetic_json).read())
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    g = curve.groupby("position")[["measured", "predicted"]].mean()
    ax.plot(g.index, g["measured"], color="#1f77b4", lw=1, label="measured (held-out conversations)")
    ax.plot(g.index, g["predicted"], color="#ff7f0e", lw=1, ls="--", label="dilution model S_p / (S_p + S_0 + c n)")
    ax.set_xlabel("token position")
    ax.set_ylabel("prompt share (mean over heads, layers, conversations)")
    ax.legend(fontsize=8)
    ax.set_title("Measured decay against this project's softmax-dilution model", fontsize=9)
    ns = np.asarray(syn["n"])
    ax2.errorbar(ns, syn["predicted"], yerr=syn["stated_error"], fmt="o", color="#ff7f0e", ms=3,
                 label="fitted, sink apart +- tolerance")
    if "lumped" in syn:
        ax2.plot(ns, syn["lumped"], "s", color="#999999", ms=3, mfc="none", label="fitted, sink among the others")
    ax2.plot(ns, syn["measured"], "x", color="#1f77b4", label="measured (held-out queries)")
    ax2.set_xscale("log")
    ax2.set_xlabel("non-prompt keys besides the sink, n")
    ax2.set_title("Synthetic check: a random layer with a sink", fontsize=9)
    ax2.legend(fontsize=7)
    resid = g["measured"] - g["predicted"]
    ss = ((g["measured"] - g["measured"].mean()) ** 2).sum()
    r2 = 1 - (resid**2).sum() / ss if ss > 0 else np.nan
    held = "in sample" if fits["in_sample"].iloc[0] else (
        f"fitted on {int(fits['fit_conversations'].iloc[0])} conversations, scored on "
        f"{int(fits['heldout_conversations'].iloc[0])} held-out ones")
    caption(fig, f"This project's model, not the paper's theorem (which could not be read): if the system-prompt "
                 f"keys keep unnormalised weight S_p, the first token (an attention sink) S_0, and each later token "
                 f"adds c on average, the prompt share after n tokens is S_p / (S_p + S_0 + c n). S_p, S_0 and c are "
                 f"fitted per layer and head from the recorded attention logits ({held}); median per-head r2 = "
                 f"{fits['r2'].median():.2f}; r2 of the averaged curve = {r2:.2f}. {theory_verdict(fits)} "
                 f"Synthetic check (the same estimator, fitted on half of the queries): "
                 f"{'holds' if syn['holds'] else 'FAILS'} within {syn['stated_error'][0]:.2f} at every n"
                 + (f"; counting the sink among the other keys misses by up to "
                    f"{np.max(np.abs(np.subtract(syn['lumped'], syn['measured']))):.2f}." if "lumped" in syn else "."),
            width=150)
    return fig
