"""figures/<study>/comparison: several studies' drift curves side by side (rule compare, personadrift compare)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from personadrift.errors import InputError
from personadrift.figures.comparison import comparison, study_tables
from support.workflow import REPO


def _curves(fig):
    """Per panel: (title, the solid stability line's (x, y))."""
    out = []
    for ax in fig.axes:
        solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        out.append((ax.get_title(), solid[0].get_xdata(), solid[0].get_ydata()))
    return out


def _check_panels(fig, results_dirs, setting="none"):
    panels = _curves(fig)
    assert len(panels) == len(results_dirs)
    for (title, x, y), d in zip(panels, results_dirs):
        br = pd.read_csv(study_tables(d, setting)[0])
        agent = br[(br["setting"] == setting) & (br["kind"] == "agent")].sort_values("round")
        assert list(x) == list(agent["round"]) and np.allclose(y, agent["mean"], equal_nan=True)
        assert yaml.safe_load(open(study_tables(d, setting)[1]))["model"] in title


def test_missing_tables_and_odd_arguments_are_named(tmp_path):
    with pytest.raises(InputError, match="by_round.csv.*file not found: build that study's drift tables"):
        comparison(*study_tables(tmp_path / "results" / "nowhere"))
    with pytest.raises(InputError, match="pairs of by_round.csv and study.json"):
        comparison(str(tmp_path / "by_round.csv"))


def test_an_empty_study_list_stops_planning_naming_the_key(tmp_path):
    from support.workflow import snakemake

    out = snakemake(tmp_path, "--configfile", REPO / "configs" / "smoke.yaml", "-n", "figures/smoke/comparison.png",
                    check=False)
    assert out.returncode != 0 and "compare.studies is empty" in out.stdout + out.stderr


@pytest.mark.slow
def test_two_studies_one_through_the_api_server_side_by_side(smoke, tmp_path):
    from support.workflow import snakemake
    from test_api_workflow import _start_server

    server, url = _start_server()
    try:
        cfg = yaml.safe_load((REPO / "configs/api-smoke.yaml").read_text())
        cfg["openai"]["base_url"] = url
        cfg["compare"] = {"studies": [str(smoke / "results" / "smoke"), "results/api-smoke"]}
        (tmp_path / "api.yaml").write_text(yaml.safe_dump(cfg))
        # the API study's own tables are built by the comparison's rule; the smoke study's exist
        snakemake(tmp_path, "--configfile", str(tmp_path / "api.yaml"), "--cores", "2", "figures/api-smoke/comparison.png")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for ext in ("png", "pdf"):
        assert (tmp_path / f"figures/api-smoke/comparison.{ext}").stat().st_size > 1000
    dirs = [smoke / "results" / "smoke", tmp_path / "results" / "api-smoke"]
    tables = [t for d in dirs for t in study_tables(d)]
    _check_panels(comparison(*tables), dirs)

    # the command line draws the same from the results folders
    import subprocess
    import sys

    out = tmp_path / "cli.png"
    subprocess.run([sys.executable, "-m", "personadrift", "compare", *map(str, dirs), "--out", str(out)],
                   check=True, cwd=tmp_path, timeout=300)
    assert out.stat().st_size > 1000


def test_the_gpt35_paper_config_runs_as_upstream_ran_gpt35():
    from personadrift.config import validate_config

    raw = yaml.safe_load((REPO / "configs" / "paper-gpt35.yaml").read_text(encoding="utf-8"))
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text(encoding="utf-8"))
    assert raw["openai"]["model"] is None                 # a placeholder the user sets
    raw["openai"]["model"] = "a-chat-model"
    cfg = validate_config(raw)
    sc = cfg["selfchat"]
    assert cfg["backend"] == "openai" and cfg["model"]["source"] == "api"
    assert sc["turns"] == 32 and paper["selfchat"]["turns"] == 16          # 16 rounds against Llama-2's 8
    assert not sc["api_send_top_p"] and not sc["api_send_max_tokens"]      # the API's defaults
    assert sc["whitespace"] == "upstream" and cfg["scoring"]["english_fluency_gate"] is True
    for key in ("opening", "runs", "whitespace"):
        assert sc[key] == paper["selfchat"][key], key
    assert cfg["compare"]["studies"] == [f"results/{paper['study']}", f"results/{cfg['study']}"]
