"""An API-model config end to end: the workflow with backend: openai against this project's
own OpenAI-compatible server, over HTTP on localhost."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, snakemake


@pytest.mark.slow
def test_api_config_runs_end_to_end_against_the_local_server(tmp_path):
    server, url = _start_server()
    try:
        cfg = yaml.safe_load((REPO / "configs/api-smoke.yaml").read_text())
        cfg["openai"]["base_url"] = url
        (tmp_path / "api.yaml").write_text(yaml.safe_dump(cfg))
        snakemake(tmp_path, "--configfile", str(tmp_path / "api.yaml"), "--cores", "2", "figures/all")
    finally:
        server.terminate()
        server.wait(timeout=30)
    manifest = (tmp_path / "figures/all").read_text()
    assert "drift_over_rounds.pdf" in manifest and "example_dialog.pdf" in manifest
    assert "attention_decay" not in manifest  # needs model internals: not built for API models
    convs = list((tmp_path / "results/api-smoke/transcripts").glob("*/shard-*/conv-*.json"))
    assert len(convs) == 3
    cache = list(Path(tmp_path / "resources/models/tiny-api/openai-cache").glob("*.json"))
    assert cache, "responses were not cached"


def _start_server():
    server = subprocess.Popen([sys.executable, "-m", "personadrift", "serve", "--tiny", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = None, time.time() + 120
    while url is None and time.time() < deadline:
        line = server.stdout.readline()
        if not line and server.poll() is not None:
            raise AssertionError("server exited before it listened")
        m = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        url = m.group(1) if m else None
    assert url, "the server never printed its address"
    return server, url


@pytest.mark.slow
def test_mixed_backends_share_seeds_pairs_and_scoring(tmp_path):
    """Baseline, control and repetition through an OpenAI-compatible server (this project's own
    `personadrift serve`); split-softmax and guidance, which need the model's internals, through
    the HF engine; one study, one persona pool, one scoring, MMLU on the HF engine for all."""
    import json

    server, url = _start_server()
    try:
        cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
        cfg["study"] = "mixed"
        cfg["openai"] = {"base_url": url, "model": "tiny", "concurrency": 2}
        for family in ("none", "control", "repeat"):
            cfg["interventions"][family]["backend"] = "openai"
        (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(cfg))
        # up to what the claim needs (every setting's scores, MMLU and the trade-off table), not the figures
        snakemake(tmp_path, "--configfile", str(tmp_path / "mixed.yaml"), "--cores", "2",
                  "results/mixed/tables/tradeoff.csv", "results/mixed/scores/control.csv")
    finally:
        server.terminate()
        server.wait(timeout=30)
    res = tmp_path / "results/mixed"
    plans = {}
    for setting, backend in (("none", "openai"), ("control", "openai"), ("repeat-every1", "openai"),
                             ("split-k0.5", "hf"), ("cfg-g1.5", "hf")):
        convs = sorted((res / "transcripts" / setting).glob("shard-*/conv-*.json"))
        assert len(convs) == 3
        recs = [json.loads(c.read_text()) for c in convs]
        assert {r["provenance"]["backend"] for r in recs} == {backend}, setting
        plans[setting] = [(r["agent"]["id"], r["user"]["id"], r["topic"]) for r in recs]
        assert (res / "scores" / f"{setting}.csv").exists()
    assert len({tuple(p) for p in plans.values()}) == 1  # the same persona pairs and topics everywhere
    assert (res / "mmlu/none.csv").exists() and (res / "tables/tradeoff.csv").exists()
    assert list((tmp_path / "resources/models/tiny/openai-cache").glob("*.json")), "API responses were not cached"
