"""A study as Inspect evaluation logs (``inspect_ai``'s own log types, written by its own writer).

One log per setting (one Inspect task run), one sample per conversation:

* ``messages``: the dialog as the agent saw it: its persona as the system prompt, the topic and
  the user bot's turns as user messages, its own turns as assistant messages (each message's
  metadata holds the turn's speaker, token counts and finish reason). Repetition's re-inserted
  system prompts are not shown: they are the setting's, recorded in the metadata.
* ``scores``: per round ``r``, ``stability_round_r`` (the mean judge score of the agent's own
  persona probe) and ``adoption_round_r`` (of the user bot's persona), a judge error counted
  as 0 as in every claim of the study (analysis/stats.py); each score's explanation and
  metadata hold the probe's answers with their judge scores.
* ``metadata``: the setting, the seed, both personas with their judges, and every probe with
  every answer, its judge score and judge error.

The eval's results hold each score's mean over conversations (the point estimate of
``tables/<setting>/by_round.csv``). Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from importlib import metadata as importlib_metadata
from pathlib import Path

import pandas as pd

from personadrift.analysis.stats import JUDGE_ERROR_TREATMENT, treat_judge_errors
from personadrift.browser.data import (
    SCORE_COLUMNS,
    read_transcript,
    setting_record,
    transcript_files,
    turn_list,
)
from personadrift.errors import InputError
from personadrift.generation.dialog import agent_messages
from personadrift.tables import read_table

SCORE_NAMES = {"agent": "stability", "user": "adoption"}  # probe kind -> score name prefix
# characters of each answer in a score's explanation (the whole text is in its metadata)
EXPLANATION_CHARS = 200


def score_name(kind: str, rnd: int) -> str:
    return f"{SCORE_NAMES[kind]}_round_{rnd}"


def read_scores(csvs: list) -> pd.DataFrame:
    """Every score table as one frame; a table without a needed column fails naming the file and
    the column."""
    frames = []
    for path in csvs:
        df = read_table(path)
        for col in SCORE_COLUMNS:
            if col not in df.columns:
                raise InputError(path, col, "column missing from the scores table")
        if "error" not in df.columns:
            df["error"] = float("nan")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*SCORE_COLUMNS, "error"])
    return pd.concat(frames, ignore_index=True)


def _finite(x) -> float | None:
    return None if x is None or pd.isna(x) or not math.isfinite(float(x)) else float(x)


def _text(x) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or str(x) == "" else str(x)


def _persona(p: dict) -> dict:
    return {
        k: p.get(k) for k in ("id", "category", "system_prompt", "probe", "judge", "judge_args")
    }


def _messages(rec: dict, setting: str, model: str) -> list:
    from inspect_ai.model import ChatMessage, ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    turns, _ = turn_list(rec)
    out: list[ChatMessage] = []
    for i, m in enumerate(agent_messages(rec["agent"]["system_prompt"], rec["history"])):
        # message 0 is the system prompt, then one message per history entry
        turn = turns[i - 1] if i else {}
        meta = {k: v for k, v in turn.items() if k != "text" and v is not None} or None
        mid = f"{setting}-{rec['conversation']}-{i}"  # stable ids: one study, one log
        if m["role"] == "system":
            out.append(ChatMessageSystem(id=mid, content=m["content"]))
        elif m["role"] == "user":
            out.append(
                ChatMessageUser(
                    id=mid, content=m["content"], metadata=meta, source="input" if i == 1 else None
                )
            )
        else:
            out.append(
                ChatMessageAssistant(
                    id=mid, content=m["content"], metadata=meta, model=model, source="generate"
                )
            )
    return out


def _probes(rec: dict, rows: dict) -> list[dict]:
    """Every probe with every answer and its judge score.

    ``rows``: (round, kind, sample) -> the score table's row.
    """
    out = []
    for p in rec["probes"]:
        persona = rec[p["kind"]]
        completions = p.get("completions") if isinstance(p.get("completions"), list) else []
        answers = []
        for i, text in enumerate(p["answers"]):
            row = rows.get((int(p["round"]), p["kind"], i), {})
            c = completions[i] if i < len(completions) and isinstance(completions[i], dict) else {}
            answers.append(
                {
                    "sample": i,
                    "text": text,
                    "score": _finite(row.get("score")),
                    "error": _text(row.get("error")),
                    "new_tokens": c.get("new_tokens"),
                    "finish_reason": c.get("finish_reason"),
                }
            )
        out.append(
            {
                "round": int(p["round"]),
                "turn": int(p["turn"]),
                "kind": p["kind"],
                "persona": persona["id"],
                "judge": persona.get("judge"),
                "judge_args": persona.get("judge_args"),
                "question": p["question"],
                "context": p.get("context"),
                "answers": answers,
            }
        )
    return out


def _round_scores(probes: list[dict], conv_rows: pd.DataFrame) -> dict:
    """Per probe kind and round: the conversation's mean score (judge errors as every claim
    treats them), with the probe's answers as the score's explanation and metadata."""
    from inspect_ai.scorer import Score

    treated = treat_judge_errors(conv_rows, JUDGE_ERROR_TREATMENT)
    scores = {}
    for p in sorted(probes, key=lambda p: (p["kind"] != "agent", p["round"])):
        got = treated[(treated["kind"] == p["kind"]) & (treated["round"] == p["round"])][
            "score"
        ].astype(float)
        got = got[got.map(math.isfinite)]
        lines = [
            f"judge {p['judge']} on the {p['kind']} persona {p['persona']!r}, round {p['round']}:"
        ]
        for a in p["answers"]:
            shown = (
                a["text"]
                if len(a["text"]) <= EXPLANATION_CHARS
                else a["text"][:EXPLANATION_CHARS] + "..."
            )
            verdict = f"error ({a['error']})" if a["error"] else a["score"]
            lines.append(f"[{a['sample']}] {verdict}: {shown!r}")
        meta = {
            "question": p["question"],
            "judge": p["judge"],
            "judge_args": p["judge_args"],
            "context": p["context"],
            "answers": p["answers"],
            "judge_errors": JUDGE_ERROR_TREATMENT,
        }
        name = score_name(p["kind"], p["round"])
        if len(got):
            scores[name] = Score(
                value=float(got.mean()), explanation="\n".join(lines), metadata=meta
            )
        else:
            scores[name] = Score.unscored(
                reason="probe not asked: context overflow",
                explanation="\n".join(lines),
                metadata=meta,
            )
    return scores


def sample(rec: dict, conv_rows: pd.DataFrame, model: str):
    """One conversation as an Inspect sample."""
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ModelOutput

    setting = setting_record(rec)
    rows = {
        (int(r["round"]), str(r["kind"]), int(r["sample"])): r for r in conv_rows.to_dict("records")
    }
    probes = _probes(rec, rows)
    messages = _messages(rec, setting["name"], model)
    last_agent = next((m.text for m in reversed(messages) if m.role == "assistant"), "")
    agent, user = _persona(rec["agent"]), _persona(rec["user"])
    return EvalSample(
        id=int(rec["conversation"]),
        epoch=1,
        input=rec["topic"],
        target="",
        messages=messages,
        output=ModelOutput.from_content(model=model, content=last_agent),
        scores=_round_scores(probes, conv_rows),
        metadata={
            "setting": setting["name"],
            "setting_family": setting["family"],
            "setting_method": setting["method"],
            "setting_value": setting["value"],
            "conversation": int(rec["conversation"]),
            "seed": rec.get("seed"),
            "fingerprint": rec.get("fingerprint"),
            "topic": rec["topic"],
            "agent_persona": agent["id"],
            "agent_category": agent["category"],
            "agent_judge": agent["judge"],
            "user_persona": user["id"],
            "user_category": user["category"],
            "user_judge": user["judge"],
            "user_has_system_prompt": rec.get("user_has_system_prompt", True),
            "complete": rec.get("complete"),
            "agent": agent,
            "user": user,
            "probes": probes,
        },
    )


def _version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def setting_log(study: str, model: str, recs: list[dict], scores: pd.DataFrame):
    """One setting's conversations as one Inspect evaluation log (not yet written)."""
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalMetric,
        EvalResults,
        EvalScore,
        EvalSpec,
        EvalStats,
    )

    setting = setting_record(recs[0])
    name = setting["name"]
    samples = [
        sample(rec, scores[scores["conversation"] == int(rec["conversation"])], model)
        for rec in recs
    ]
    names = sorted(
        {n for s in samples for n in s.scores},
        key=lambda n: (not n.startswith("stab"), int(n.rsplit("_", 1)[1])),
    )
    results = []
    for n in names:
        values = [
            s.scores[n].value for s in samples if n in s.scores and math.isfinite(s.scores[n].value)
        ]
        metrics = (
            {"mean": EvalMetric(name="mean", value=sum(values) / len(values))} if values else {}
        )
        results.append(
            EvalScore(
                name=n,
                scorer=n,
                scored_samples=len(values),
                unscored_samples=len(samples) - len(values),
                metrics=metrics,
            )
        )
    provs = [rec.get("provenance") or {} for rec in recs]
    created = sorted(p["created"] for p in provs if p.get("created"))
    first = provs[0]
    run = hashlib.sha256(
        f"{study}/{name}/{[r.get('fingerprint') for r in recs]}".encode()
    ).hexdigest()[:22]
    spec = EvalSpec(
        eval_id=run,
        run_id=run,
        task_id=run,
        created=created[0] if created else pd.Timestamp.now("UTC").isoformat(),
        task=f"{study}/{name}",
        task_display_name=f"{study}: {name}",
        task_args={"setting": name},
        task_description="persona drift self-chat (personadrift): persona stability and adoption "
        "per round",
        dataset=EvalDataset(name=study, samples=len(samples), sample_ids=[s.id for s in samples]),
        model=model,
        config=EvalConfig(epochs=1),
        packages={k: v for k in ("personadrift", "inspect_ai") if (v := _version(k))},
        metadata={
            "study": study,
            "setting": recs[0]["setting"] if isinstance(recs[0]["setting"], dict) else setting,
            "seed": recs[0].get("seed"),
            "seeds": sorted({r.get("seed") for r in recs if r.get("seed") is not None}),
            "judge_errors": JUDGE_ERROR_TREATMENT,
            "sampling": first.get("sampling"),
            "protocol": first.get("protocol"),
            "model": first.get("model"),
            "backend": first.get("backend"),
            "cpu_numerics": first.get("cpu_numerics"),
            "git_commit": first.get("git_commit"),
        },
    )
    return EvalLog(
        status="success",
        eval=spec,
        results=EvalResults(
            total_samples=len(samples), completed_samples=len(samples), scores=results
        ),
        stats=EvalStats(
            started_at=created[0] if created else "", completed_at=created[-1] if created else ""
        ),
        samples=samples,
    )


def model_label(recs: list[dict], model: str | None) -> str:
    """Inspect's ``provider/model`` for the study's model: the config's name, else the
    transcripts'."""
    if not model:
        m = (recs[0].get("provenance") or {}).get("model") or {}
        model = m.get("name") or m.get("id") or "unknown"
    return model if "/" in model else f"personadrift/{model}"


def export_study(
    transcript_dirs: list, score_csvs: list, out_dir, *, study: str, model: str | None = None
) -> dict:
    """Write ``out_dir/<setting>.eval`` for every setting found in the transcripts.

    Every conversation needs its rows in the score tables; a missing setting or conversation
    fails naming the transcript.
    """
    from inspect_ai.log import write_eval_log

    scores = read_scores(score_csvs)
    by_setting: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path in transcript_files(transcript_dirs):
        rec = read_transcript(path)
        by_setting[setting_record(rec)["name"]].append((path, rec))
    if not by_setting:
        raise InputError(
            ", ".join(map(str, transcript_dirs)) or "(none)",
            None,
            "no conv-*.json transcripts found",
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, found in by_setting.items():
        found.sort(key=lambda pr: int(pr[1]["conversation"]))
        rows = scores[scores["setting"].astype(str) == name]
        have = set(rows["conversation"].astype(int))
        for path, rec in found:
            if int(rec["conversation"]) not in have:
                raise InputError(
                    path,
                    "conversation",
                    f"no row of the score tables holds setting {name!r}, "
                    f"conversation {rec['conversation']}",
                )
        recs = [rec for _, rec in found]
        log = setting_log(study, model_label(recs, model), recs, rows)
        target = out / f"{name}.eval"
        write_eval_log(log, str(target))
        written[name] = len(recs)
    return {"logs": len(written), "samples": written}
