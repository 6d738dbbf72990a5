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
import torch

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
        end = len(chat.render(messages[: i + 1], add_generation_prompt=False).ids) if i < len(messages) - 1 else len(full)
        end = min(end, len(full))
        role = {"system": "system", "user": "user", "assistant": "agent"}[messages[i]["role"]]
        for p in range(start, end):
            speakers[p], entry[p] = role, i
        start = end
    return full, speakers, entry


def record_conversation(model, chat: ChatFormat, record: dict) -> pd.DataFrame:
    """The tidy per-token table of one stored conversation."""
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


def dilution_fit(df: pd.DataFrame, layers="all") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit the dilution model per (layer, head); return per-token predicted vs measured and the fits."""
    from personadrift.analysis.theory import fit_dilution, predicted_share

    d = select_layers(df[df["speaker"] != "system"], layers)
    fits, parts = [], []
    for (layer, head), g in d.groupby(["layer", "head"]):
        f = fit_dilution(torch.tensor(g["log_S_prompt"].to_numpy()), torch.tensor(g["log_S_other"].to_numpy()),
                         torch.tensor(g["n_other"].to_numpy()))
        fits.append({"layer": layer, "head": head, "S_p": f.S_p, "c": f.c, "r2": f.r2, "rmse": f.rmse, "n": f.n})
        pred = predicted_share(f.S_p, f.c, g["n_other"].to_numpy())
        parts.append(pd.DataFrame({"conversation": g["conversation"].to_numpy(), "position": g["position"].to_numpy(),
                                   "entry": g["entry"].to_numpy(), "measured": g["prompt_share"].to_numpy(),
                                   "predicted": np.asarray(pred, dtype=float)}))
    both = pd.concat(parts, ignore_index=True)
    curve = both.groupby(["conversation", "position", "entry"], as_index=False)[["measured", "predicted"]].mean()
    return curve, pd.DataFrame(fits)
