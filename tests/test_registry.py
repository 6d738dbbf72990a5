"""A new intervention method is one module: the toy method of tests/support/toy_method.py runs
through the config check, ``serve``, the smoke DAG (self-chat, MMLU, trade-off) and the figures
without any other file naming it."""

import importlib
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.workflow import REPO, snakemake

from personadrift.generation.api import GenRequest, Sampling
from personadrift.interventions import METHODS

TOY = "toy_contrast"
SYSTEM = "You love playing tennis and bring it up whenever you can."


@pytest.fixture
def toy_method():
    """The toy method, registered for this test only."""
    sys.modules.pop("support.toy_method", None)
    module = importlib.import_module("support.toy_method")
    try:
        yield module
    finally:
        METHODS.pop(TOY, None)
        sys.modules.pop("support.toy_method", None)


def toy_config(**overrides) -> dict:
    """The smallest study that reaches the mitigation figures: the baseline and one toy setting."""
    cfg = {
        "study": "toy",
        "model": {"name": "tiny", "source": "tiny", "max_batch": 16},
        "personas": {"calibration": {"samples": 1, "max_new_tokens": 2}},
        "selfchat": {"conversations": 2, "shard_size": 2, "turns": 2, "runs": 1, "max_new_tokens": 3,
                     "probe_max_new_tokens": 3},
        "interventions": {"none": {"method": "none"}, "toy": {"method": TOY, "weight": [2]}},
        "attention": {"conversations": 1},
        "mmlu": {"questions": 4},
        "scoring": {"resamples": 100},
        "resources": {"gpus": 1, "threads": 1, "mem_mb": 2000, "runtime_min": 10},
    }
    cfg.update(overrides)
    return cfg


def test_the_toy_method_is_unknown_until_registered():
    from personadrift.config import validate_config
    from personadrift.errors import InputError

    assert TOY not in METHODS
    with pytest.raises(InputError, match=f"interventions.toy.method: '{TOY}' is not one of"):
        validate_config(toy_config())


def test_its_entry_keys_are_its_own(toy_method):
    from personadrift.config import validate_config
    from personadrift.errors import InputError
    from personadrift.interventions.settings import expand_settings

    cfg = validate_config(toy_config())
    toy = expand_settings(cfg["interventions"])[1]
    assert (toy.name, toy.rows_per_sample(), toy.is_control, toy.intervenes("mmlu")) == ("toy-w2", 2, False, True)
    with pytest.raises(InputError, match="interventions.toy.k: not a key of method toy_contrast"):
        validate_config(toy_config(interventions={"none": {"method": "none"},
                                                  "toy": {"method": TOY, "weight": [2], "k": [0.5]}}))


def test_serve_takes_its_flag_and_serves_its_guidance(toy_method, tmp_path):
    from personadrift.generation.models import fetch_model
    from personadrift.interventions.settings import settings_from_flags
    from personadrift.runtime.factory import hf_engine
    from personadrift.runtime.serve import build_app, build_parser, method_flags

    args = build_parser().parse_args(["--tiny", "--toy-weight", "2"])
    settings = settings_from_flags(method_flags(args))
    assert [s.method for s in settings] == [TOY]
    tiny_model_dir = tmp_path / "tiny"
    fetch_model({"name": "tiny", "source": "tiny"}, tiny_model_dir)  # as serve --tiny does
    engine = hf_engine(tiny_model_dir, {}, settings=settings, max_batch=8)
    assert engine.identity["chat_template_sha256"] and engine.intervention.guidance_scale == 2.0
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about day 1."}]
    with build_app(engine, model_name="tiny", settings=settings)("127.0.0.1", 0).start() as srv:
        assert srv.app.rows(srv.app.parse({"messages": msgs, "n": 3})) == 6  # two rows per sample
        body = json.dumps({"messages": msgs, "seed": 3, "max_tokens": 6, "temperature": 1.0, "top_p": 0.9}).encode()
        req = urllib.request.Request(srv.url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            served = json.loads(r.read())["choices"][0]["message"]["content"]
    negative = [{"role": "system", "content": toy_method.NEUTRAL}, msgs[1]]
    direct = hf_engine(tiny_model_dir, {}, settings=settings, sampling=Sampling(temperature=1.0, top_p=0.9,
                                                                                   max_new_tokens=6))
    want = direct.generate([GenRequest(msgs, seed=3, persist=False, intervene=True, negative_messages=negative)])
    assert served == want[0][0]
    unguided = direct.generate([GenRequest(msgs, seed=3, persist=False, intervene=True,
                                           negative_messages=[msgs[1]])])
    assert served != unguided[0][0]  # the neutral branch is the toy's own, not guidance's


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory):
    """The toy study run to its mitigation figures, the method known to every workflow process
    only through PERSONADRIFT_METHODS."""
    work = tmp_path_factory.mktemp("toy")
    (work / "toy.yaml").write_text(yaml.safe_dump(toy_config()))
    env = {"PERSONADRIFT_METHODS": "support.toy_method",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    snakemake(work, "--configfile", work / "toy.yaml", "--cores", "2", "figures/toy/tradeoff_stability_mmlu.png",
              "figures/toy/mitigation_over_rounds.png", env=env)
    return work


@pytest.mark.slow
def test_the_toy_method_runs_through_the_smoke_dag(toy_study):
    import pandas as pd

    res = toy_study / "results/toy"
    assert len(list((res / "transcripts/toy-w2").glob("shard-*/conv-*.json"))) == 2
    conv = json.loads(next((res / "transcripts/toy-w2").glob("shard-*/conv-*.json")).read_text())
    assert conv["setting"]["method"] == TOY
    trade = pd.read_csv(next(res.rglob("tradeoff.csv")))
    toy = trade[trade["setting"] == "toy-w2"].iloc[0]
    assert toy["method"] == TOY and toy["mmlu_n"] == 4
    assert (toy_study / "figures/toy/tradeoff_stability_mmlu.png").stat().st_size > 0
    assert (toy_study / "figures/toy/mitigation_over_rounds.png").stat().st_size > 0


@pytest.mark.slow
def test_the_figures_draw_it_in_its_own_colour_and_label(toy_study, toy_method):
    from matplotlib.colors import to_hex

    from personadrift.figures.mitigation import tradeoff_stability_mmlu

    fig = tradeoff_stability_mmlu(str(next((toy_study / "results/toy").rglob("tradeoff.csv"))))
    ax = fig.axes[0]
    lines = {t.get_text(): to_hex(h.lines[0].get_color() if hasattr(h, "lines") else h.get_color())
             for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert lines[toy_method.NeutralContrast.label] == toy_method.NeutralContrast.color
