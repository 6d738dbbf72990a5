"""Scoring probe answers with the personas' judges into a tidy table.

One row per conversation x round x probe kind x sample. ``kind`` is ``agent`` (does the agent
keep its own persona: stability) or ``user`` (has it taken on the user bot's persona:
adoption). A judge that raises is recorded in ``error`` with a NaN score; nothing is dropped.
``new_tokens``, ``finish_reason`` and ``context`` come from the transcript (empty for runs made
before they were recorded); a probe the context policy left unasked is one NaN row with
``context`` = ``overflow``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personadrift.protocol import judges
from personadrift.storage import read_json

COLUMNS = [
    "setting", "conversation", "round", "turn", "kind", "sample", "score", "error",
    "persona", "category", "agent_persona", "agent_category", "user_persona", "user_category",
    "topic", "answer_chars", "new_tokens", "finish_reason", "context",
]


def transcript_paths(dirs: list[str | Path]) -> list[Path]:
    out = []
    for d in dirs:
        d = Path(d)
        out += sorted(d.glob("conv-*.json")) if d.is_dir() else [d]
    return out


def score_answer(persona: dict, text: str, fluency_gate: bool) -> tuple[float, str]:
    try:
        score = judges.run_judge(persona["judge"], persona["judge_args"], text)
        if fluency_gate:
            score = judges.gate(score, text)
        return float(score), ""
    except Exception as exc:  # record, never drop: a broken judge must show in the table
        return float("nan"), f"{type(exc).__name__}: {exc}"


def score_records(records: list[dict], *, fluency_gate: bool = False) -> pd.DataFrame:
    rows = []
    for rec in records:
        if not rec.get("complete"):
            raise ValueError(f"conversation {rec['conversation']} is incomplete")
        for probe in rec["probes"]:
            persona = rec[probe["kind"]]
            completions = probe.get("completions") or []
            answers = list(enumerate(probe["answers"]))
            if not answers and probe.get("context") == "overflow":
                answers = [(0, None)]  # unasked: kept as a row so the round shows what happened
            for i, answer in answers:
                if answer is None:
                    score, error = float("nan"), "context overflow: probe not asked"
                else:
                    score, error = score_answer(persona, answer, fluency_gate)
                usage = completions[i] if i < len(completions) else {}
                rows.append({
                    "setting": rec["setting"]["name"],
                    "conversation": rec["conversation"],
                    "round": probe["round"],
                    "turn": probe["turn"],
                    "kind": probe["kind"],
                    "sample": i,
                    "score": score,
                    "error": error,
                    "persona": persona["id"],
                    "category": persona["category"],
                    "agent_persona": rec["agent"]["id"],
                    "agent_category": rec["agent"]["category"],
                    "user_persona": rec["user"]["id"],
                    "user_category": rec["user"]["category"],
                    "topic": rec["topic"],
                    "answer_chars": len(answer) if answer is not None else 0,
                    "new_tokens": usage.get("new_tokens", ""),
                    "finish_reason": usage.get("finish_reason") or "",
                    "context": probe.get("context", ""),
                })
    return pd.DataFrame(rows, columns=COLUMNS)


def score_dirs(dirs: list[str | Path], *, fluency_gate: bool = False) -> pd.DataFrame:
    records = [read_json(p) for p in transcript_paths(dirs)]
    return score_records(records, fluency_gate=fluency_gate)
