"""A planted-drift check: synthetic studies with known truth, no model.

A simulated study has the workflow's shape: ``conversations`` self-chats, probes at round 0
(right after the system prompt) and after each of ``rounds`` dialog rounds, ``runs`` samples per
probe, an agent probe (stability) and a user probe (adoption), one or more settings on the same
persona pairs. Its truth is known:

* conversation i, setting s, kind k, round r: the probe's expected score is
  p = sigmoid(logit_k[r] + effect_s * [r >= 1] + drift_effect_s * (r - 1) / (R - 1) * [r >= 1]
  + b_ik + d_isk * r / R + u_iskr + e_is * [r >= 1]), where b_ik ~ N(0, ``spread``^2) is the
  conversation's own level (the same in every setting: common persona pairs and seeds),
  d_isk ~ N(0, ``drift_sd``^2) its own drift and u_iskr ~ N(0, ``round_noise``^2) a
  conversation-and-round wobble, each correlated across settings by ``setting_correlation``
  (1: the same in every setting; real dialogs diverge from the first intervened turn, so a
  setting's wobble is partly its own), and e_is ~ N(0, ``effect_sd``^2) the conversation's own
  departure from the planted effect (agent probe, every setting but ``none``);
* ``stop_share``: per setting, the share of conversations the context policy stops early, each
  after a dialog round drawn uniformly from 1..R-1 (its later probes unasked: NaN, ``context`` =
  "overflow", as ``selfchat.context_policy: stop`` leaves them);
* a ``binary`` judge passes each probe sample with probability p; a ``graded`` judge gives a
  score in [0, 1] drawn from Beta(p * precision, (1 - p) * precision) (mean p); a ``mixed``
  judge is binary for a share ``binary_share`` of the probe samples and graded for the rest (real
  studies mix judges: the laptop study's scores are 95% 0 or 1, a few personas' judges graded);
  every judge's noise is Var(score | p) = p (1 - p) * :meth:`Design.judge_noise`;
* the estimands are population means over conversations, computed exactly (Gauss-Hermite):
  the mean score per round, and every claim of the drift and mitigation figures (round-0 shift,
  fitted change over rounds 1..R, level over rounds 1..R, differences from the control and
  from ``none``), which are linear in the per-round means.

:func:`fit_design` fits the start levels, spread, drift heterogeneity, round wobble and judge
noise to a study's scores table, so power can be simulated in that study's shape, or
(:func:`in_shape`) in a smaller study's on the same model.

:func:`write_study` writes the transcripts the self-chat step writes (``contains`` judges, so
scoring them is real work); :func:`simulate_scores` draws the same table directly, which a test
checks against scoring the transcripts, and :func:`check` runs many studies through the tables
of ``analysis.stats`` to measure coverage, false-positive rate and power.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personadrift.analysis import stats

JUDGES = ("binary", "graded", "mixed")
MARK = {"agent": "anchor", "user": "pirate"}  # an answer passes its judge iff it contains the word
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(60)


def _sigmoid(z):
    from scipy.special import expit  # no overflow warning at the large logits a fit may try

    return expit(z)


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
    drift_sd: float = 0.0
    judge: str = "binary"
    precision: float = 4.0
    drift_effects: dict = field(default_factory=dict)
    binary_share: float = 1.0
    setting_correlation: float = 1.0
    effect_sd: float = 0.0
    stop_share: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("stability", "adoption"):
            if len(getattr(self, name)) != self.rounds + 1:
                raise ValueError(f"Design.{name}: needs {self.rounds + 1} values (rounds 0..{self.rounds})")
        if "none" not in self.effects:
            raise ValueError("Design.effects: needs the baseline setting 'none'")
        if self.judge not in JUDGES:
            raise ValueError(f"Design.judge: {self.judge!r}, expected one of {', '.join(JUDGES)}")
        if not 0.0 <= self.binary_share <= 1.0:
            raise ValueError(f"Design.binary_share: {self.binary_share}, expected a share in [0, 1]")
        if unknown := set(self.drift_effects) - set(self.effects):
            raise ValueError(f"Design.drift_effects: settings {sorted(unknown)} are not in Design.effects")
        if unknown := set(self.stop_share) - set(self.effects):
            raise ValueError(f"Design.stop_share: settings {sorted(unknown)} are not in Design.effects")
        if not 0.0 <= self.setting_correlation <= 1.0:
            raise ValueError(f"Design.setting_correlation: {self.setting_correlation}, expected [0, 1]")

    def logits(self, setting: str, kind: str) -> np.ndarray:
        base = _logit(self.stability if kind == "agent" else self.adoption)
        if kind != "agent":
            return base
        r = np.arange(self.rounds + 1)
        ramp = np.where(r >= 1, (r - 1) / max(self.rounds - 1, 1), 0.0)
        return base + self.effects[setting] * (r >= 1) + self.drift_effects.get(setting, 0.0) * ramp

    def judge_noise(self) -> float:
        """Var(score | p) / (p (1 - p)): 1 for a binary judge, 1 / (precision + 1) for a graded one."""
        graded = 1.0 / (self.precision + 1.0)
        share = {"binary": 1.0, "graded": 0.0}.get(self.judge, self.binary_share)
        return share + (1.0 - share) * graded

    def round_sd(self, setting: str = "none", kind: str = "agent") -> np.ndarray:
        """Per round: the sd of a conversation's logit around the centre (level, own drift, wobble,
        and for an intervened agent probe its own departure from the planted effect)."""
        r = np.arange(self.rounds + 1)
        own = self.effect_sd**2 * (r >= 1) if kind == "agent" and setting != "none" else 0.0
        return np.sqrt(self.spread**2 + (self.drift_sd * r / self.rounds) ** 2 + self.round_noise**2 + own)


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


def drifting(conversations: int, *, rounds: int = 4, start: float = 0.5, drop: float = 0.0, shift: float = 0.0,
             **kw) -> Design:
    """A design whose stability centre falls by ``shift`` logits from round 0 to round 1 and then
    linearly by ``drop`` logits over the dialog (round 1 to the last)."""
    r = np.arange(rounds + 1)
    lg = _logit(start) - (r >= 1) * (shift + drop * (r - 1) / max(rounds - 1, 1))
    kw.setdefault("adoption", (0.1,) * (rounds + 1))
    return Design(conversations=conversations, rounds=rounds, stability=tuple(_sigmoid(lg)), **kw)


def with_drift(design: Design, drop: float, **changes) -> Design:
    """``design`` with its stability centre over rounds 1..R replaced by a linear fall of ``drop``
    logits from its round-1 centre (round 0 kept): a planted decline in a fitted study's shape."""
    lg = _logit(design.stability)
    r = np.arange(design.rounds + 1)
    lg = np.where(r >= 1, lg[min(1, design.rounds)] - drop * (r - 1) / max(design.rounds - 1, 1), lg)
    return replace(design, stability=tuple(_sigmoid(lg)), **changes)


def in_shape(design: Design, shape: StudyShape) -> Design:
    """A fitted ``design`` in another study's shape: ``shape``'s conversations and probe samples,
    and the first ``shape.rounds`` rounds of the same process (round centres kept; a conversation's
    own drift keeps its rate per round, so its sd over the shorter dialog shrinks in proportion).
    The studies it simulates are what the fitted study's first rounds would be with that many
    conversations: a fit to the 8-round laptop study gives the 3-round default's power."""
    if not 2 <= shape.rounds <= design.rounds:
        raise ValueError(f"in_shape: {shape.label or 'the shape'} has {shape.rounds} rounds; a design fitted "
                         f"to {design.rounds} rounds gives 2..{design.rounds}")
    keep = shape.rounds + 1
    return replace(design, conversations=shape.conversations, runs=shape.runs, rounds=shape.rounds,
                   stability=design.stability[:keep], adoption=design.adoption[:keep],
                   drift_sd=design.drift_sd * shape.rounds / design.rounds)


def truth(design: Design) -> pd.DataFrame:
    """True population mean per setting, kind and round (exact up to quadrature error)."""
    rows = []
    for s in design.effects:
        for kind in ("agent", "user"):
            sds = design.round_sd(s, kind)
            for r, lg in enumerate(design.logits(s, kind)):
                m = float(np.sum(_GH_W * _sigmoid(lg + sds[r] * _GH_X)) / np.sqrt(2 * np.pi))
                rows.append({"setting": s, "kind": kind, "round": r, "true_mean": m})
    return pd.DataFrame(rows)


def _claim_of_curve(curve: np.ndarray, claim: str) -> float:
    """A claim's value on a curve of per-round means (rounds 0..R): linear, so the population mean
    of the per-conversation values is the claim of the population's mean curve."""
    if claim == "shift":
        return float(curve[1] - curve[0])
    if claim == "level":
        return float(np.mean(curve[1:]))
    x = np.arange(1, len(curve), dtype=float)
    return float(np.polyfit(x, curve[1:], 1)[0] * (x[-1] - x[0]))


def _curves(design: Design) -> dict:
    """(setting, kind) -> the true mean per round (rounds 0..R)."""
    t = truth(design)
    return {(s, k): g.sort_values("round")["true_mean"].to_numpy() for (s, k), g in t.groupby(["setting", "kind"])}


def true_claim(design: Design, setting: str, kind: str, claim: str, versus: str = "", *, curves=None) -> float:
    """The population value of one figure claim (``versus``: minus the same claim of that setting)."""
    curves = curves or _curves(design)
    value = _claim_of_curve(curves[(setting, kind)], claim)
    return value - (_claim_of_curve(curves[(versus, kind)], claim) if versus else 0.0)


def true_change(design: Design, setting: str = "none", kind: str = "agent") -> float:
    """The true decline over the dialog: fitted change in the mean from round 1 to the last."""
    return true_claim(design, setting, kind, "drift")


def true_effect(design: Design, setting: str, claim: str = "level", *, curves=None) -> float:
    """The true difference from ``none`` of ``setting``'s level (or change) over the dialog."""
    return true_claim(design, setting, "agent", claim, versus="none", curves=curves)


def _population(design: Design, rng, n: int) -> dict:
    """Each kind's conversation effects: (level b [n, 1], own drift d * r / R plus round wobble u
    [n, R+1]), the parts every setting shares in full (b) or by ``setting_correlation`` (the rest)."""
    R = design.rounds + 1
    r = np.arange(R) / design.rounds
    out = {}
    for kind in ("agent", "user"):
        b = rng.normal(0, design.spread, size=n)
        d = rng.normal(0, design.drift_sd, size=n)
        out[kind] = (b[:, None], d[:, None] * r[None, :] + rng.normal(0, design.round_noise, (n, R)))
    return out


def _own_parts(design: Design, rng, n: int) -> dict:
    """(setting, kind) -> the setting's own part of each conversation's logit ([n, R+1]): its
    uncorrelated share of drift and wobble, and its departure from the planted effect. Zero (and
    no draws, so studies of earlier designs are unchanged) with correlation 1 and no effect sd."""
    R = design.rounds + 1
    r = np.arange(R)
    rho = design.setting_correlation
    out = {}
    for s in design.effects:
        for kind in ("agent", "user"):
            x = np.zeros((n, R))
            if rho < 1.0:
                own = np.sqrt(1.0 - rho**2)
                x += own * (rng.normal(0, design.drift_sd, size=n)[:, None] * (r / design.rounds)[None, :]
                            + rng.normal(0, design.round_noise, (n, R)))
            if design.effect_sd > 0 and kind == "agent" and s != "none":
                x += rng.normal(0, design.effect_sd, size=n)[:, None] * (r >= 1)[None, :]
            out[(s, kind)] = x
    return out


def simulate_scores(design: Design, seed: int) -> pd.DataFrame:
    """One study's scores table (the columns scoring writes that the statistics read)."""
    rng = np.random.default_rng(seed)
    n, R, k = design.conversations, design.rounds + 1, design.runs
    rho = design.setting_correlation
    eta = _population(design, rng, n)
    own = _own_parts(design, np.random.default_rng([seed, 1]), n)
    parts = []
    for s in design.effects:
        for kind in ("agent", "user"):
            b, shared = eta[kind]
            e = b + (shared if rho == 1.0 else rho * shared)
            p = _sigmoid(design.logits(s, kind)[None, :] + e + own[(s, kind)])[:, :, None]
            score = _judge(design, p, rng, (n, R, k))
            c, r, j = np.meshgrid(np.arange(n), np.arange(R), np.arange(k), indexing="ij")
            parts.append(pd.DataFrame({
                "setting": s, "conversation": c.ravel(), "round": r.ravel(), "turn": 2 * r.ravel(),
                "kind": kind, "sample": j.ravel(), "score": score.ravel(), "context": "ok",
            }))
    return _stop(design, pd.concat(parts, ignore_index=True), np.random.default_rng([seed, 2]))


def _stop(design: Design, scores: pd.DataFrame, rng) -> pd.DataFrame:
    """Plant ``design.stop_share``: in each setting a share of the conversations stops after a
    dialog round drawn from 1..R-1; later probes are left unasked (NaN, ``context`` "overflow")."""
    if not design.stop_share:
        return scores
    scores["error"] = ""
    n = design.conversations
    for s in design.effects:  # every setting draws, in a fixed order, whatever its share
        stops = rng.random(n) < design.stop_share.get(s, 0.0)
        last = np.where(stops, rng.integers(1, max(design.rounds, 2), size=n), design.rounds)
        gone = scores["setting"].eq(s) & (scores["round"].to_numpy() > last[scores["conversation"].to_numpy()])
        scores.loc[gone, ["score", "error", "context"]] = [np.nan, "context overflow: probe not asked", "overflow"]
    return scores


def _judge(design: Design, p: np.ndarray, rng, size: tuple) -> np.ndarray:
    """Probe samples' scores for expected scores ``p`` (broadcast to ``size``)."""
    p = np.broadcast_to(p, size)
    if design.judge == "binary":
        return (rng.random(size) < p).astype(float)
    a = np.clip(p * design.precision, 1e-6, None)
    graded = rng.beta(a, np.clip((1 - p) * design.precision, 1e-6, None), size=size)
    if design.judge == "graded":
        return graded
    binary = (rng.random(size) < p).astype(float)
    return np.where(rng.random(size) < design.binary_share, binary, graded)


def _persona(kind: str, i: int) -> dict:
    word = MARK[kind]
    return {"id": f"sim-{kind}-{i}", "category": "simulated", "system_prompt": f"Always say {word}.",
            "probe": f"Say something about {word}s.", "judge": "contains", "judge_args": {"substring": word}}


def study_records(design: Design, seed: int) -> list[dict]:
    """Transcript records (the self-chat step's JSON) whose judged answers are ``simulate_scores``."""
    if design.judge != "binary" or design.stop_share:
        raise ValueError("study_records: transcripts are judged by 'contains' (binary) and run every round; "
                         "graded judges and planted stops are simulated as score tables only (simulate_scores)")
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
    """Run one study's scores through the figures' tables and score each interval against the truth.

    The drift figure's table gets ``none`` and, when the design has it, ``control`` (its whole
    Holm family); the mitigation figure's gets ``none`` and every other setting.
    """
    kw: dict[str, Any] = {"method": method, "confidence": confidence, "resamples": resamples, "seed": seed}
    curves = _curves(design)
    out = []
    br = stats.by_round(scores[scores["setting"] == "none"], **kw) if round_means else pd.DataFrame()
    for _, r in br.iterrows():
        tv = curves[(r["setting"], r["kind"])][int(r["round"])]
        out.append({"claim": f"round mean ({r['kind']})", "covered": r["ci_low"] <= tv <= r["ci_high"],
                    "significant": np.nan, "true_value": tv})
    ch = stats.change_over_dialog(scores[scores["setting"].isin(["none", stats.CONTROL])], **kw)
    for _, r in ch.iterrows():
        versus = r["versus"] if isinstance(r["versus"], str) else ""
        tv = true_claim(design, r["setting"], r["kind"], r["claim"], versus, curves=curves)
        name = f"{r['claim']} ({r['kind']})" + (" vs control" if versus else "") + (
            " [control]" if r["setting"] == stats.CONTROL else "")
        out.append({"claim": name, "covered": r["ci_low"] <= tv <= r["ci_high"], "estimate": r["change"],
                    "se": r["se"], "significant": bool(r["significant"]), "true_value": tv,
                    "family": int(r["n_comparisons"])})
    if len([s for s in design.effects if s != stats.CONTROL]) > 1:
        pv = stats.vs_baseline(scores[scores["setting"] != stats.CONTROL], **kw)
        for _, r in pv[pv["setting"] != "none"].iterrows():
            tv = true_effect(design, r["setting"], r["claim"], curves=curves)
            out.append({"claim": f"{r['claim']} vs none" + ("" if r["setting"] == _first(design) else " (others)"),
                        "covered": r["ci_low"] <= tv <= r["ci_high"], "significant": bool(r["significant"]),
                        "estimate": r["diff_vs_baseline"], "se": r["se"], "true_value": tv,
                        "family": int(r["n_comparisons"])})
    return out


def _first(design: Design) -> str:
    """The first mitigation setting (where the planted effect sits in the checks)."""
    return next(s for s in design.effects if s not in ("none", stats.CONTROL))


def check(design: Design, *, studies: int, method: str = "t", confidence: float = 0.95, resamples: int = 400,
          seed: int = 0, round_means: bool = True) -> pd.DataFrame:
    """Coverage and rate of "significant" per claim over ``studies`` simulated studies.

    Columns: claim, intervals (how many were scored), coverage, significant_rate (the false-positive
    rate where the truth is 0, the power where it is not), true_value (mean over the claim's targets),
    simulated_se (the sd of the claim's estimate over the studies), mean_se (the mean of the
    tables' own standard errors), family (how many claims its Holm adjustment ran over).
    """
    rows = []
    for i in range(studies):
        sc = simulate_scores(design, seed=seed * 1_000_003 + i)
        rows += analyse(design, sc, method=method, confidence=confidence, resamples=resamples, seed=i,
                        round_means=round_means)
    df = pd.DataFrame(rows)
    if "family" not in df:
        df["family"] = np.nan
    for col in ("estimate", "se"):
        if col not in df:
            df[col] = np.nan
    g = df.groupby("claim", sort=False)
    out = pd.DataFrame({"intervals": g.size(), "coverage": g["covered"].mean(),
                        "significant_rate": g["significant"].mean(), "true_value": g["true_value"].mean(),
                        "simulated_se": g["estimate"].std(ddof=1), "mean_se": g["se"].mean(),
                        "family": g["family"].max()}).reset_index()
    out.insert(0, "method", method)
    out.insert(1, "n", design.conversations)
    return out


# ---------------------------------------------------------------------------------------------
# Fitting a design to a study's scores (method of moments on per-conversation curves).

FIT_POPULATION = 2000  # simulated conversations per evaluation (common random numbers)


def _observed_moments(per: pd.DataFrame) -> np.ndarray:
    """Between-conversation variance of the level and of the fitted change over rounds 1..R, and the
    mean within-conversation residual variance around each conversation's line."""
    level = stats.claim_values(per, "level")
    change = stats.claim_values(per, "drift")
    rounds = stats.dialog_rounds(per)
    y = per[rounds].to_numpy(dtype=float)
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    x = np.where(ok, np.asarray(rounds, dtype=float), 0.0)
    y0 = np.where(ok, y, 0.0)
    xm, ym = x.sum(axis=1) / np.maximum(n, 1), y0.sum(axis=1) / np.maximum(n, 1)
    dx, dy = np.where(ok, x - xm[:, None], 0.0), np.where(ok, y0 - ym[:, None], 0.0)
    sxx, sxy, syy = (dx**2).sum(axis=1), (dx * dy).sum(axis=1), (dy**2).sum(axis=1)
    keep = (n > 2) & (sxx > 0)
    resid = (syy[keep] - sxy[keep] ** 2 / sxx[keep]) / (n[keep] - 2)
    return np.array([level.var(ddof=1), change.var(ddof=1), resid.mean() if keep.any() else np.nan])


def _centres(eta: np.ndarray, means) -> np.ndarray:
    """Per round, the logit centre whose population mean over ``eta`` ([n, R+1]) is ``means[r]``."""
    from scipy.optimize import brentq

    out = []
    for r, m in enumerate(np.clip(np.asarray(means, dtype=float), 0.002, 0.998)):
        # the bracket reaches past the widest eta: the fit's optimiser tries large spreads
        reach = 30.0 + float(np.abs(eta[:, r]).max())
        out.append(brentq(lambda c, r=r, m=m: _sigmoid(c + eta[:, r]).mean() - m, -reach, reach, xtol=1e-4))
    return np.array(out)


FIT_STARTS = ((1.0, 0.5, 0.5), (0.5, 0.2, 2.0), (2.0, 1.0, 0.2))  # spread, drift sd, round noise
FIT_MAX_LOGITS = 10.0
# fits whose summed squared log error is this close to the best's reproduce the variances about as
# well as sampling error allows (the sd of a log variance over 48 conversations is about 0.2)
FIT_TOLERANCE = 0.05  # a fitted spread, drift sd or round noise past this has not settled


def fit_design(scores: pd.DataFrame, *, setting: str = "none", seed: int = 0,
               population: int = FIT_POPULATION) -> Design:
    """The best of :func:`fit_designs`: a :class:`Design` fitted to one setting of a scores table."""
    return fit_designs(scores, setting=setting, seed=seed, population=population)[0]


def fit_designs(scores: pd.DataFrame, *, setting: str = "none", seed: int = 0,
                population: int = FIT_POPULATION) -> list[Design]:
    """Designs fitted to one setting of a scores table (judge errors scored 0, as the
    statistics score them), so power can be simulated in that study's shape; best fit first.

    Read off the table: conversations, dialog rounds R (rounds 0..R must all be there), probe
    samples per round, the judge: ``binary`` when every score is 0 or 1, ``graded`` when none is,
    else ``mixed`` with ``binary_share`` the share of scores that are 0 or 1 (a graded judge's
    exact 0 or 1 counts as binary). The judge's noise comes from the spread of samples within a
    probe (the mean within-probe variance W against the mean s (1 - s) S: noise W / (W + S), for
    any judge bounded in [0, 1]), which sets the graded part's Beta precision; with one sample per
    probe it cannot be measured and the graded part's precision is 4. Fitted:
    ``spread``, ``drift_sd`` and ``round_noise`` so that a large simulated population reproduces the
    stability probe's between-conversation variance of the level and of the fitted change over
    rounds 1..R and the mean residual variance around each conversation's line (least squares on
    the log scale, Nelder-Mead); then each round's centre so that the population means equal the
    observed round means (stability and adoption). With few conversations the variances, so the
    fit, are rough: it gives a study's shape, not its truth.

    The three variances do not pin the three spreads down: a small spread with the judge's noise and
    a wide spread whose extreme p leave the judge little noise can both reproduce them (the laptop
    study's scores are matched by round wobbles of 0.4 and of 2.5 logits). So the fit starts from
    each of ``FIT_STARTS`` and returns every settled fit within ``FIT_TOLERANCE`` of the best
    (distinct by more than 0.15 logits in some spread): power should be read across them. A fit that
    does not settle (the optimiser not converged, or a spread past ``FIT_MAX_LOGITS``) is dropped;
    when none settles, ValueError names the variances it could not reproduce.
    """
    from scipy.optimize import minimize

    sc = stats.treat_judge_errors(scores[scores["setting"] == setting])
    sc = sc[np.isfinite(sc["score"])]
    if sc.empty:
        raise ValueError(f"fit_design: no scored rows of setting {setting!r}")
    rounds = sorted(int(r) for r in sc["round"].unique())
    if rounds != list(range(rounds[-1] + 1)) or len(rounds) < 3:
        raise ValueError(f"fit_design: needs rounds 0..R with R >= 2 (round 0 and two dialog rounds); "
                         f"setting {setting!r} has rounds {rounds}")
    R = rounds[-1]
    runs = int(sc.groupby(["conversation", "round", "kind"]).size().median())
    binary_share = float(sc["score"].isin([0.0, 1.0]).mean())
    judge = "binary" if binary_share == 1.0 else "graded" if binary_share == 0.0 else "mixed"
    precision = 4.0
    if judge != "binary" and runs >= 2:
        within = sc.groupby(["conversation", "round", "kind"])["score"].var(ddof=1).mean()
        s = sc["score"]
        measured = within / (within + (s * (1 - s)).mean())  # Var(s | p) = p (1 - p) - E[s (1 - s) | p]
        graded_part = (measured - binary_share) / (1.0 - binary_share)  # = 1 / (precision + 1)
        precision = float(np.clip(1.0 / max(graded_part, 1e-3) - 1.0, 0.5, 1000.0))
    shape = Design(rounds=R, stability=(0.5,) * (R + 1), adoption=(0.5,) * (R + 1), judge=judge,
                   precision=precision, binary_share=binary_share)
    judge_var = shape.judge_noise()
    means = {k: sc[sc["kind"] == k].groupby("round")["score"].mean().reindex(rounds).to_numpy()
             for k in ("agent", "user")}
    per = stats.per_conversation(sc[sc["kind"] == "agent"])
    observed = _observed_moments(per)
    z = np.random.default_rng(seed).standard_normal((3, population, R + 1))
    frac = np.arange(R + 1) / R

    def predicted(theta):
        spread, drift_sd, noise = np.abs(theta)
        eta = spread * z[0][:, :1] + drift_sd * z[1][:, :1] * frac + noise * z[2]
        p = _sigmoid(_centres(eta, means["agent"])[None, :] + eta)
        # the judge's sampling noise adds p (1 - p) * judge_var / runs to each round's mean
        sim = pd.DataFrame(p, columns=range(R + 1))
        noise_var = (p[:, 1:] * (1 - p[:, 1:])).mean() * judge_var / runs
        x = np.arange(1, R + 1, dtype=float)
        sxx = ((x - x.mean()) ** 2).sum()
        m = _observed_moments(sim)
        return m + noise_var * np.array([1 / R, (R - 1) ** 2 / sxx, 1.0])

    def loss(theta):
        pr = predicted(theta)
        ok = np.isfinite(observed)
        return float(np.sum((np.log(pr[ok] + 1e-4) - np.log(observed[ok] + 1e-4)) ** 2))

    fits = sorted((minimize(loss, x0=np.array(x0), method="Nelder-Mead",
                            options={"xatol": 0.02, "fatol": 1e-4, "maxiter": 200}) for x0 in FIT_STARTS),
                  key=lambda f: f.fun)
    # a flat loss: the model cannot produce the data's variances and the optimiser wanders off
    settled = [np.abs(f.x) for f in fits if f.success and np.abs(f.x).max() <= FIT_MAX_LOGITS
               and f.fun <= fits[0].fun + FIT_TOLERANCE]
    kept: list = []
    for theta in settled:
        if all(np.abs(theta - k).max() > 0.15 for k in kept):
            kept.append(theta)
    if not kept:
        spread, drift_sd, noise = (float(v) for v in np.abs(fits[0].x))
        raise ValueError(
            f"fit_design: the fit of setting {setting!r} did not settle (spread {spread:.3g}, drift sd "
            f"{drift_sd:.3g}, round noise {noise:.3g} logits): the simulator cannot produce its variances "
            f"(level {observed[0]:.3g}, change {observed[1]:.3g}, residual {observed[2]:.3g}) with a "
            f"{judge} judge of noise {judge_var:.3g} and {runs} sample(s) per probe "
            f"({1 - binary_share:.0%} of scores neither 0 nor 1)")
    out = []
    for spread, drift_sd, noise in kept:
        eta = spread * z[0][:, :1] + drift_sd * z[1][:, :1] * frac + noise * z[2]
        centres = {k: tuple(float(v) for v in _sigmoid(_centres(eta, means[k]))) for k in ("agent", "user")}
        out.append(replace(shape, conversations=int(sc["conversation"].nunique()), runs=runs,
                           stability=centres["agent"], adoption=centres["user"],
                           spread=float(spread), round_noise=float(noise), drift_sd=float(drift_sd)))
    return out


# ---------------------------------------------------------------------------------------------
# Power from the data's own variance: the correlation across settings, and the check that the
# simulated standard error of every claim matches the observed one before any power is quoted.

# a claim's simulated se within 25% of the observed one (the sd of an se over 48 conversations is ~10%)
SE_TOLERANCE = 0.25
CORRELATIONS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def paired_level_variance(scores: pd.DataFrame, setting: str, baseline: str = "none") -> float:
    """The between-conversation variance of ``setting``'s level over the dialog minus the baseline's
    (agent probe, over the rounds both reached, judge errors scored 0)."""
    sc = stats.treat_judge_errors(scores[scores["kind"] == "agent"])
    per = {s: stats.per_conversation(sc[sc["setting"] == s]) for s in (setting, baseline)}
    return float(stats.claim_values(per[setting], "level", versus=per[baseline]).var(ddof=1))


def fit_correlation(design: Design, scores: pd.DataFrame, settings: list[str], *, seed: int = 0,
                    studies: int = 1, population: int = FIT_POPULATION) -> Design:
    """``design`` with the ``setting_correlation`` (on :data:`CORRELATIONS`) whose simulated variance of
    the paired level difference is closest (log scale) to the observed one, averaged over the
    ``settings`` compared with ``none`` in ``scores`` (the laptop study gives three)."""
    observed = np.mean([paired_level_variance(scores, s) for s in settings])
    big = replace(design, conversations=population, effects={"none": 0.0, "other": 0.0}, drift_effects={},
                  stop_share={})
    best, best_loss = 1.0, np.inf
    for rho in CORRELATIONS:
        sim_var = np.mean([paired_level_variance(simulate_scores(replace(big, setting_correlation=float(rho)),
                                                                 seed=seed * 7919 + i), "other")
                           for i in range(studies)])
        loss = abs(np.log(sim_var + 1e-6) - np.log(observed + 1e-6))
        if loss < best_loss:
            best, best_loss = float(rho), loss
    return replace(design, setting_correlation=best)


def observed_se(scores: pd.DataFrame, **kw) -> pd.DataFrame:
    """The standard error of every claim of a study's tables, named as :func:`analyse` names them
    (the drift figure's with ``none`` and the control; the mitigation figure's, the first setting
    other than ``none`` and the control as the planted one)."""
    kw = {"method": "t", "confidence": 0.95, "resamples": 2, **kw}
    rows = []
    ch = stats.change_over_dialog(scores[scores["setting"].isin(["none", stats.CONTROL])], **kw)
    for _, r in ch.iterrows():
        versus = r["versus"] if isinstance(r["versus"], str) else ""
        rows.append({"claim": f"{r['claim']} ({r['kind']})" + (" vs control" if versus else "") + (
            " [control]" if r["setting"] == stats.CONTROL else ""), "observed_se": r["se"]})
    others = [s for s in sorted(scores["setting"].unique()) if s not in ("none", stats.CONTROL)]
    if others:
        pv = stats.vs_baseline(scores[scores["setting"] != stats.CONTROL], **kw)
        for _, r in pv[pv["setting"] != "none"].iterrows():
            rows.append({"claim": f"{r['claim']} vs none" + ("" if r["setting"] == others[0] else " (others)"),
                         "setting": r["setting"], "observed_se": r["se"]})
    return pd.DataFrame(rows)


def se_check(design: Design, scores: pd.DataFrame, *, studies: int = 100, seed: int = 0,
             tolerance: float = SE_TOLERANCE) -> pd.DataFrame:
    """Per claim of the fitted study: its observed standard error beside the sd of its estimate
    over ``studies`` studies simulated from ``design`` (with the study's settings, no planted
    effect), and whether power may be quoted for it (``quotable``: the two within ``tolerance``,
    relative). Power for a claim whose simulated se is off says nothing about the study."""
    obs = observed_se(scores)
    settings = [s for s in sorted(scores["setting"].unique()) if s != "none"]
    d = replace(design, effects={"none": 0.0, **{s: 0.0 for s in settings}}, drift_effects={})
    res = check(d, studies=studies, seed=seed, resamples=2, round_means=False).set_index("claim")
    out = obs.groupby("claim", sort=False)["observed_se"].mean().to_frame()
    out["simulated_se"] = res["simulated_se"].reindex(out.index)
    out["ratio"] = out["simulated_se"] / out["observed_se"]
    out["quotable"] = (out["ratio"] - 1).abs().le(tolerance)
    return out.reset_index()
