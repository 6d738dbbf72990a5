"""The outputs manifest (rules/verify.smk) and ``personadrift verify``: a run matches its own
manifest; an edited transcript is located (conversation, turn, token or word); a changed claim
table is reported as a changed verdict."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from personadrift.reproduce.compare import compare
from personadrift.reproduce.manifest import read_manifest, text_fingerprint, word_hash
from support.workflow import REPO

STUDY = "results/smoke"


def verify(expected, results, cwd):
    proc = subprocess.run([sys.executable, "-m", "personadrift", "verify", "--expected", str(expected),
                           "--results", str(results)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, proc.stdout


def copy_run(smoke, tmp_path):
    """A second working folder holding the smoke run's results and its fetched model (the tokenizer)."""
    work = tmp_path / "rerun"
    shutil.copytree(smoke / STUDY, work / STUDY, ignore=shutil.ignore_patterns("checkpoints", "browser"))
    shutil.copytree(smoke / "resources/models", work / "resources/models")
    for p in (work / STUDY).rglob("*"):  # the workflow protects transcripts: make the copy editable
        p.chmod(p.stat().st_mode | 0o200)
    return work


def edit_probe_answer(run_results):
    """Change the first character of the first round-1 probe answer of the last conversation of
    setting none; returns (conversation id, probe label)."""
    path = sorted((run_results / "transcripts/none").glob("shard-*/conv-*.json"))[-1]
    rec = json.loads(path.read_text())
    probe = next(p for p in rec["probes"] if p["round"] == 1)
    text = probe["answers"][0]
    assert text and not text[0].isspace()  # replies are stripped
    probe["answers"][0] = ("Q" if text[0] != "Q" else "R") + text[1:]
    path.write_text(json.dumps(rec))
    return path.stem, f"probe round 1 {probe['kind']} sample 0"


def test_text_fingerprint_locates_the_first_differing_word():
    from personadrift.reproduce.compare import _first_word

    fp = text_fingerprint("the cat sat on the mat")
    assert fp == text_fingerprint("the cat sat on the mat") and fp != text_fingerprint("the cat sat on a mat")
    assert fp.split()[1] == "".join(word_hash(w) for w in "the cat sat on the mat".split())
    assert _first_word(fp, "the cat sat in the mat").startswith("word 3: the run has 'in'")
    assert "ends after 3 words" in _first_word(fp, "the cat sat")
    assert "goes on with 'again'" in _first_word(fp, "the cat sat on the mat again")


@pytest.mark.slow
def test_the_workflow_writes_the_manifest_and_a_run_matches_it(smoke):
    manifest = read_manifest(smoke / STUDY / "manifest.json")
    assert manifest["study"] == "smoke" and manifest["model"] == "tiny"
    assert set(manifest["settings"]) == {"none", "control", "split-k0.5", "repeat-every1", "cfg-g1.5"}
    assert all(len(convs) == 3 for convs in manifest["settings"].values())
    for table in ("scores/none.csv", "tables/none/change.csv", "tables/tradeoff.csv", "mmlu/none.csv",
                  "attention/per_token.csv", "tables/example_dialog.json"):
        assert table in manifest["tables"], table
    claims = {c["claim"] for c in manifest["claims"]}
    assert any(c.startswith("tables/none/change.csv: none agent drift, round ") for c in claims)
    assert any(c.startswith("tables/none/change.csv: none agent drift minus control") for c in claims)
    assert any(c.startswith("tables/tradeoff.csv: split-k0.5 stability diff") for c in claims)
    assert all({"estimate", "ci_low", "ci_high", "p_holm", "verdict"} <= set(c) for c in manifest["claims"])
    rc, out = verify(smoke / STUDY / "manifest.json", smoke / STUDY, smoke)
    assert rc == 0 and out.startswith("identical: ") and f"{len(claims)} claims" in out, out


@pytest.mark.slow
def test_an_edited_probe_answer_is_located_by_conversation_turn_and_token(smoke, tmp_path):
    work = copy_run(smoke, tmp_path)
    conv, label = edit_probe_answer(work / STUDY)
    # the expected run's texts are beside its manifest: both are tokenized, the token is named
    rc, out = verify(smoke / STUDY / "manifest.json", work / STUDY, work)
    assert rc == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("setting none:"))
    assert f"first departure in {conv}, {label}, token 0: expected " in line and "1 of 3 conversations differ" in line, out
    for other in ("control", "split-k0.5", "repeat-every1", "cfg-g1.5"):
        assert f"setting {other}: identical" in out
    assert "verdicts: all" in out
    # the manifest alone (as committed under expected/): located to the word
    alone = tmp_path / "expected.json"
    shutil.copy(smoke / STUDY / "manifest.json", alone)
    rc, out = verify(alone, work / STUDY, work)
    assert rc == 1 and f"first departure in {conv}, {label}, word 0: the run has " in out, out
    assert "manifest only: words, not tokens" in out
    # both texts at hand but no tokenizer in either working folder: the first differing character
    expected = copy_run(smoke, tmp_path / "expected")
    for folder in (work, expected):
        shutil.rmtree(folder / "resources")
    position = compare(expected / STUDY, work / STUDY).departures[0].position
    assert position.startswith("character 0: ") and "no tokenizer" in position


@pytest.mark.slow
def test_a_changed_claim_table_reports_the_verdict_change(smoke, tmp_path):
    work = copy_run(smoke, tmp_path)
    path = work / STUDY / "tables/tradeoff.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["setting"] == "split-k0.5")
    row.update(stability_diff="0.31", stability_diff_p_holm="0.004", stability_diff_significant="True")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc, out = verify(smoke / STUDY / "manifest.json", work / STUDY, work)
    assert rc == 1 and "tables that differ (1): tables/tradeoff.csv" in out, out
    assert "verdicts changed: 1 of" in out
    changed = next(ln for ln in out.splitlines() if "split-k0.5 stability diff vs baseline" in ln)
    assert "expected not significant" in changed and "got significant increase (+0.310" in changed
    assert "Holm p 0.004" in changed
    # every setting's transcripts still match: only the table departs
    assert all(f"setting {s}: identical" in out for s in ("none", "control", "split-k0.5"))


@pytest.mark.slow
def test_a_rerun_whose_provenance_differs_is_identical(smoke, tmp_path):
    """Outputs that carry their own provenance (personas.json: time, host, commit) match a rerun
    made at another time and commit; a change outside the provenance still departs."""
    work = copy_run(smoke, tmp_path)
    path = work / STUDY / "personas.json"
    rec = json.loads(path.read_text())
    assert "provenance" in rec
    rec["provenance"].update(created="2099-01-01T00:00:00+00:00", git_commit="0" * 40)
    path.write_text(json.dumps(rec, indent=3))
    rc, out = verify(smoke / STUDY / "manifest.json", work / STUDY, work)
    assert rc == 0 and out.startswith("identical"), out
    rec["kept_extra"] = True
    path.write_text(json.dumps(rec))
    rc, out = verify(smoke / STUDY / "manifest.json", work / STUDY, work)
    assert rc == 1 and "tables that differ (1): personas.json" in out, out


@pytest.mark.slow
def test_verify_compares_two_runs_folders_for_a_reviewer(smoke, tmp_path):
    """``--expected`` may be another run's results folder (a reviewer's two runs of a config)."""
    work = copy_run(smoke, tmp_path)
    rc, out = verify(smoke / STUDY, work / STUDY, work)
    assert rc == 0 and out.startswith("identical"), out
    (work / STUDY / "scores/cfg-g1.5.csv").unlink()
    rc, out = verify(smoke / STUDY, work / STUDY, work)
    assert rc == 1 and "tables missing from the run (1): scores/cfg-g1.5.csv" in out


def test_a_bad_manifest_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": 99}))
    (tmp_path / "results/x").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "personadrift", "verify", "--expected", str(bad), "--results",
                           str(tmp_path / "results/x")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"personadrift: error: {bad}: format: not a manifest of format 1 (personadrift study-manifest writes one)")


def test_claims_fixed_by_design_are_in_the_manifest_untested_and_every_other_claim_in_one_family(tmp_path):
    """The manifest's claims from a drift table holding the control: the shift minus the control's
    and the control's own shift say why they are not tested; the rest carry their Holm p."""
    from personadrift.analysis import simulate as sim
    from personadrift.analysis.stats import change_over_dialog
    from personadrift.reproduce.manifest import claims_of
    from personadrift.reproduce.robustness import robustness_table

    design = sim.drifting(12, rounds=3, drop=1.0, effects={"none": 0.0, "control": 0.0})
    change = tmp_path / "change.csv"
    change_over_dialog(sim.simulate_scores(design, seed=0)).to_csv(change, index=False)
    claims = claims_of("tables/none/change.csv", change)
    untested = [c for c in claims if c["verdict"].startswith("not tested")]
    assert len(claims) == 12 and len(untested) == 4 and all(c["p_holm"] is None for c in untested)
    assert {c["claim"].split(": ")[1].rsplit(",", 1)[0] for c in untested} == {
        "none agent shift minus control", "none user shift minus control", "control agent shift", "control user shift"}
    assert all(c["p_holm"] is not None for c in claims if c not in untested)
    # an untested claim is never counted as significant across seeds
    by_claim = {c["claim"]: c for c in claims}
    table = robustness_table({0: by_claim, 1: by_claim}, reference_seed=0)
    assert (table.loc[table["verdict"].str.startswith("not tested"), "significant_share"] == 0).all()
