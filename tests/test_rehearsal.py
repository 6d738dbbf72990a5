"""The paper's run, rehearsed: configs/rehearsal.yaml through the real Snakemake DAG (the GPU
rehearsal on a tiny shape on the CPU: tests/test_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.workflow import REPO

BIN = Path(sys.executable).parent
REHEARSAL = REPO / "configs/rehearsal.yaml"


def _config(name):
    """A shipped config merged over its extends: chain, as the workflow reads it."""
    from personadrift.overlays import read_config

    return read_config(REPO / "configs" / name).config


def snakemake(workdir, *args, timeout=3000):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args,
           "--configfile", str(REHEARSAL)]  # last: it takes several values
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=timeout)
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def test_rehearsal_dag_has_every_paper_setting(tmp_path):
    plan = snakemake(tmp_path, "figures/all", "-n")
    rules = ("selfchat", "mmlu", "mmlu_from_baseline")
    lines = [x.split() for x in plan.splitlines() if x.split()[:1] and x.split()[0] in rules]
    counts = {r[0]: int(r[1]) for r in lines if len(r) > 1 and r[1].isdigit()}
    # 1 + 4 + 3 + 4 settings, one shard each, and the length-only control (self-chat only, no
    # MMLU); the 3 repetition settings take the baseline's MMLU (single-turn prompts unchanged)
    assert counts == {"selfchat": 13, "mmlu": 9, "mmlu_from_baseline": 3}, plan[-2000:]


def check_rehearsal(work: Path, whole: bool = True) -> None:
    """What the rehearsal must show: every round (0 to 8) of every conversation, prompts that
    reached the context limit and were truncated by the policy, the Llama-2 template's
    repetition fallback, and the new score columns; with ``whole``, the figures too."""
    import pandas as pd

    cfg = _config("rehearsal.yaml")
    limit, reply = cfg["model"]["max_context"], cfg["selfchat"]["max_new_tokens"]
    if whole:
        assert json.loads((work / "figures/all").read_text())["figures"]
    verdicts, methods = [], set()
    for conv in (work / "results/rehearsal/transcripts").glob("*/shard-*/conv-*.json"):
        rec = json.loads(conv.read_text())
        assert len(rec["history"]) == len(rec["turns"]) == 16
        assert sorted({p["round"] for p in rec["probes"]}) == list(range(9))
        assert all(t["prompt_tokens"] + reply <= limit for t in rec["turns"][1:])
        verdicts += [t["context"] for t in rec["turns"]] + [p["context"] for p in rec["probes"]]
        methods.add(rec["setting"]["method"])
        if rec["setting"]["method"] == "repetition":
            assert rec["provenance"]["protocol"]["repetition_placement"] == "user_prefix"
    assert "truncated" in verdicts and "ok" in verdicts
    assert methods == {"none", "split_softmax", "repetition", "cfg"}
    scores = pd.read_csv(work / "results/rehearsal/scores/none.csv")
    assert {"new_tokens", "finish_reason", "context"} <= set(scores.columns)
    assert 0 in set(scores["round"]) and "truncated" in set(scores["context"])


@pytest.mark.slow
def test_rehearsal_runs_through_the_snakemake_dag_on_cpu(tmp_path):
    snakemake(tmp_path, "--cores", "2", "figures/all")
    check_rehearsal(tmp_path)
