"""Drift without a judge: two signals per probe answer, teacher-forced on the HF engine.

For every probe answer of a self-chat transcript, the answer's tokens are fed back after two
contexts (nothing is sampled):

* the **dialog context**: the exact messages the probe was answered in (the agent's system
  prompt, the dialog so far, as truncated by the context policy, with the setting's repetition,
  then the probe), with the setting's engine intervention applied as it was when the answer was
  generated;
* the **fresh context**: the system prompt and the probe only (what round 0 asks), under the same
  intervention.

``kl``: the mean over the answer's tokens of KL(p_dialog || p_fresh), the divergence of the
agent's next-token distribution in the dialog from the one it would have had with no dialog, at
each prefix of the answer. Direction: the answer was sampled from p_dialog, so this is the
expected log-likelihood ratio under the distribution that produced the answer (how much the
dialog moved the model, weighted by what the dialog model would actually say); it is finite
because p_fresh, a softmax, is positive everywhere. At round 0 the two contexts are the same
messages, so ``kl`` is zero there up to the batch's float rounding.

``projection``: the mean over the answer's tokens of the dialog context's hidden state at the
output of decoder layer L (the layer the persona vectors were taken at) projected on the unit
vector of the probe's persona (agent probe: the agent's persona; user probe: the user bot's).

Both use the model's full distribution at temperature 1 (the sampled answer also went through
temperature and top-p; truncating p_fresh would make the KL infinite), and the answer's tokens are
the stored text re-tokenised as the chat template renders a reply (the stored text was stripped
and flattened, so it can differ from the sampled tokens at whitespace).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from personadrift.errors import InputError
from personadrift.generation.api import GenRequest
from personadrift.generation.dialog import probe_messages, window

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from personadrift.interventions.settings import Setting

COLUMNS = ["setting", "conversation", "round", "turn", "kind", "sample", "persona", "agent_persona",
           "user_persona", "kl", "projection", "answer_tokens", "context"]


def mean_kl(logp_dialog: torch.Tensor, logp_fresh: torch.Tensor) -> float:
    """Mean over positions of KL(p_dialog || p_fresh), from log-probabilities [positions, vocab]."""
    import torch

    a, b = logp_dialog.double(), logp_fresh.double()
    per_token = (a.exp() * (a - b)).sum(-1)
    return float(torch.clamp(per_token, min=0.0).mean())  # rounding can leave -1e-12 where they agree


def mean_projection(hidden: torch.Tensor, vector: torch.Tensor) -> float:
    """Mean over positions of ``hidden`` [positions, d] projected on the unit vector of ``vector`` [d]."""
    v = vector.double().flatten()
    norm = float(v.norm())
    if not norm > 0:
        raise ValueError("a persona vector of norm zero has no direction to project on")
    return float((hidden.double() @ (v / norm).to(hidden.device)).mean())


def answer_requests(rec: dict, setting: Setting, repetition, intervene: bool):
    """For each answered probe sample of ``rec``: (row fields, dialog request, fresh request, answer
    text); unanswered probes (context overflow) as (row fields, None, None, None)."""
    sys = rec["agent"]["system_prompt"]
    for probe in rec["probes"]:
        base = {"conversation": rec["conversation"], "round": probe["round"], "turn": probe["turn"],
                "kind": probe["kind"], "persona": probe["persona"], "agent_persona": rec["agent"]["id"],
                "user_persona": rec["user"]["id"], "context": probe.get("context", "")}
        if not probe["answers"]:
            yield {**base, "sample": 0}, None, None, None
            continue
        history = window(rec["history"][: probe["turn"]], probe.get("dropped_rounds", 0))
        dialog = probe_messages(sys, history, probe["question"], repetition)
        fresh = probe_messages(sys, [], probe["question"], repetition)
        # the dialog's prefix is cached under the conversation's key: the next round re-uses it
        reqs = [GenRequest(m, seed=0, key=key, persist=key is not None, intervene=intervene,
                           negative_messages=setting.negative_messages(m), persona=rec["agent"]["id"])
                for m, key in ((dialog, f"{rec['conversation']}/signals"), (fresh, None))]
        for i, answer in enumerate(probe["answers"]):
            yield {**base, "sample": i}, reqs[0], reqs[1], answer


def measure(engine, records: list[dict], setting: Setting, *,
            vectors: tuple[int, dict] | None = None, vectors_source: str = "persona vectors") -> pd.DataFrame:
    """One row per probe answer of ``records`` (self-chat transcripts of ``setting``): ``kl`` and,
    with ``vectors`` = (layer, {persona id: vector}), ``projection`` (NaN without). Answers that
    re-tokenise to nothing, and probes left unasked, get NaN signals."""
    from personadrift.capability.mmlu.scoring import ReplyTokens

    repetition = setting.repetition()
    if repetition is not None:
        repetition = repetition.for_template(engine.chat.mid_dialog_system)  # as the self-chat rendered it
    intervene = setting.intervenes("probes")
    reply = ReplyTokens(engine.tokenizer, fold=engine.chat.fold)
    rows, requests, conts, owner = [], [], [], []
    for rec in records:
        for fields, dialog, fresh, answer in answer_requests(rec, setting, repetition, intervene):
            row = {"setting": setting.name, **fields, "kl": math.nan, "projection": math.nan, "answer_tokens": 0}
            rows.append(row)
            if dialog is None or not answer:
                continue
            if vectors is not None and row["persona"] not in vectors[1]:
                raise InputError(vectors_source, row["persona"],
                                 f"no vector for this persona (conversation {row['conversation']}, "
                                 f"{row['kind']} probe); the file holds {len(vectors[1])} personas")
            ids = reply(dialog.messages, answer)
            if not ids:
                continue
            row["answer_tokens"] = len(ids)
            owner += [(len(rows) - 1, "dialog"), (len(rows) - 1, "fresh")]
            requests += [dialog, fresh]
            conts += [ids, ids]
    layer = vectors[0] if vectors is not None else None
    pending: dict[int, torch.Tensor] = {}  # an answer's first distribution until its partner comes
    for k, logp, hidden in _round_by_round(engine, requests, conts, [rows[r]["turn"] for r, _ in owner], layer):
        r, which = owner[k]
        if which == "dialog" and vectors is not None:
            rows[r]["projection"] = mean_projection(hidden, vectors[1][rows[r]["persona"]])
        other = pending.pop(r, None)
        if other is None:
            pending[r] = logp
            continue
        dialog_lp, fresh_lp = (logp, other) if which == "dialog" else (other, logp)
        rows[r]["kl"] = mean_kl(dialog_lp, fresh_lp)
    for key in {q.key for q in requests if q.key is not None}:
        engine.forget(key)  # the dialog's prefix and its guidance branch's (key#uncond)
    return pd.DataFrame(rows, columns=COLUMNS)


def _round_by_round(engine, requests: list[GenRequest], conts: list[list[int]], turns: list[int], layer):
    """``engine.continuation_states`` one round at a time (index into ``requests``, distributions,
    states): each round's dialogs extend the prefixes the round before cached under their keys."""
    for turn in sorted(set(turns)):
        idx = [i for i, t in enumerate(turns) if t == turn]
        for k, logp, hidden in engine.continuation_states([requests[i] for i in idx], [conts[i] for i in idx],
                                                          layer=layer, store=True):
            yield idx[k], logp, hidden
