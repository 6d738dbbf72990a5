"""Write the static browser: one ``index.html`` (app, style and study index inline) and one
small JavaScript data file per conversation and per judged persona, loaded on demand.

Browsers block ``fetch()`` of ``file://`` URLs, so each data file is a script that hands its
JSON to ``PD.receive(key, data)``; the page adds a ``<script>`` tag when it needs one. The
page thus opens from the file system and inside ``snakemake --report`` (zip) with no server,
and a study of thousands of conversations costs one small page plus what is read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from personadrift.browser.data import (
    COMPLIANT,
    FLAG_CONTEXT,
    FLAG_JUDGE_ERROR,
    FLAG_LENGTH,
    FLAG_NO_TOKENS,
    JudgeAudit,
    conversation_view,
    persona_table,
    read_scores,
    read_transcript,
    setting_record,
    transcript_files,
)
from personadrift.errors import InputError
from personadrift.storage import umask

log = logging.getLogger(__name__)


def _js_json(obj) -> str:
    # ASCII-only and "</" escaped: safe inside an inline <script> and in any file encoding
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _data_script(key: str, obj) -> str:
    return f"PD.receive({json.dumps(key)},{_js_json(obj)});\n"


def _template(name: str) -> str:
    return resources.files("personadrift.browser").joinpath("template", name).read_text(encoding="utf-8")


class _Registry:
    """Small tables the index refers to by position (personas, topics, settings)."""

    def __init__(self):
        self.items: list = []
        self.pos: dict = {}

    def add(self, key, item=None) -> int:
        if key not in self.pos:
            self.pos[key] = len(self.items)
            self.items.append(item if item is not None else key)
        return self.pos[key]


def build_browser(transcript_dirs: list, score_csvs: list, out_dir, *, pool_json=None, calibration_csv=None,
                  study: str | None = None, model: str | None = None, caps: dict | None = None) -> dict:
    """Build the browser folder ``out_dir`` (replaced atomically); returns its size summary."""
    out_dir = Path(out_dir)
    files = transcript_files(transcript_dirs)
    if not files:
        raise InputError(", ".join(map(str, transcript_dirs)) or "(none)", None, "no conv-*.json transcripts found")
    scores = read_scores(score_csvs)
    persona_rows, pool_rule = persona_table(pool_json, calibration_csv)
    personas = _Registry()
    for row in persona_rows:
        personas.add(row["id"], row)
    settings, topics, audit = _Registry(), _Registry(), JudgeAudit()
    convs: dict[str, list] = {"s": [], "c": [], "a": [], "u": [], "t": [], "as": [], "us": [], "f": [], "n": []}
    seen: dict[tuple, Path] = {}
    rounds: set[int] = set()
    means: list = []
    unasked: list = []

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        for path in files:
            rec = read_transcript(path)
            view, entry = conversation_view(rec, scores)
            s = settings.add(entry["setting"], {**setting_record(rec), "n": 0})
            key = (entry["setting"], entry["conversation"])
            if key in seen:
                raise InputError(path, "conversation",
                                 f"conversation {key[1]} of setting {key[0]} is also in {seen[key]}")
            seen[key] = path
            settings.items[s]["n"] += 1
            for role in ("agent", "user"):
                p = rec[role]
                i = personas.add(p["id"], {"id": p["id"], "category": p.get("category"), "kept": None})
                for k in ("category", "system_prompt", "probe", "judge", "judge_args"):
                    personas.items[i].setdefault(k, p.get(k))
            rel = f"c/{s}/{entry['conversation']}"
            _write(tmp / "data" / f"{rel}.js", _data_script(rel, view))
            for p in view["probes"]:
                persona = rec[p["kind"]]
                for i, sample in enumerate(p["samples"]):
                    audit.add(persona, p["question"], sample, {"s": s, "c": entry["conversation"], "r": p["round"],
                                                               "k": p["kind"], "i": i})
            convs["s"].append(s)
            convs["c"].append(entry["conversation"])
            convs["a"].append(personas.pos[rec["agent"]["id"]])
            convs["u"].append(personas.pos[rec["user"]["id"]])
            convs["t"].append(topics.add(rec["topic"]))
            convs["f"].append(entry["flags"])
            convs["n"].append(entry["turns"])
            means.append(entry["means"])
            unasked.append((s, entry["unasked"]))
            rounds.update(entry["unasked"])
            for d in entry["means"].values():
                rounds.update(d)
        round_list = sorted(rounds)
        for i, item in enumerate(settings.items):  # per round: conversations still running, and stopped early
            stopped = [sum(1 for s, u in unasked if s == i and r in u) for r in round_list]
            item["stopped"] = stopped
            item["running"] = [item["n"] - k for k in stopped]
        for m in means:  # per-round means aligned with the study's rounds (null where none)
            for kind, col in (("agent", "as"), ("user", "us")):
                convs[col].append([None if r not in m[kind] else round(m[kind][r], 4) for r in round_list])
        summaries = sorted(audit.summaries(), key=lambda a: personas.pos[a["persona"]])
        for summary in summaries:
            idx = personas.pos[summary["persona"]]
            summary["p"] = idx
            _write(tmp / "data" / f"j/{idx}.js", _data_script(f"j/{idx}", audit.detail(summary["persona"])))
        index = {
            "study": study, "model": model, "caps": caps or {}, "pool_rule": pool_rule,
            "compliant": COMPLIANT, "rounds": round_list, "settings": settings.items, "personas": personas.items,
            "topics": topics.items, "convs": convs, "audit": summaries,
            "flags": {"length": FLAG_LENGTH, "context": FLAG_CONTEXT, "judge_error": FLAG_JUDGE_ERROR,
                      "no_tokens": FLAG_NO_TOKENS},
        }
        html = (_template("index.html")
                .replace("/*PD_STYLE*/", _template("style.css"))
                .replace("/*PD_INDEX*/", "window.PD_INDEX=" + _js_json(index) + ";")
                .replace("/*PD_APP*/", _template("app.js")))
        _write(tmp / "index.html", html)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = weight(out_dir)
    log.info("browser: %d conversations, %d settings, %d personas -> %s (%s)", len(files), len(settings.items),
             len(personas.items), out_dir, summary)
    return summary


def weight(out_dir) -> dict:
    """Bytes of the page itself (what opening it reads) and of all data files."""
    out_dir = Path(out_dir)
    data = [p.stat().st_size for p in (out_dir / "data").rglob("*.js")]
    return {"index_html_bytes": (out_dir / "index.html").stat().st_size, "data_files": len(data),
            "data_bytes": sum(data), "largest_data_file_bytes": max(data, default=0)}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _replace_dir(new: Path, out: Path) -> None:
    """Swap the finished folder in; a reader never sees half a browser."""
    os.chmod(new, 0o777 & ~umask())  # mkdtemp made it 0700: give it the mode mkdir would
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
