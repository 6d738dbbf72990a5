"""The transcript and judge browser: built from real transcripts scored by the real judges,
rendered in a real headless Chromium (Debian package; installed here when missing, skipped
with a message where it cannot be)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personadrift.browser import build_browser
from personadrift.errors import InputError
from personadrift.protocol.scoring import score_records
from personadrift.storage import atomic_write_json
from personadrift.tables import read_table, write_table
from support.headless import dump_dom, screenshot
from support.workflow import REPO

SEASON = {"id": "summer-lover", "category": "multiple_choice", "system_prompt": "You love summer.",
          "probe": "Favourite season? (A) spring (B) summer. Answer with the letter.", "judge": "multiple_choice",
          "judge_args": {"letter": "B", "options": ["spring", "summer"]}}
LOWER = {"id": "all-lowercase", "category": "pattern", "system_prompt": "Write in lowercase only.",
         "probe": "What should a tourist do in Paris?", "judge": "no_uppercase", "judge_args": {"tolerance": 3}}


def transcript(setting: str, conv: int, *, new_format: bool = True) -> dict:
    """A two-round self-chat in the transcript contract; conversation 1 starts compliant."""
    agent, user = (SEASON, LOWER) if conv % 2 == 0 else (LOWER, SEASON)
    history = [f"Topic {conv}?", f"agent reply one {setting}", "user reply one", f"AGENT REPLY TWO {setting}", "user two"]
    good = {"summer-lover": "(B) summer", "all-lowercase": "see the louvre"}
    bad = {"summer-lover": "(A) spring", "all-lowercase": "SEE THE LOUVRE AND MORE"}
    probes = []
    for rnd, turn in ((1, 2), (2, 4)):
        for kind, persona in (("agent", agent), ("user", user)):
            answers = [good[persona["id"]] if (rnd == 1) == (conv == 1) else bad[persona["id"]], ""]
            if kind == "user" and rnd == 2:
                answers[1] = persona["probe"]  # an echo of the question
            probe = {"round": rnd, "turn": turn, "kind": kind, "persona": persona["id"], "question": persona["probe"],
                     "answers": answers}
            if new_format:
                probe["completions"] = [{"prompt_tokens": 50 + turn, "new_tokens": 6, "finish_reason": "length"},
                                        {"prompt_tokens": 50 + turn, "new_tokens": 0, "finish_reason": "stop"}]
                probe["context"] = "truncated" if (conv, rnd, kind) == (2, 2, "agent") else "ok"
            probes.append(probe)
    rec = {"conversation": conv, "agent": agent, "user": user, "topic": history[0], "seed": conv,
           "setting": {"name": setting, "family": setting.split("-")[0], "method": "none" if setting == "none" else "split_softmax",
                       "value": None if setting == "none" else 0.5},
           "user_has_system_prompt": True, "history": history, "probes": probes, "complete": True,
           "provenance": {"created": "2026-01-01T00:00:00+00:00", "git_commit": "0" * 40}}
    if new_format:
        rec["turns"] = [{"speaker": "topic", "prompt_tokens": 0, "new_tokens": 0, "finish_reason": None}] + [
            {"speaker": "agent" if i % 2 else "user", "prompt_tokens": 20 * i, "new_tokens": 6,
             "finish_reason": "length" if (conv, i) == (0, 3) else "stop", "context": "ok"} for i in range(1, len(history))]
    else:
        rec["turns"] = len(history) - 1  # the older transcripts stored the number of turns here
    return rec


SETTINGS = ("none", "split-k0.5")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two settings x three conversations (conversation 0 under split is an older-format one),
    scored by the real judges; and the browser built from them."""
    root = tmp_path_factory.mktemp("study")
    scores = []
    for setting in SETTINGS:
        recs = [transcript(setting, c, new_format=not (setting == "split-k0.5" and c == 0)) for c in range(3)]
        for rec in recs:
            atomic_write_json(root / "transcripts" / setting / f"shard-{rec['conversation'] // 2}" /
                              f"conv-{rec['conversation']:05d}.json", rec)
        write_table(score_records(recs), root / "scores" / f"{setting}.csv")
        scores.append(root / "scores" / f"{setting}.csv")
    atomic_write_json(root / "personas.json", {
        "personas": [{**SEASON, "round0_adherence": 1.0, "no_persona_score": 0.5}, {**LOWER, "round0_adherence": 0.7,
                                                                                   "no_persona_score": 0.9}],
        "dropped": [{**SEASON, "id": "all-caps", "round0_adherence": 0.0, "no_persona_score": 0.0}],
        "topics": ["t"], "rule": "round-0 score >= 0.5 over 2 samples"})
    (root / "tables").mkdir()
    (root / "tables" / "calibration_by_persona.csv").write_text(
        "persona,category,adherence,no_persona,lift,kept,reason\n"
        "summer-lover,multiple_choice,1.0,0.5,0.5,True,\nall-lowercase,pattern,0.7,0.9,-0.2,True,\n"
        "all-caps,pattern,0.0,0.0,0.0,False,round-0 score 0.00 < 0.5\n")
    dirs = sorted((root / "transcripts").glob("*/shard-*"))
    summary = build_browser(dirs, scores, root / "browser", pool_json=root / "personas.json",
                            calibration_csv=root / "tables" / "calibration_by_persona.csv", study="unit", model="none",
                            caps={"max_new_tokens": 6, "probe_max_new_tokens": 6})
    table = pd.concat([read_table(p) for p in scores])
    return {"root": root, "out": root / "browser", "summary": summary, "scores": table, "dirs": dirs}


def page_index(out: Path) -> dict:
    html = (out / "index.html").read_text()
    return json.loads(re.search(r"window\.PD_INDEX=(.*?);\n", html).group(1))


def data_file(out: Path, key: str) -> dict:
    text = (out / "data" / f"{key}.js").read_text()
    m = re.fullmatch(r'PD\.receive\("([^"]+)",(.*)\);\n', text, re.S)
    assert m and m.group(1) == key
    return json.loads(m.group(2))


def test_index_holds_every_conversation_with_per_round_means_from_the_scores(study):
    idx = page_index(study["out"])
    assert [s["name"] for s in idx["settings"]] == list(SETTINGS)
    assert idx["rounds"] == [1, 2]
    convs = idx["convs"]
    assert len(convs["c"]) == 6 and study["summary"]["data_files"] == 6 + 2  # conversations + judged personas
    sc = study["scores"]
    for i, (s, c) in enumerate(zip(convs["s"], convs["c"])):
        setting = idx["settings"][s]["name"]
        for col, kind in (("as", "agent"), ("us", "user")):
            expect = sc[(sc.setting == setting) & (sc.conversation == c) & (sc.kind == kind)].groupby("round")["score"].mean()
            assert convs[col][i] == pytest.approx([expect[1], expect[2]], abs=1e-4)  # stored to 4 decimals
    # conversation 1 is the only one that started compliant (its round-1 answers are the persona's)
    compliant = [(idx["settings"][s]["name"], c) for s, c, a in zip(convs["s"], convs["c"], convs["as"]) if a[0] >= 0.5]
    assert compliant == [("none", 1), ("split-k0.5", 1)]


def test_markers_flags_and_older_transcripts(study):
    idx = page_index(study["out"])
    f = idx["flags"]
    flags = {(idx["settings"][s]["name"], c): v for s, c, v in zip(idx["convs"]["s"], idx["convs"]["c"], idx["convs"]["f"])}
    assert flags[("none", 2)] & f["context"] and not flags[("none", 1)] & f["context"]
    assert flags[("split-k0.5", 0)] & f["no_tokens"] and not flags[("none", 0)] & f["no_tokens"]
    assert all(v & f["length"] for k, v in flags.items() if k != ("split-k0.5", 0))
    old = data_file(study["out"], "c/1/0")
    assert old["have_tokens"] is False and old["turns"][1]["new_tokens"] is None and old["turns"][1]["speaker"] == "agent"
    new = data_file(study["out"], "c/0/0")
    assert new["have_tokens"] is True and new["turns"][3]["finish_reason"] == "length"


def test_conversation_file_has_each_samples_own_score(study):
    sc = study["scores"]
    conv = data_file(study["out"], "c/0/2")
    assert conv["agent"]["judge"] == "multiple_choice" and conv["agent"]["judge_args"]["letter"] == "B"
    n = 0
    for p in conv["probes"]:
        for i, s in enumerate(p["samples"]):
            row = sc[(sc.setting == "none") & (sc.conversation == 2) & (sc["round"] == p["round"]) & (sc.kind == p["kind"])
                     & (sc["sample"] == i)]
            assert s["score"] == pytest.approx(float(row["score"].iloc[0]))
            n += 1
    assert n == 2 * 2 * 2
    p = next(p for p in conv["probes"] if (p["round"], p["kind"]) == (2, "user"))
    assert p["samples"][1]["echo"] and not p["samples"][0]["echo"] and p["samples"][0]["finish_reason"] == "length"
    assert next(p for p in conv["probes"] if (p["round"], p["kind"]) == (2, "agent"))["context"] == "truncated"


def test_judge_audit_shows_distribution_extremes_and_empty_answers(study):
    idx = page_index(study["out"])
    sc = study["scores"]
    by_id = {idx["personas"][a["p"]]["id"]: a for a in idx["audit"]}
    lower = by_id["all-lowercase"]
    rows = sc[sc.persona == "all-lowercase"]
    assert lower["n"] == len(rows) and sum(lower["hist"]) == lower["n"]
    assert lower["mean"] == pytest.approx(rows["score"].mean(), abs=1e-4)
    empty = rows[rows["answer_chars"] == 0]["score"]
    assert lower["n_empty"] == len(empty) > 0 and lower["empty_mean"] == pytest.approx(empty.mean(), abs=1e-4)
    assert lower["n_echo"] == 4  # the user-persona probe of round 2 in conversations 0 and 2, both settings
    detail = data_file(study["out"], f"j/{by_id['all-lowercase']['p']}")
    highest = [a["score"] for a in detail["highest"]]
    assert highest == sorted(highest, reverse=True) and len(highest) == 5
    assert detail["lowest"][0]["score"] == rows["score"].min()
    assert all(a["text"] == "" and a["empty"] for a in detail["empty"]) and all(a["echo"] for a in detail["echo"])


def test_judge_errors_are_counted_per_persona_and_setting(study, tmp_path):
    """Answers whose judge raised (NaN score, an error) are counted in the audit, per setting."""
    scores, n_bad = [], 0
    for setting in SETTINGS:
        df = read_table(study["root"] / "scores" / f"{setting}.csv")
        if setting == "split-k0.5":
            bad = (df["persona"] == "all-lowercase") & (df["round"] == 1)
            df["error"] = df["error"].astype(object).fillna("").astype(str)
            df.loc[bad, "score"], df.loc[bad, "error"] = np.nan, "ValueError: no digits"
            n_bad = int(bad.sum())
        scores.append(tmp_path / f"{setting}.csv")
        write_table(df, scores[-1])
    assert n_bad > 0
    build_browser(study["dirs"], scores, tmp_path / "browser", pool_json=study["root"] / "personas.json",
                  calibration_csv=None, study="unit", model="none", caps={"max_new_tokens": 6, "probe_max_new_tokens": 6})
    idx = page_index(tmp_path / "browser")
    audit = {idx["personas"][a["p"]]["id"]: a for a in idx["audit"]}
    names = [s["name"] for s in idx["settings"]]
    assert audit["all-lowercase"]["errors"] == n_bad
    assert [[names[s], k] for s, k in audit["all-lowercase"]["errors_by_setting"]] == [["split-k0.5", n_bad]]
    assert audit["summer-lover"]["errors"] == 0 and audit["summer-lover"]["errors_by_setting"] == []


def test_personas_kept_and_why(study):
    idx = page_index(study["out"])
    p = {x["id"]: x for x in idx["personas"]}
    assert p["all-caps"]["kept"] is False and "< 0.5" in p["all-caps"]["reason"]
    assert p["summer-lover"]["kept"] is True and p["all-lowercase"]["lift"] == pytest.approx(-0.2)
    assert idx["pool_rule"].startswith("round-0 score")


def test_bad_input_names_the_file_and_the_field(study, tmp_path):
    bad = tmp_path / "t" / "conv-00000.json"
    rec = transcript("none", 0)
    del rec["history"]
    atomic_write_json(bad, rec)
    with pytest.raises(InputError, match=r"conv-00000\.json: history"):
        build_browser([bad.parent], [], tmp_path / "out")
    rec = transcript("none", 0)
    del rec["probes"][3]["answers"]
    atomic_write_json(bad, rec)
    with pytest.raises(InputError, match=r"conv-00000\.json: probes\[3\]\.answers"):
        build_browser([bad.parent], [], tmp_path / "out")
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"conv-00000\.json: not valid JSON"):
        build_browser([bad.parent], [], tmp_path / "out")
    scores = tmp_path / "scores.csv"
    scores.write_text("setting,conversation,round,kind,score\nnone,0,1,agent,1.0\n")
    with pytest.raises(InputError, match=r"scores\.csv: sample"):
        build_browser(study["dirs"], [scores], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_cli_builds_from_a_results_folder(study, tmp_path):
    from personadrift.cli import main

    results = tmp_path / "results" / "unit"
    shutil.copytree(study["root"], results, ignore=shutil.ignore_patterns("browser"))
    (results / "browser").mkdir()
    (results / "browser" / "stale.txt").write_text("from an earlier build")
    assert main(["browser", "--results", str(results)]) == 0
    assert not (results / "browser" / "stale.txt").exists()
    assert len(page_index(results / "browser")["convs"]["c"]) == 6
    assert main(["browser", "--results", str(tmp_path)]) == 2  # no transcripts there: one clear error


# ---------- in a real browser ----------

class Elements(HTMLParser):
    """Start tags with their attributes and the text directly inside, in document order."""

    def __init__(self, html: str):
        super().__init__()
        self.items: list[dict] = []
        self._open: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        item = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.items.append(item)
        if tag not in ("meta", "link", "br", "img", "input", "circle", "line", "path", "rect", "option"):
            self._open.append(item)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data

    def find(self, tag=None, **attrs):
        """Elements by tag and attributes (``class_`` is class, ``data_x`` is data-x; True: present)."""
        want = {("class" if a == "class_" else a.replace("_", "-")): v for a, v in attrs.items()}
        def match(e, a, v):
            if a == "class" and v is not True:
                return set(v.split()) <= set(e.get("class", "").split())
            return a in e and (v is True or e[a] == v)

        return [e for e in self.items if (tag is None or e["tag"] == tag) and all(match(e, a, v) for a, v in want.items())]


def render(chromium, out: Path, fragment: str = "") -> Elements:
    dom, _ = dump_dom(chromium, (out / "index.html").as_uri() + fragment)
    doc = Elements(dom)
    assert doc.find("html", data_ready="1"), f"page did not finish rendering {fragment}: {dom[-2000:]}"
    assert not doc.find(id="fail"), [e["text"] for e in doc.find(id="fail")]
    return doc


def test_index_renders_every_conversation_and_filters(study, chromium):
    doc = render(chromium, study["out"])
    rows = doc.find("tr", class_="conv-row")
    assert sorted((r["data-setting"], int(r["data-conv"])) for r in rows) == sorted((s, c) for s in SETTINGS for c in range(3))
    assert len(doc.find("svg", class_="spark")) >= 6 and len(doc.find("svg", class_="chart")) == 2
    # filters are part of the URL: one setting, started compliant
    doc = render(chromium, study["out"], "#/?setting=none&compliant=yes")
    assert [(r["data-setting"], r["data-conv"]) for r in doc.find("tr", class_="conv-row")] == [("none", "1")]
    doc = render(chromium, study["out"], "#/?persona=summer-lover&role=agent&flag=context")
    assert [(r["data-setting"], r["data-conv"]) for r in doc.find("tr", class_="conv-row")] == [("none", "2"), ("split-k0.5", "2")]
    doc = render(chromium, study["out"], "#/?category=pattern&sort=a1&dir=desc")
    assert [(r["data-setting"], r["data-conv"]) for r in doc.find("tr", class_="conv-row")] == [("none", "1"), ("split-k0.5", "1")]


def test_conversation_view_shows_samples_scores_judge_and_markers(study, chromium):
    doc = render(chromium, study["out"], "#/conv/none/2")
    assert doc.find("body", data_view="conv")
    scores = [e["data-score"] for e in doc.find("span", class_="sample-score")]
    sc = study["scores"]
    expect = sc[(sc.setting == "none") & (sc.conversation == 2)].sort_values(["round", "kind", "sample"])["score"]
    assert [float(s) for s in scores] == pytest.approx(list(expect))
    assert [e["text"] for e in doc.find("code", class_="judge-name")] == ["multiple_choice", "no_uppercase"]
    flags = [e["text"] for e in doc.find("span", class_="flag")]
    assert "hit max_new_tokens" in flags and "context truncated" in flags and "echoes the question" in flags
    assert len(doc.find("div", class_="turn")) == 5 and len(doc.find("div", class_="probe agent")) == 2
    assert any("reply 6 / 6 tokens" in e["text"] for e in doc.find("span", class_="tokens"))


def test_compare_view_puts_every_setting_side_by_side(study, chromium):
    doc = render(chromium, study["out"], "#/compare/0")
    heads = [e["data-setting"] for e in doc.find("th", data_setting=True)]
    assert heads == list(SETTINGS)
    texts = [e["text"] for e in doc.find("div", class_="text")]
    assert "AGENT REPLY TWO none" in texts and "AGENT REPLY TWO split-k0.5" in texts
    doc = render(chromium, study["out"], "#/compare/0?only=split-k0.5")  # a chosen subset of settings
    assert [e["data-setting"] for e in doc.find("th", data_setting=True)] == ["split-k0.5"]


def test_judge_audit_and_personas_views(study, chromium):
    doc = render(chromium, study["out"], "#/judge")
    assert {e["data-persona"] for e in doc.find("tr", data_persona=True)} == {"summer-lover", "all-lowercase"}
    doc = render(chromium, study["out"], "#/judge/all-lowercase")
    top = [float(e["data-score"]) for e in doc.find("span", class_="audit-score")]
    assert top[:5] == sorted(top[:5], reverse=True) and len(top) >= 10
    assert "echoes the question" in [e["text"] for e in doc.find("span", class_="flag")]
    doc = render(chromium, study["out"], "#/personas")
    assert {e["data-persona"]: e["data-kept"] for e in doc.find("tr", data_persona=True)}["all-caps"] == "false"
    dom, _ = dump_dom(chromium, (study["out"] / "index.html").as_uri() + "#/conv/none/99")
    assert "No conversation 99 under setting none" in dom  # a bad link says so instead of showing nothing


# ---------- the smoke study, from the real workflow ----------

def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    import sys

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run([str(bin_dir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(REPO / "configs/smoke.yaml"), *args],
                          capture_output=True, text=True, env=env, cwd=workdir)
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def smoke_run(smoke):
    """The session's smoke workflow run (tests/conftest.py; figures/all builds the browser)."""
    return Path(smoke)


@pytest.mark.slow
def test_smoke_study_browser_in_chromium_screenshot_and_report(smoke_run, chromium, tmp_path):
    import zipfile

    out = smoke_run / "results/smoke/browser"
    sc = pd.concat([read_table(p) for p in sorted((smoke_run / "results/smoke/scores").glob("*.csv"))])
    expected = sorted({(s, int(c)) for s, c in zip(sc["setting"], sc["conversation"])})
    assert len(expected) == 3 * 5  # 3 conversations x 5 settings (the control included) in the smoke config

    doc = render(chromium, out)
    assert sorted((r["data-setting"], int(r["data-conv"])) for r in doc.find("tr", class_="conv-row")) == expected
    assert doc.find("p", id="count")[0]["text"].strip() == "of 15 conversations"
    doc = render(chromium, out, "#/?setting=none")
    assert sorted(int(r["data-conv"]) for r in doc.find("tr", class_="conv-row")) == [0, 1, 2]

    doc = render(chromium, out, "#/conv/none/1")
    one = sc[(sc.setting == "none") & (sc.conversation == 1)].sort_values(["round", "kind", "sample"])
    assert [float(e["data-score"]) for e in doc.find("span", class_="sample-score")] == pytest.approx(list(one["score"]))
    doc = render(chromium, out, "#/compare/1")
    heads = [e["data-setting"] for e in doc.find("th", data_setting=True)]
    assert heads[0] == "none" and sorted(heads) == sorted(set(sc["setting"]))  # config order, baseline first

    # the README's picture is refreshed only on request, so a test run leaves the checkout unchanged
    target = REPO / "docs" / "browser.png" if os.environ.get("PERSONADRIFT_UPDATE_DOCS") else tmp_path / "browser.png"
    shot = screenshot(chromium, (out / "index.html").as_uri(), target, size=(1400, 1000))
    assert shot.stat().st_size > 10_000

    # the report carries the browser folder (index plus every data file), and it works from there
    _snakemake(smoke_run, "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        z.extractall(tmp_path / "report")
    index = [p for p in (tmp_path / "report").rglob("index.html") if (p.parent / "data" / "c").is_dir()]
    assert len(index) == 1 and len(list(index[0].parent.glob("data/c/*/*.js"))) == 15
    doc = render(chromium, index[0].parent, "#/conv/cfg-g1.5/2")
    # rounds 0-2 x 2 probe kinds x 2 samples, as the scores table has them
    want = len(sc[(sc.setting == "cfg-g1.5") & (sc.conversation == 2)])
    assert want == 3 * 2 * 2 and len(doc.find("span", class_="sample-score")) == want


def test_settings_count_per_round_the_conversations_running_and_stopped(tmp_path):
    """A conversation the context policy stopped after round 1 (context_policy: stop): its round-2
    probes are stored unasked, and the index counts it as stopped at round 2 for its setting only."""
    recs = {s: [transcript(s, c) for c in range(3)] for s in SETTINGS}
    gone = recs["split-k0.5"][2]
    gone["history"] = gone["history"][:3]
    gone["stopped"] = {"turn": 3, "speaker": "agent", "reason": "context"}
    for p in gone["probes"]:
        if p["round"] == 2:
            p.update(answers=[], completions=[], context="overflow")
    dirs, scores = [], []
    for s, rs in recs.items():
        for rec in rs:
            atomic_write_json(tmp_path / "t" / s / "shard-0" / f"conv-{rec['conversation']:05d}.json", rec)
        write_table(score_records(rs), tmp_path / f"{s}.csv")
        dirs.append(tmp_path / "t" / s / "shard-0")
        scores.append(tmp_path / f"{s}.csv")
    build_browser(dirs, scores, tmp_path / "browser")
    idx = page_index(tmp_path / "browser")
    by = {s["name"]: s for s in idx["settings"]}
    assert idx["rounds"] == [1, 2]
    assert by["split-k0.5"]["running"] == [3, 2] and by["split-k0.5"]["stopped"] == [0, 1]
    assert by["none"]["running"] == [3, 3] and by["none"]["stopped"] == [0, 0]
