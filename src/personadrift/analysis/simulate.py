"""A planted-drift check: synthetic studies with known truth, no model.

A simulated study has the workflow's shape: ``conversations`` self-chats, probes at round 0
(right after the system prompt) and after each of ``rounds`` dialog rounds, ``runs`` samples per
probe, an agent probe (stability) and a user probe (adoption), one or more settings on the same
persona pairs. Its truth is known:

* conversation i, setting s, kind k, round r: each probe sample passes its judge with
  probability p = sigmoid(logit_k[r] + effect_s * [r >= 1] + b_ik + u_ikr), where b_ik ~ N(0,
  ``spread``^2) is the conversation's own level (same across settings: common persona pairs)
  and u_ikr ~ N(0, ``round_noise``^2) a conversation-and-round wobble;
* the estimands are population means over conversations, computed exactly (Gauss-Hermite):
  the mean score per round, the drift (last round minus round 0) and each setting's paired
  difference from ``none`` (mean over rounds >= 1).

:func:`write_study` writes the transcripts the self-chat step writes (``contains`` judges, so
scoring them is real work); :func:`simulate_scores` draws the same table directly, which a test
checks against scoring the transcripts, and :func:`check` runs many studies through the tables
of ``analysis.stats`` to measure coverage, false-positive rate and power.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from personadrift.analysis import stats

MARK = {"agent": "anchor", "user": "pirate"}  # an answer passes its judge iff it contains the word
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(60)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p):
    p = np.asarray(p, dtype=float)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Design:
    """What a simulated study looks like and what is true in it (see the module docstring).

    ``stability`` / ``adoption``: the per-round centre for rounds 0..rounds on the probability
    scale (the population mean is pulled toward 0.5 by ``spread``; :func:`truth` gives it
    exactly). ``effects``: setting -> shift of the agent's stability on the logit scale in
    rounds >= 1 (``none`` is 0).
    """

    conversations: int = 8
    rounds: int = 4
    runs: int = 2
    stability: tuple = (0.5, 0.5, 0.5, 0.5, 0.5)
    adoption: tuple = (0.1, 0.1, 0.1, 0.1, 0.1)
    spread: float = 1.0
    round_noise: float = 0.5
    effects: dict = field(default_factory=lambda: {"none": 0.0})

    def __post_init__(self):
        for name in ("stability", "adoption"):
            if len(getattr(self, name)) != self.rounds + 1:
                raise ValueError(f"Design.{name}: needs {self.rounds + 1} values (rounds 0..{self.rounds})")
        if "none" not in self.effects:
            raise ValueError("Design.effects: needs the baseline setting 'none'")

    def logits(self, setting: str, kind: str) -> np.ndarray:
        base = _logit(self.stability if kind == "agent" else self.adoption)
        shift = self.effects[setting] if kind == "agent" else 0.0
        return base + shift * (np.arange(self.rounds + 1) >= 1)


@dataclass(frozen=True)
class StudyShape:
    """What a study's power depends on: its conversations, probe samples, rounds and the number
    of mitigation comparisons Holm corrects over."""

    label: str
    conversations: int
    runs: int = 2
    rounds: int = 4
    comparisons: int = 4


def shape_of(config: dict, label: str = "") -> StudyShape:
    """A workflow config's shape: ``selfchat.conversations``, ``runs``, ``turns`` / 2 rounds, and
    the settings that intervene (not ``none``, not the control)."""
    from personadrift.interventions.settings import expand_settings

    sc = config["selfchat"]
    mitigations = [s for s in expand_settings(config["interventions"]) if s.method != "none"]
    return StudyShape(label or config.get("study", ""), int(sc["conversations"]), int(sc.get("runs", 1)),
                      int(sc["turns"]) // 2, len(mitigations))


def drifting(conversations: int, *, rounds: int = 4, start: float = 0.5, drop: float = 0.0, **kw) -> Design:
    """A design whose stability centre falls linearly on the logit scale by ``drop`` (logits) over the dialog."""
    lg = _logit(start) - drop * np.arange(rounds + 1) / rounds
    kw.setdefault("adoption", (0.1,) * (rounds + 1))
    return Design(conversations=conversations, rounds=rounds, stability=tuple(_sigmoid(lg)), **kw)


def truth(design: Design) -> pd.DataFrame:
    """True population mean per setting, kind and round (exact up to quadrature error)."""
    sd = np.hypot(design.spread, design.round_noise)
    rows = []
    for s in design.effects:
        for kind in ("agent", "user"):
            for r, lg in enumerate(design.logits(s, kind)):
                m = float(np.sum(_GH_W * _sigmoid(lg + sd * _GH_X)) / np.sqrt(2 * np.pi))
                rows.append({"setting": s, "kind": kind, "round": r, "true_mean": m})
    return pd.DataFrame(rows)


def true_change(design: Design, setting: str = "none", kind: str = "agent") -> float:
    t = truth(design).set_index(["setting", "kind", "round"])["true_mean"]
    return float(t[(setting, kind, design.rounds)] - t[(setting, kind, 0)])


def true_effect(design: Design, setting: str) -> float:
    t = truth(design)
    t = t[(t["kind"] == "agent") & (t["round"] >= 1)].groupby("setting")["true_mean"].mean()
    return float(t[setting] - t["none"])


def simulate_scores(design: Design, seed: int) -> pd.DataFrame:
    """One study's scores table (the columns scoring writes that the statistics read)."""
    rng = np.random.default_rng(seed)
    n, R, k = design.conversations, design.rounds + 1, design.runs
    level = {kind: rng.normal(0, design.spread, size=n) for kind in ("agent", "user")}
    parts = []
    for s in design.effects:
        for kind in ("agent", "user"):
            z = design.logits(s, kind)[None, :] + level[kind][:, None] + rng.normal(0, design.round_noise, (n, R))
            passed = rng.random((n, R, k)) < _sigmoid(z)[:, :, None]
            c, r, j = np.meshgrid(np.arange(n), np.arange(R), np.arange(k), indexing="ij")
            parts.append(pd.DataFrame({
                "setting": s, "conversation": c.ravel(), "round": r.ravel(), "turn": 2 * r.ravel(),
                "kind": kind, "sample": j.ravel(), "score": passed.ravel().astype(float), "context": "ok",
            }))
    return pd.concat(parts, ignore_index=True)


def _persona(kind: str, i: int) -> dict:
    word = MARK[kind]
    return {"id": f"sim-{kind}-{i}", "category": "simulated", "system_prompt": f"Always say {word}.",
            "probe": f"Say something about {word}s.", "judge": "contains", "judge_args": {"substring": word}}


def study_records(design: Design, seed: int) -> list[dict]:
    """Transcript records (the self-chat step's JSON) whose judged answers are ``simulate_scores``."""
    sc = simulate_scores(design, seed)
    records = []
    for (s, conv), g in sc.groupby(["setting", "conversation"], sort=True):
        history = ["simulated topic"] + [f"utterance {t}" for t in range(1, 2 * design.rounds + 1)]
        probes = []
        for (rnd, kind), p in g.groupby(["round", "kind"], sort=True):
            word = MARK[kind]
            answers = [f"An {word} answer." if x else "A plain answer." for x in p.sort_values("sample")["score"]]
            probes.append({"round": int(rnd), "turn": 2 * int(rnd), "kind": kind, "question": f"probe {kind}",
                           "answers": answers, "context": "ok"})
        records.append({
            "conversation": int(conv), "setting": {"name": s, "family": s, "method": "simulated", "value": None},
            "agent": _persona("agent", int(conv)), "user": _persona("user", int(conv)),
            "topic": history[0], "history": history, "probes": probes, "complete": True,
            "provenance": {"simulated": True, "seed": seed},
        })
    return records


def write_study(design: Design, seed: int, out_dir) -> dict[str, Path]:
    """Write ``transcripts/<setting>/shard-0/conv-*.json`` under ``out_dir``; return setting -> folder."""
    from personadrift.storage import atomic_write_json

    out = {}
    for rec in study_records(design, seed):
        d = Path(out_dir) / "transcripts" / rec["setting"]["name"] / "shard-0"
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / f"conv-{rec['conversation']:05d}.json", rec)
        out[rec["setting"]["name"]] = d
    return out


def analyse(design: Design, scores: pd.DataFrame, *, method: str, confidence: float, resamples: int,
            seed: int = 0, round_means: bool = True) -> list[dict]:
    """Run one study's scores through the tables and score each interval against the truth."""
    kw = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    t = truth(design).set_index(["setting", "kind", "round"])["true_mean"]
    out = []
    br = stats.by_round(scores[scores["setting"] == "none"], **kw) if round_means else pd.DataFrame()
    for _, r in br.iterrows():
        tv = t[(r["setting"], r["kind"], r["round"])]
        out.append({"claim": f"round mean ({r['kind']})", "covered": r["ci_low"] <= tv <= r["ci_high"], "significant": np.nan})
    ch = stats.change_over_dialog(scores[scores["setting"] == "none"], **kw)
    for _, r in ch.iterrows():
        tv = true_change(design, r["setting"], r["kind"])
        out.append({"claim": f"drift ({r['kind']})", "covered": r["ci_low"] <= tv <= r["ci_high"],
                    "significant": bool(r["significant"])})
    if len(design.effects) > 1:
        pv = stats.paired_vs_baseline(scores, **kw)
        for _, r in pv[pv["setting"] != "none"].iterrows():
            tv = true_effect(design, r["setting"])
            out.append({"claim": "setting vs none", "covered": r["ci_low"] <= tv <= r["ci_high"],
                        "significant": bool(r["significant"])})
    return out


def check(design: Design, *, studies: int, method: str = "t", confidence: float = 0.95, resamples: int = 400,
          seed: int = 0, round_means: bool = True) -> pd.DataFrame:
    """Coverage and rate of "significant" per claim over ``studies`` simulated studies.

    Columns: claim, intervals (how many were scored), coverage, significant_rate (the false-positive
    rate where the truth is 0, the power where it is not), true_value (mean over the claim's targets).
    """
    rows = []
    for i in range(studies):
        sc = simulate_scores(design, seed=seed * 1_000_003 + i)
        rows += analyse(design, sc, method=method, confidence=confidence, resamples=resamples, seed=i,
                        round_means=round_means)
    df = pd.DataFrame(rows)
    g = df.groupby("claim", sort=False)
    out = pd.DataFrame({"intervals": g.size(), "coverage": g["covered"].mean(),
                        "significant_rate": g["significant"].mean()}).reset_index()
    out.insert(0, "method", method)
    out.insert(1, "n", design.conversations)
    return out


def with_conversations(design: Design, n: int) -> Design:
    return replace(design, conversations=n)
