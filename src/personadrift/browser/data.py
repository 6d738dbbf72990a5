"""What the browser shows, read from a study's transcripts, score tables and persona pool.

Data flows one way: this module only reads. It accepts transcripts without the newer per-turn
keys (``turns`` as a list, per-probe ``completions``, ``context``): an older run just shows no
token counts and no markers, and says so.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from personadrift.errors import InputError
from personadrift.storage import read_json
from personadrift.tables import read_table

SCORE_COLUMNS = ("setting", "conversation", "round", "kind", "sample", "score")
TRANSCRIPT_KEYS = ("conversation", "agent", "user", "topic", "history", "probes", "setting")
PROBE_KEYS = ("round", "turn", "kind", "question", "answers")
COMPLIANT = 0.5  # "started compliant": first scored round's mean agent score >= this
HIST_BINS = 10
EXTREMES = 5  # highest and lowest scored answers kept per persona

# Flags of a conversation (a bit set, so the index stays small).
FLAG_LENGTH = 1  # a reply or probe answer stopped at max_new_tokens
FLAG_CONTEXT = 2  # a prompt was truncated or overflowed the context limit
FLAG_JUDGE_ERROR = 4  # a judge raised on one of its answers
FLAG_NO_TOKENS = 8  # an older transcript: no token counts or finish reasons recorded


@dataclass
class Scores:
    """Per-sample judge scores keyed by (setting, conversation, round, kind, sample)."""

    by_sample: dict = field(default_factory=dict)

    def get(self, setting: str, conv: int, rnd: int, kind: str, sample: int) -> tuple[float | None, str]:
        return self.by_sample.get((setting, conv, rnd, kind, sample), (None, ""))


def read_scores(csvs: list) -> Scores:
    """All score tables; a table without a needed column fails naming the file and column."""
    out = Scores()
    for path in csvs:
        df = read_table(path)
        for col in SCORE_COLUMNS:
            if col not in df.columns:
                raise InputError(path, col, "column missing from the scores table")
        err = ["" if pd.isna(e) else str(e) for e in df["error"]] if "error" in df.columns else [""] * len(df)
        for row, e in zip(df[list(SCORE_COLUMNS)].itertuples(index=False), err):
            score = None if pd.isna(row.score) else float(row.score)
            key = (str(row.setting), int(row.conversation), int(row.round), str(row.kind), int(row.sample))
            out.by_sample[key] = (score, e)
    return out


def transcript_files(dirs: list) -> list[Path]:
    files = []
    for d in map(Path, dirs):
        files += sorted(d.rglob("conv-*.json")) if d.is_dir() else [d]
    return files


def read_transcript(path: Path) -> dict:
    """One transcript, checked for what the browser reads; a problem names the file and field."""
    try:
        rec = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"not valid JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise InputError(path, None, "not a transcript (expected a JSON object)")
    for key in TRANSCRIPT_KEYS:
        if key not in rec:
            raise InputError(path, key, "key missing from the transcript")
    for role in ("agent", "user"):
        if not isinstance(rec[role], dict) or "id" not in rec[role]:
            raise InputError(path, f"{role}.id", "persona record without an id")
    if not isinstance(rec["history"], list):
        raise InputError(path, "history", "expected a list of utterances")
    for i, p in enumerate(rec["probes"]):
        for key in PROBE_KEYS:
            if key not in p:
                raise InputError(path, f"probes[{i}].{key}", "key missing from the probe")
        if p["kind"] not in ("agent", "user"):
            raise InputError(path, f"probes[{i}].kind", f"expected 'agent' or 'user', got {p['kind']!r}")
    return rec


def setting_record(rec: dict) -> dict:
    s = rec["setting"]
    if isinstance(s, str):  # defensive: a bare name
        return {"name": s, "family": s, "method": s, "value": None}
    return {k: s.get(k) for k in ("name", "family", "method", "value")}


def _speaker(i: int) -> str:
    return "topic" if i == 0 else ("agent" if i % 2 else "user")


def turn_list(rec: dict) -> tuple[list[dict], bool]:
    """Each utterance with its speaker, token counts, finish reason and context verdict.

    Returns the turns and whether token information was recorded (newer transcripts).
    """
    found = rec.get("turns")
    have = isinstance(found, list) and len(found) == len(rec["history"])
    meta: list = found if isinstance(found, list) and have else []
    turns = []
    for i, text in enumerate(rec["history"]):
        m = meta[i] if have and isinstance(meta[i], dict) else {}
        turns.append({
            "speaker": m.get("speaker") or _speaker(i),
            "text": text,
            "prompt_tokens": m.get("prompt_tokens"),
            "new_tokens": m.get("new_tokens"),
            "finish_reason": m.get("finish_reason"),
            "context": m.get("context"),
        })
    return turns, have


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def is_echo(answer: str, question: str) -> bool:
    """The answer repeats the probe question (or a long stretch of it) instead of answering."""
    a, q = _norm(answer), _norm(question)
    return bool(a) and (q in a or (len(a) >= 12 and a in q))


def is_empty(answer: str) -> bool:
    return not str(answer).strip()


def _rounded(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


def conversation_view(rec: dict, scores: Scores) -> tuple[dict, dict]:
    """The per-conversation data file, and its small index entry (per-round means, flags)."""
    setting = setting_record(rec)["name"]
    conv = int(rec["conversation"])
    turns, have_tokens = turn_list(rec)
    flags = 0 if have_tokens else FLAG_NO_TOKENS
    for t in turns:
        flags |= FLAG_LENGTH if t["finish_reason"] == "length" else 0
        flags |= FLAG_CONTEXT if t["context"] not in (None, "ok") else 0
    probes: list = []
    per_round: dict[str, dict] = {"agent": {}, "user": {}}
    for p in rec["probes"]:
        completions = p.get("completions")
        completions = completions if isinstance(completions, list) and len(completions) == len(p["answers"]) else None
        samples = []
        for i, text in enumerate(p["answers"]):
            score, error = scores.get(setting, conv, int(p["round"]), p["kind"], i)
            c = completions[i] if completions and isinstance(completions[i], dict) else {}
            samples.append({"text": text, "score": score, "error": error or None,
                            "prompt_tokens": c.get("prompt_tokens"), "new_tokens": c.get("new_tokens"),
                            "finish_reason": c.get("finish_reason"),
                            "empty": is_empty(text), "echo": is_echo(text, p["question"])})
            flags |= FLAG_LENGTH if c.get("finish_reason") == "length" else 0
            flags |= FLAG_JUDGE_ERROR if error else 0
            if score is not None:
                per_round[p["kind"]].setdefault(int(p["round"]), []).append(score)
        if completions is None and p["answers"]:
            flags |= FLAG_NO_TOKENS
        flags |= FLAG_CONTEXT if p.get("context") not in (None, "ok") else 0
        probes.append({"round": int(p["round"]), "turn": int(p["turn"]), "kind": p["kind"],
                       "question": p["question"], "context": p.get("context"), "samples": samples})
    means = {k: {r: sum(v) / len(v) for r, v in d.items()} for k, d in per_round.items()}
    view = {
        "setting": setting_record(rec), "conversation": conv, "seed": rec.get("seed"),
        "fingerprint": rec.get("fingerprint"), "topic": rec["topic"],
        "agent": rec["agent"], "user": rec["user"], "user_has_system_prompt": rec.get("user_has_system_prompt", True),
        "complete": rec.get("complete"), "have_tokens": have_tokens, "turns": turns, "probes": probes,
        "created": (rec.get("provenance") or {}).get("created"),
        "git_commit": (rec.get("provenance") or {}).get("git_commit"),
    }
    # rounds whose probes the context policy left unasked (context_policy: stop ended the dialog)
    unasked = sorted({int(p["round"]) for p in rec["probes"] if p.get("context") == "overflow"})
    return view, {"setting": setting, "conversation": conv, "agent": rec["agent"], "user": rec["user"],
                  "topic": rec["topic"], "means": means, "flags": flags, "turns": len(turns), "unasked": unasked}


class JudgeAudit:
    """Per persona: the distribution of its judge's scores over every probe answer it scored,
    the highest and lowest scored answers, and how it scored empty and echoed answers."""

    def __init__(self):
        self.personas: dict[str, dict] = {}

    def add(self, persona: dict, question: str, answer: dict, where: dict) -> None:
        a = self.personas.setdefault(persona["id"], {
            "persona": persona, "question": question, "scores": [], "errors": 0, "unscored": 0, "errors_by": {},
            "top": [], "bottom": [], "empty": [], "echo": [], "n_empty": 0, "n_echo": 0,
            "empty_scores": [], "echo_scores": [], "seq": 0,
        })
        a["seq"] += 1
        item = {**where, **{k: answer[k] for k in ("text", "score", "error", "empty", "echo", "finish_reason")}}
        if answer["score"] is None:  # a judge that raised, or an answer no score table covers
            a["errors" if answer["error"] else "unscored"] += 1
            if answer["error"]:  # per setting (its index in the study's settings)
                a["errors_by"][where.get("s")] = a["errors_by"].get(where.get("s"), 0) + 1
            return
        s = answer["score"]
        a["scores"].append(s)
        # bounded heaps; the sequence number keeps ties in reading order and never compares dicts
        _push(a["top"], (s, -a["seq"], item))
        _push(a["bottom"], (-s, -a["seq"], item))
        for kind in ("empty", "echo"):
            if answer[kind]:
                a[f"n_{kind}"] += 1
                a[f"{kind}_scores"].append(s)
                _push(a[kind], (s, -a["seq"], item))  # the highest-scored ones are the suspicious ones

    def summaries(self) -> list[dict]:
        out = []
        for pid, a in self.personas.items():
            sc = a["scores"]
            hist = [0] * HIST_BINS
            for s in sc:
                hist[min(HIST_BINS - 1, max(0, int(s * HIST_BINS)))] += 1
            out.append({
                "persona": pid, "n": len(sc), "errors": a["errors"], "unscored": a["unscored"],
                "errors_by_setting": [[s, k] for s, k in sorted(a["errors_by"].items(), key=lambda x: str(x[0]))],
                "mean": _rounded(sum(sc) / len(sc)) if sc else None,
                "min": _rounded(min(sc)) if sc else None, "max": _rounded(max(sc)) if sc else None,
                "hist": hist, "n_empty": a["n_empty"], "n_echo": a["n_echo"],
                "empty_mean": _rounded(_mean(a["empty_scores"])), "echo_mean": _rounded(_mean(a["echo_scores"])),
            })
        return out

    def detail(self, pid: str) -> dict:
        a = self.personas[pid]
        ordered = lambda heap: [x[2] for x in sorted(heap, key=lambda x: (-x[0], -x[1]))]  # noqa: E731
        return {"persona": pid, "question": a["question"], "highest": ordered(a["top"]),
                "lowest": ordered(a["bottom"]), "empty": ordered(a["empty"]), "echo": ordered(a["echo"])}


def _push(heap: list, entry: tuple) -> None:
    if len(heap) < EXTREMES:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def persona_table(pool_json, calibration_csv) -> tuple[list[dict], str | None]:
    """Every persona of the pool with whether it was kept and why (calibration summary)."""
    rows, rule = {}, None
    if pool_json is not None:
        pool = read_json(pool_json)
        for key in ("personas", "dropped"):
            if key not in pool:
                raise InputError(pool_json, key, "key missing from the persona pool")
        rule = pool.get("rule")
        for kept, key in ((True, "personas"), (False, "dropped")):
            for p in pool[key]:
                rows[p["id"]] = {**{k: p.get(k) for k in ("id", "category", "system_prompt", "probe", "judge",
                                                          "judge_args")},
                                 "kept": kept, "reason": "", "adherence": _rounded(p.get("round0_adherence")),
                                 "no_persona": _rounded(p.get("no_persona_score")), "lift": None}
    if calibration_csv is not None:
        df = read_table(calibration_csv)
        for col in ("persona", "kept"):
            if col not in df.columns:
                raise InputError(calibration_csv, col, "column missing from the calibration summary")
        for r in df.to_dict("records"):
            row = rows.setdefault(str(r["persona"]), {"id": str(r["persona"]), "category": r.get("category")})
            kept = r["kept"]
            row["kept"] = kept if isinstance(kept, bool) else str(kept).strip().lower() == "true"
            row["reason"] = "" if pd.isna(r.get("reason")) else str(r.get("reason") or "")
            for col in ("adherence", "no_persona", "lift"):
                v = r.get(col)
                row[col] = None if v is None or pd.isna(v) else _rounded(float(v))
    return list(rows.values()), rule
