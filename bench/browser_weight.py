"""Page weight and time-to-interactive of the transcript browser on a paper-sized study.

    python bench/browser_weight.py [--conversations 200] [--settings 12] [--rounds 8] [--runs 2]
                                   [--reply-words 280] [--out DIR] [--keep]

Writes synthetic transcripts in the transcript contract (the paper config's shape: 200
conversations x 12 settings = 2,400, 8 rounds, 2 probe samples, replies of about 400 tokens,
as if every reply used its whole max_new_tokens) and a score table per setting (random scores
with a downward trend: the browser's cost does not depend on the values), builds the browser,
and reports its weight: the page itself (what opening it reads) and the lazily loaded data
files. If headless Chromium is installed it also opens the index, one conversation, the
12-setting comparison and a judge audit, and reports the page's own time to render each
(``performance.now()`` when the view finished, read from the DOM) and the wall time of the
whole Chromium process (start-up included).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from personadrift.browser import build_browser
from personadrift.storage import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' headless Chromium driver
from support.headless import dump_dom, find_chromium  # noqa: E402

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more write "
         "go see number no way could people my than first water been call who oil its now find long down day did "
         "get come made may part summer season letter city answer question persona probe dialog").split()
SETTINGS = ["none", "control", "split-k0.9", "split-k0.75", "split-k0.5", "split-k0.25", "repeat-every1",
            "repeat-every2", "repeat-every4", "cfg-g1.25", "cfg-g1.5", "cfg-g2", "cfg-g3"]


def text(r: random.Random, words: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(words)).capitalize() + "."


def persona(i: int) -> dict:
    categories = ("pattern", "multiple_choice", "persona", "memorization", "language")
    return {"id": f"persona-{i:03d}", "category": categories[i % 5],
            "system_prompt": f"Synthetic persona {i}: always answer in a way judge {i} can check.",
            "probe": f"Probe question number {i}: what is your answer?", "judge": "multiple_choice",
            "judge_args": {"letter": "B", "options": ["one", "two", "three"]}}


def synthetic_study(root: Path, conversations: int, settings: list[str], rounds: int, runs: int, words: int) -> tuple:
    personas = [persona(i) for i in range(100)]
    rows, dirs = {s: [] for s in settings}, []
    for c in range(conversations):
        plan = random.Random(c)
        agent, user = plan.sample(personas, 2)
        topic = f"Synthetic topic {plan.randrange(50)}: is it worth it?"
        for s in settings:
            r = random.Random(f"{s}/{c}")
            history = [topic] + [text(r, words) for _ in range(2 * rounds)]
            turns = [{"speaker": "topic", "prompt_tokens": 0, "new_tokens": 0, "finish_reason": None, "context": "ok"}]
            turns += [{"speaker": "agent" if i % 2 else "user", "prompt_tokens": 120 + 400 * i, "new_tokens": 400,
                       "finish_reason": "length", "context": "ok"} for i in range(1, len(history))]
            probes = []
            for rnd in range(1, rounds + 1):
                for kind, p in (("agent", agent), ("user", user)):
                    answers = [text(r, words) for _ in range(runs)]
                    probes.append({"round": rnd, "turn": 2 * rnd, "kind": kind, "persona": p["id"],
                                   "question": p["probe"],
                                   "answers": answers, "context": "ok",
                                   "completions": [{"prompt_tokens": 120 + 800 * rnd, "new_tokens": 400,
                                                    "finish_reason": "length"} for _ in answers]})
                    for i in range(runs):
                        drift = 0.8 - 0.05 * rnd if kind == "agent" else 0.1 + 0.02 * rnd
                        rows[s].append({"setting": s, "conversation": c, "round": rnd, "turn": 2 * rnd, "kind": kind,
                                        "sample": i, "score": float(r.random() < drift), "error": "",
                                        "persona": p["id"], "category": p["category"]})
            rec = {"conversation": c, "agent": agent, "user": user, "topic": topic, "seed": c,
                   "setting": {"name": s, "family": s.split("-")[0], "method": s.split("-")[0], "value": None},
                   "user_has_system_prompt": s != "control", "turns": turns, "history": history, "probes": probes,
                   "complete": True, "provenance": {"created": "synthetic", "git_commit": None}}
            atomic_write_json(root / "transcripts" / s / f"shard-{c // 25}" / f"conv-{c:05d}.json", rec)
    scores = []
    for s in settings:
        path = root / "scores" / f"{s}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows[s]).to_csv(path, index=False)
        scores.append(path)
    dirs = [d for s in settings for d in sorted((root / "transcripts" / s).glob("shard-*"))]  # config order
    return dirs, scores


def ready_ms(dom: str) -> float | None:
    """The page's own render time (ms since navigation), or None if it never finished."""
    tag = re.search(r"<html([^>]*)>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag.group(1))) if tag else {}
    return float(attrs["data-ready-ms"]) if attrs.get("data-ready") == "1" else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=200)
    ap.add_argument("--settings", type=int, default=12, help="number of settings (the paper config has 12)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--reply-words", type=int, default=280, help="words per reply (~400 tokens)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="pd-browser-bench-"))
    settings = SETTINGS[: args.settings] if args.settings <= len(SETTINGS) else [f"s{i}" for i in range(args.settings)]
    try:
        t0 = time.perf_counter()
        dirs, scores = synthetic_study(root, args.conversations, settings, args.rounds, args.runs, args.reply_words)
        t1 = time.perf_counter()
        summary = build_browser(dirs, scores, root / "browser", study="synthetic", model="synthetic",
                                caps={"max_new_tokens": 400, "probe_max_new_tokens": 400})
        t2 = time.perf_counter()
        transcripts_bytes = sum(p.stat().st_size for p in (root / "transcripts").rglob("*.json"))
        result = {"conversations": args.conversations * len(settings), "settings": len(settings), "rounds": args.rounds,
                  "runs": args.runs, "transcript_bytes": transcripts_bytes, **summary,
                  "generate_s": round(t1 - t0, 1), "build_s": round(t2 - t1, 1)}
        exe = find_chromium()
        if exe:
            url = (root / "browser" / "index.html").as_uri()
            for name, frag in (("index", ""), ("index_sorted_filtered", "#/?sort=a8&category=pattern&compliant=yes"),
                               ("conversation", "#/conv/none/0"), ("compare_all_settings", "#/compare/0"),
                               ("judge_audit", "#/judge/persona-000"), ("judge_index", "#/judge")):
                dom, wall = dump_dom(exe, url + frag, timeout=300)
                result[f"chromium_{name}_ready_ms"] = ready_ms(dom)
                result[f"chromium_{name}_process_s"] = round(wall, 2)
        else:
            result["chromium"] = "not installed: no time-to-interactive measured"
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
