"""A study as Inspect evaluation logs: written with inspect_ai's own writer, read back with
inspect_ai's own reader and dataframes, compared score by score and message by message with the
study's transcripts and score tables, and shown by Inspect's own viewer (its static bundle, in a
real headless Chromium behind a local HTTP server)."""

from __future__ import annotations

import functools
import http.server
import math
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from personadrift.errors import InputError
from personadrift.export.inspect_log import export_study
from personadrift.protocol.scoring import score_records
from personadrift.storage import atomic_write_json, read_json
from personadrift.tables import read_table, write_table
from support.headless import wait_for_text
from support.workflow import SMOKE, snakemake

inspect_log = pytest.importorskip(
    "inspect_ai.log", reason="inspect_ai is pinned in requirements.txt: run make setup"
)

SEASON = {
    "id": "summer-lover",
    "category": "multiple_choice",
    "system_prompt": "You love summer.",
    "probe": "Favourite season? (A) spring (B) summer. Answer with the letter.",
    "judge": "multiple_choice",
    "judge_args": {"letter": "B", "options": ["spring", "summer"]},
}
LOWER = {
    "id": "all-lowercase",
    "category": "pattern",
    "system_prompt": "Write in lowercase only.",
    "probe": "What should a tourist do in Paris?",
    "judge": "no_uppercase",
    "judge_args": {"tolerance": 3},
}
# a judge that cannot read its arguments raises on every answer: the score table records the error
BROKEN = {**SEASON, "id": "broken-judge", "judge_args": {"options": ["spring", "summer"]}}
SETTINGS = ("none", "split-k0.5")


def transcript(setting: str, conv: int) -> dict:
    """Three rounds (0-2); conversation 2's agent has a judge that raises, and its round-2 probes
    overflowed the context (not asked)."""
    agent, user = [(SEASON, LOWER), (LOWER, SEASON), (BROKEN, LOWER)][conv]
    history = [
        f"Topic {conv}?",
        f"agent one {setting}",
        "user one",
        f"AGENT TWO {setting}",
        "user two",
    ]
    good = {"summer-lover": "(B) summer", "all-lowercase": "see the louvre", "broken-judge": "(B)"}
    bad = {
        "summer-lover": "(A) spring",
        "all-lowercase": "SEE THE LOUVRE AND MORE",
        "broken-judge": "(A)",
    }
    probes = []
    for rnd, turn in ((0, 0), (1, 2), (2, 4)):
        for kind, persona in (("agent", agent), ("user", user)):
            if conv == 2 and rnd == 2:
                probes.append(
                    {
                        "round": rnd,
                        "turn": turn,
                        "kind": kind,
                        "persona": persona["id"],
                        "question": persona["probe"],
                        "answers": [],
                        "completions": [],
                        "context": "overflow",
                    }
                )
                continue
            answers = [
                good[persona["id"]] if rnd < 2 else bad[persona["id"]],
                bad[persona["id"]] if conv else "",
            ]
            probes.append(
                {
                    "round": rnd,
                    "turn": turn,
                    "kind": kind,
                    "persona": persona["id"],
                    "question": persona["probe"],
                    "answers": answers,
                    "context": "ok",
                    "completions": [
                        {"prompt_tokens": 40 + turn, "new_tokens": 5, "finish_reason": "stop"}
                    ]
                    * 2,
                }
            )
    return {
        "conversation": conv,
        "agent": agent,
        "user": user,
        "topic": history[0],
        "seed": 7,
        "fingerprint": f"f{conv}",
        "setting": {
            "name": setting,
            "family": setting.split("-")[0],
            "method": "none" if setting == "none" else "split_softmax",
            "value": None if setting == "none" else 0.5,
        },
        "user_has_system_prompt": True,
        "history": history,
        "probes": probes,
        "complete": True,
        "turns": [{"speaker": "topic", "prompt_tokens": 0, "new_tokens": 0, "finish_reason": None}]
        + [
            {
                "speaker": "agent" if i % 2 else "user",
                "prompt_tokens": 20 * i,
                "new_tokens": 6,
                "finish_reason": "stop",
                "context": "ok",
            }
            for i in range(1, len(history))
        ],
        "provenance": {
            "created": f"2026-01-01T00:0{conv}:00+00:00",
            "git_commit": "0" * 40,
            "model": {"name": "unit-model"},
            "sampling": {"temperature": 1.0},
        },
    }


def write_study(root: Path) -> Path:
    """A results folder written with the project's own writers and scored by the real judges."""
    for setting in SETTINGS:
        recs = [transcript(setting, c) for c in range(3)]
        for rec in recs:
            atomic_write_json(
                root
                / "transcripts"
                / setting
                / f"shard-{rec['conversation'] // 2}"
                / f"conv-{rec['conversation']:05d}.json",
                rec,
            )
        write_table(score_records(recs), root / "scores" / f"{setting}.csv")
    return root


def expected_round_means(scores: pd.DataFrame) -> dict:
    """(setting, conversation, kind, round) -> the mean of the finite scores, a judge error
    counted as 0 (an unasked probe stays out): the study's claims' treatment, restated here."""
    error = scores["error"].fillna("").astype(str).str.strip().ne("") & scores["context"].astype(
        str
    ).ne("overflow")
    s = scores.assign(score=scores["score"].where(~error, 0.0))
    s = s[s["score"].map(math.isfinite)]
    return s.groupby(["setting", "conversation", "kind", "round"])["score"].mean().to_dict()


def check_logs_against_study(log_dir: Path, results: Path) -> dict:
    """Every sample's messages, answers, judge scores and per-round scores against the study's own
    transcripts and score tables; returns the logs by setting."""
    scores = pd.concat(
        [read_table(p) for p in sorted((results / "scores").glob("*.csv"))], ignore_index=True
    )
    recs = {}
    for path in sorted((results / "transcripts").rglob("conv-*.json")):
        rec = read_json(path)
        recs[(rec["setting"]["name"], rec["conversation"])] = rec
    logs = {p.stem: inspect_log.read_eval_log(str(p)) for p in sorted(log_dir.glob("*.eval"))}
    assert sorted(logs) == sorted({s for s, _ in recs}), "one log per setting"
    means = expected_round_means(scores)
    seen_rows = seen_means = 0
    for setting, log in logs.items():
        assert log.status == "success" and log.eval.task_args == {"setting": setting}
        assert sorted(s.id for s in log.samples) == sorted(c for s, c in recs if s == setting)
        for smp in log.samples:
            rec = recs[(setting, smp.id)]
            # the dialog: the agent's persona as system prompt, then every utterance, alternating
            assert len(smp.messages) == len(rec["history"]) + 1
            assert [m.role for m in smp.messages] == ["system"] + [
                "user" if i % 2 == 0 else "assistant" for i in range(len(rec["history"]))
            ]
            assert smp.messages[0].text == rec["agent"]["system_prompt"]
            assert [m.text for m in smp.messages[1:]] == rec["history"]
            assert smp.metadata["seed"] == rec["seed"] and smp.metadata["setting"] == setting
            assert smp.metadata["agent"]["judge"] == rec["agent"]["judge"]
            # every probe answer with its judge score and error, as in the score table
            rows = scores[(scores.setting == setting) & (scores.conversation == smp.id)]
            answers = {
                (p["round"], p["kind"], a["sample"]): (a, p["judge"])
                for p in smp.metadata["probes"]
                for a in p["answers"]
            }
            for row in rows.itertuples():
                if row.context == "overflow":  # an unasked probe has no answer
                    assert not any(k[:2] == (row.round, row.kind) for k in answers)
                    continue
                a, judge = answers[(row.round, row.kind, row.sample)]
                assert judge == rec[row.kind]["judge"]
                assert (
                    (a["score"] is None)
                    if math.isnan(row.score)
                    else a["score"] == pytest.approx(row.score)
                )
                assert (a["error"] or "") == ("" if pd.isna(row.error) else row.error)
                seen_rows += 1
            # the per-round scores: one per kind and round the transcript probed
            probed = {(p["kind"], p["round"]) for p in rec["probes"]}
            assert len(smp.scores) == len(probed)
            for kind, rnd in probed:
                name = f"{'stability' if kind == 'agent' else 'adoption'}_round_{rnd}"
                want = means.get((setting, smp.id, kind, rnd))
                got = smp.scores[name].value
                assert math.isnan(got) if want is None else got == pytest.approx(want), (
                    setting,
                    smp.id,
                    name,
                )
                seen_means += 1
        # the eval's results: each score's mean over the conversations that have it
        for ev in log.results.scores:
            vals = [
                s.scores[ev.name].value
                for s in log.samples
                if not math.isnan(s.scores[ev.name].value)
            ]
            assert ev.scored_samples == len(vals)
            if vals:
                assert ev.metrics["mean"].value == pytest.approx(sum(vals) / len(vals))
    assert seen_rows == int((scores["context"] != "overflow").sum()) and seen_means
    return logs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = write_study(tmp_path_factory.mktemp("results") / "unit")
    summary = export_study(
        sorted((root / "transcripts").glob("*/shard-*")),
        sorted((root / "scores").glob("*.csv")),
        root / "inspect",
        study="unit",
        model="unit-model",
    )
    return {"root": root, "out": root / "inspect", "summary": summary}


def test_logs_hold_every_message_answer_and_score_of_the_study(study):
    assert study["summary"] == {"logs": 2, "samples": {"none": 3, "split-k0.5": 3}}
    logs = check_logs_against_study(study["out"], study["root"])
    log = logs["none"]
    assert log.eval.model == "personadrift/unit-model" and log.eval.metadata["seeds"] == [7]
    by_id = {s.id: s for s in log.samples}
    # the broken judge's errors count as 0, as in every claim; the unasked round is unscored, with
    # the reason
    assert by_id[2].scores["stability_round_0"].value == 0.0
    assert "error (" in by_id[2].scores["stability_round_0"].explanation
    unasked = by_id[2].scores["stability_round_2"]
    assert math.isnan(unasked.value) and "overflow" in unasked.reason
    # round 1 of conversation 0: "(B) summer" scores 1, the empty second answer 0
    assert by_id[0].scores["stability_round_1"].value == pytest.approx(0.5)
    assert by_id[0].messages[2].metadata == {
        "speaker": "agent",
        "prompt_tokens": 20,
        "new_tokens": 6,
        "finish_reason": "stop",
        "context": "ok",
    }


def test_inspect_dataframes_read_the_logs(study):
    from inspect_ai.analysis import evals_df, samples_df

    evals = evals_df(str(study["out"]), quiet=True)
    assert sorted(evals["task_arg_setting"]) == sorted(SETTINGS)
    samples = samples_df(str(study["out"]), quiet=True)
    assert len(samples) == 6
    logs = {p.stem: inspect_log.read_eval_log(str(p)) for p in study["out"].glob("*.eval")}
    want = sorted(
        (s.metadata["setting"], s.id, s.scores["stability_round_1"].value)
        for lg in logs.values()
        for s in lg.samples
    )
    got = sorted(
        zip(
            samples["metadata_setting"],
            samples["id"].astype(int),
            samples["score_stability_round_1"],
        )
    )
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
    assert [c for _, _, c in got] == pytest.approx([c for _, _, c in want])
    assert set(samples["metadata_agent_persona"]) == {
        "summer-lover",
        "all-lowercase",
        "broken-judge",
    }


def test_cli_writes_a_results_folders_logs_and_bad_input_names_the_file(study, tmp_path):
    from personadrift.cli import main

    results = tmp_path / "results" / "unit"
    shutil.copytree(study["root"], results, ignore=shutil.ignore_patterns("inspect"))
    assert main(["export-inspect", "--results", str(results)]) == 0
    assert sorted(p.name for p in (results / "inspect").iterdir()) == [
        "none.eval",
        "split-k0.5.eval",
    ]
    # the command as the rule runs it, in a fresh process: it never loads torch
    argv = ["export-inspect", "--results", str(results), "--out", str(tmp_path / "again")]
    code = (
        "import sys; from personadrift.cli import main; "
        f"status = main({argv!r}); "
        "assert status == 0, status; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    assert len(list((tmp_path / "again").glob("*.eval"))) == 2
    assert (
        inspect_log.read_eval_log(str(results / "inspect" / "none.eval")).eval.task == "unit/none"
    )
    assert main(["export-inspect", "--results", str(tmp_path / "empty")]) == 2

    bad = tmp_path / "bad.csv"
    bad.write_text("setting,conversation,round,kind,score\nnone,0,1,agent,1.0\n")
    with pytest.raises(InputError, match=r"bad\.csv: sample"):
        export_study([results / "transcripts" / "none"], [bad], tmp_path / "out", study="unit")
    with pytest.raises(InputError, match=r"conv-00000\.json: conversation.*'none'"):
        export_study(
            [results / "transcripts" / "none"],
            [results / "scores" / "split-k0.5.csv"],
            tmp_path / "out",
            study="unit",
        )


# ---------- the smoke study, from the real workflow, in Inspect's own viewer ----------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """A local HTTP server on 127.0.0.1 for a folder (Inspect's viewer fetches its logs)."""
    servers = []

    def start(folder: Path) -> str:
        httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
        )
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield start
    for httpd in servers:
        httpd.shutdown()


def shown_scores(text: str) -> dict:
    """A sample page's scores as the viewer shows them: after "SCORES" and their count, each
    value above its name, up to "TRANSCRIPT"."""
    lines = [
        ln.strip()
        for ln in text.split("SCORES", 1)[1].split("TRANSCRIPT", 1)[0].splitlines()
        if ln.strip()
    ]
    count, pairs = int(lines[0]), lines[1:]
    assert len(pairs) == 2 * count, lines
    return {pairs[i + 1]: float(pairs[i]) for i in range(0, len(pairs), 2)}


@pytest.mark.slow
def test_smoke_study_as_inspect_logs_read_back_and_in_inspect_view(
    smoke, chromium, serve, tmp_path
):
    snakemake(smoke, "--configfile", SMOKE, "--cores", "1", "results/smoke/inspect")
    results = Path(smoke) / "results" / "smoke"
    logs = check_logs_against_study(results / "inspect", results)
    assert sum(len(lg.samples) for lg in logs.values()) == 3 * 5  # 3 conversations x 5 settings
    # each round score's mean over conversations is the study's own by-round estimate
    by_round = pd.concat([read_table(p) for p in sorted(results.glob("tables/*/by_round.csv"))])
    table = {(r.setting, r.kind, int(r.round)): r.mean for r in by_round.itertuples()}
    compared = set()
    for setting, log in logs.items():
        for ev in log.results.scores:
            key = (
                setting,
                "agent" if ev.name.startswith("stability") else "user",
                int(ev.name.rsplit("_", 1)[1]),
            )
            if key in table:
                assert ev.metrics["mean"].value == pytest.approx(table[key]), key
                compared.add(setting)
    assert {"none", "control"} <= compared

    # Inspect's own static viewer of the log folder, served on 127.0.0.1, in headless Chromium
    bundle = tmp_path / "bundle"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "inspect"),
            "view",
            "bundle",
            "--log-dir",
            str(results / "inspect"),
            "--output-dir",
            str(bundle),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    url = serve(bundle)
    wait_for_text(chromium, url, [f"smoke/{s}" for s in logs] + [f"{len(logs)} rows"])
    for setting, log in logs.items():
        wait_for_text(
            chromium,
            f"{url}#/tasks/{setting}.eval",
            [f"{len(log.samples)} Samples"] + [s.input for s in log.samples],
        )
    for smp in logs["none"].samples:
        text = wait_for_text(
            chromium,
            f"{url}#/tasks/none.eval/samples/sample/{smp.id}/1",
            [f"Sample {smp.id} (Epoch 1)", smp.messages[0].text, smp.input, *smp.scores],
        )
        assert shown_scores(text) == pytest.approx(
            {k: v.value for k, v in smp.scores.items()}, abs=5e-3
        )
