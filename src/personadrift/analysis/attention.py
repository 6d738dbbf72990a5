"""Attention decay: how much attention the agent's tokens pay to its system prompt, per token.

For each stored conversation, one teacher-forced forward over the agent's view of the whole
dialog runs with the streaming recorder (``attention.recorder``), which keeps per layer, head
and query only the prompt share, the first-token share and the log-weights the dilution model
needs. Outputs:

* a tidy per-token table (conversation, position, entry, round, speaker, layer, head,
  prompt_share, first_share, log_S_prompt, log_S_other, n_other), gzip CSV;
* small tables the figures are drawn from: per-token means over heads and layers,
  per-layer means per round, per-round means of the agent's own tokens, and the dilution fit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from personadrift.generation.chat import ChatFormat
from personadrift.generation.dialog import agent_messages


def token_speakers(chat: ChatFormat, messages: list[dict]) -> tuple[list[int], list[str], list[int]]:
    """Token ids of the full dialog, the speaker of each token, and its message index.

    Message boundaries are found by rendering growing prefixes of the dialog; a template that
    re-tokenises across a boundary moves it by at most a token or two, which only shifts labels.
    """
    full = chat.render(messages, add_generation_prompt=False).ids
    speakers, entry = [""] * len(full), [0] * len(full)
    start = 0
    for i in range(len(messages)):
        last = i == len(messages) - 1
        end = len(full) if last else len(chat.render(messages[: i + 1], add_generation_prompt=False).ids)
        end = min(end, len(full))
        role = {"system": "system", "user": "user", "assistant": "agent"}[messages[i]["role"]]
        for p in range(start, end):
            speakers[p], entry[p] = role, i
        start = end
    return full, speakers, entry


def record_conversation(model, chat: ChatFormat, record: dict) -> pd.DataFrame:
    """The tidy per-token table of one stored conversation."""
    import torch  # here, not at the top: the table and figure jobs using this module need no torch

    from personadrift.attention.recorder import record_prompt_share

    msgs = agent_messages(record["agent"]["system_prompt"], record["history"])
    ids, speakers, entry = token_speakers(chat, msgs)
    rendered = chat.render(msgs, add_generation_prompt=False)
    if rendered.prompt_span is None:
        raise ValueError(f"conversation {record['conversation']}: system prompt not found in the rendering")
    s, e = rendered.prompt_span
    n = len(ids)
    prompt = torch.zeros((1, n), dtype=torch.bool)
    prompt[0, s:e] = True
    first = torch.zeros((1, n), dtype=torch.bool)
    first[0, 0] = True
    device = next(model.parameters()).device
    rec = record_prompt_share(
        model, torch.tensor([ids], device=device), torch.ones((1, n), dtype=torch.long, device=device),
        prompt.to(device), first.to(device),  # every layer is recorded; tables select layers
    )
    stats = rec.stats[:, 0].float().cpu().numpy()  # [layers, heads, queries, 5]
    L, H, Q, _ = stats.shape
    layer_idx = np.repeat(np.asarray(rec.layers), H * Q)
    head_idx = np.tile(np.repeat(np.arange(H), Q), L)
    pos = np.tile(np.arange(Q), L * H)
    # message i of the agent view: 0 system, 1 topic, 2 a1, ... -> history entry i - 1
    hist_entry = np.asarray(entry)[pos] - 1
    flat = stats.reshape(L * H * Q, 5)
    return pd.DataFrame({
        "conversation": record["conversation"],
        "position": pos,
        "entry": hist_entry,
        "round": np.maximum(hist_entry, 0) // 2 + 1,
        "speaker": np.asarray(speakers, dtype=object)[pos],
        "layer": layer_idx,
        "head": head_idx,
        "prompt_share": flat[:, 0],
        "first_share": flat[:, 1],
        "log_S_prompt": flat[:, 2],
        "log_S_other": flat[:, 3],
        "n_other": flat[:, 4],
    })


def select_layers(df: pd.DataFrame, layers) -> pd.DataFrame:
    if layers in (None, "all"):
        return df
    return df[df["layer"].isin(list(layers))]


def per_token(df: pd.DataFrame, layers="all") -> pd.DataFrame:
    """Mean over the chosen layers and all heads, per conversation and token (prompt tokens excluded)."""
    d = select_layers(df[df["speaker"] != "system"], layers)
    return (d.groupby(["conversation", "position", "entry", "round", "speaker"], as_index=False)
            [["prompt_share", "first_share"]].mean())


def per_layer_round(df: pd.DataFrame) -> pd.DataFrame:
    """Mean prompt share of the agent's own tokens per layer and round."""
    d = df[df["speaker"] == "agent"]
    return d.groupby(["layer", "round"], as_index=False)["prompt_share"].mean()


def per_round(df: pd.DataFrame, layers="all") -> pd.DataFrame:
    """Mean prompt share of the agent's own tokens per conversation and round."""
    d = select_layers(df[df["speaker"] == "agent"], layers)
    return d.groupby(["conversation", "round"], as_index=False)[["prompt_share", "first_share"]].mean()


def split_conversations(conversations) -> tuple[list, list]:
    """(fit, held out): the first half of the sorted conversations fits, the rest scores.

    With a single conversation both are that conversation (the fit is then scored in sample,
    which the caption says)."""
    convs = sorted(set(conversations))
    if len(convs) < 2:
        return convs, convs
    k = (len(convs) + 1) // 2
    return convs[:k], convs[k:]


def dilution_fit(df: pd.DataFrame, layers="all") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit the dilution model (sink kept apart) per (layer, head) on some conversations, score it
    on the held-out ones. Returns the per-token predicted vs measured curve of the held-out
    conversations and one row per (layer, head) with the fit and its held-out r2/rmse."""
    from personadrift.analysis.theory import fit_dilution, predicted_share, score_fit

    d = select_layers(df[df["speaker"] != "system"], layers)
    fit_convs, test_convs = split_conversations(d["conversation"])
    in_sample = fit_convs == test_convs
    fits, parts = [], []
    for (layer, head), g in d.groupby(["layer", "head"]):
        cols = ["log_S_prompt", "log_S_other", "n_other", "first_share"]
        tr, te = g[g["conversation"].isin(fit_convs)], g[g["conversation"].isin(test_convs)]
        try:
            f = fit_dilution(*(tr[c].to_numpy() for c in cols))
        except ValueError:  # no usable entry for this head (e.g. a very short dialog)
            continue
        r2, rmse, n_test = score_fit(f, *(te[c].to_numpy() for c in cols))
        fits.append({"layer": layer, "head": head, "S_p": f.S_p, "S_0": f.S_0, "c": f.c, "r2_fit": f.r2,
                     "r2": r2, "rmse": rmse, "n": f.n, "n_heldout": n_test, "in_sample": in_sample,
                     "fit_conversations": len(fit_convs), "heldout_conversations": len(test_convs)})
        pred = predicted_share(f.S_p, f.c, np.maximum(te["n_other"].to_numpy() - 1, 0), f.S_0)
        parts.append(pd.DataFrame({"conversation": te["conversation"].to_numpy(), "position": te["position"].to_numpy(),
                                   "entry": te["entry"].to_numpy(), "layer": layer,
                                   "measured": te["prompt_share"].to_numpy(),
                                   "predicted": np.asarray(pred, dtype=float)}))
    if not parts:
        raise ValueError("dilution_fit: no layer and head has a usable entry")
    both = pd.concat(parts, ignore_index=True)
    curve = both.groupby(["conversation", "position", "entry"], as_index=False)[["measured", "predicted"]].mean()
    return curve, pd.DataFrame(fits)


def layer_verdicts(fits: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per layer: median held-out r2 over heads and whether the model explains that layer's decay
    (median held-out r2 >= ``threshold``)."""
    g = fits.groupby("layer")["r2"].median().rename("median_r2").reset_index()
    g["explained"] = g["median_r2"] >= threshold
    return g


def fixed_effect_residuals(d: pd.DataFrame, columns: list[str]) -> tuple[list[np.ndarray], int]:
    """Each column minus its least-squares fit on conversation and round indicators; and the rank used."""
    X = pd.get_dummies(d[["conversation", "round"]].astype(str), drop_first=False).to_numpy(dtype=float)
    proj = X @ np.linalg.pinv(X)
    residuals = [d[c].to_numpy(dtype=float) - proj @ d[c].to_numpy(dtype=float) for c in columns]
    return residuals, int(np.linalg.matrix_rank(X))


def within_conversation_association(joined: pd.DataFrame, *, confidence: float = 0.95, x: str = "prompt_share",
                                    y: str = "score") -> dict:
    """How stability moves with prompt attention WITHIN conversations, net of round.

    Both quantities fall with round and differ by persona, so a pooled correlation mixes those
    trends with any link. Here both are residualised on conversation and round indicators (two-way
    fixed effects); the slope of the residual score on the residual attention is the within
    estimate, with a cluster-robust (CR1) standard error over conversations and a t interval on
    G - 1 degrees of freedom (G conversations). ``partial_r`` is the correlation of the residuals;
    ``pooled_r`` the naive pooled Pearson r, for contrast.
    """
    from scipy import stats as sps

    d = joined[[x, y, "conversation", "round"]].dropna()
    G = d["conversation"].nunique()
    out = {"method": "two-way fixed effects (conversation and round), cluster-robust t-interval over conversations",
           "confidence": confidence, "n_points": len(d), "n_conversations": int(G), "slope": float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "partial_r": float("nan"),
           "pooled_r": float("nan")}
    if len(d) > 2 and d[x].std() > 0 and d[y].std() > 0:
        out["pooled_r"] = float(np.corrcoef(d[x], d[y])[0, 1])
    (rx, ry), k = fixed_effect_residuals(d, [x, y])
    if G < 2 or len(d) - k < 2:
        return out
    sxx = float(rx @ rx)
    if sxx <= 1e-12 * max(1.0, float(d[x].to_numpy() @ d[x].to_numpy())):
        return out
    slope = float(rx @ ry) / sxx
    e = ry - slope * rx
    groups = d["conversation"].to_numpy()
    meat = sum(float(rx[groups == g] @ e[groups == g]) ** 2 for g in np.unique(groups))
    n = len(d)
    var = meat / sxx**2 * G / (G - 1) * (n - 1) / (n - k - 1)
    se = float(np.sqrt(var))
    q = sps.t.ppf((1 + confidence) / 2, G - 1)
    out.update({"slope": slope, "ci_low": slope - q * se, "ci_high": slope + q * se,
                "p_value": float(2 * sps.t.sf(abs(slope) / se, G - 1)) if se > 0 else float("nan"),
                "partial_r": float(np.corrcoef(rx, ry)[0, 1]) if ry.std() > 0 else float("nan")})
    return out
