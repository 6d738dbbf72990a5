"""A new intervention method is one installed package: the toy method of
tests/plugins/personadrift-toy-method/, installed with pip, runs through the config check,
``serve``, the smoke DAG (self-chat, MMLU, trade-off) and the figures without any file of
personadrift naming it; personadrift's own methods are found the same way; a broken plug-in is
one error naming its entry point and distribution."""

import importlib
import json
import os
import subprocess
import urllib.request
from importlib.metadata import entry_points

import pytest
import yaml

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.interventions import METHODS, MethodPluginError
from support.plugins import TOY_METHOD, env_with, install, on_path, write_plugin
from support.workflow import BIN, REPO, snakemake

TOY = "toy_contrast"
SYSTEM = "You love playing tennis and bring it up whenever you can."


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """The toy method's package installed with pip into a folder of its own (not the venv)."""
    return install(TOY_METHOD, tmp_path_factory.mktemp("toy") / "site")


@pytest.fixture
def toy_method(toy_site):
    """The toy method's module, its package on this process's path for this test only."""
    with on_path(toy_site):
        yield importlib.import_module("personadrift_toy_method")


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
        "resources": {"gpus": 1, "cpu_fallback": True, "threads": 1, "mem_mb": 2000, "runtime_min": 10},
    }
    cfg.update(overrides)
    return cfg


def test_the_built_in_methods_are_entry_points_of_personadrift():
    own = {ep.name: ep.value for ep in entry_points(group="personadrift.methods") if ep.dist.name == "personadrift"}
    assert own == {"none": "personadrift.interventions.none:NoIntervention",
                   "split_softmax": "personadrift.interventions.split_softmax:SplitSoftmax",
                   "repetition": "personadrift.interventions.repetition:PromptRepetition",
                   "cfg": "personadrift.interventions.guidance:Guidance",
                   "instaboost": "personadrift.interventions.instaboost:InstABoost",
                   "spa": "personadrift.interventions.spa:SelectivePromptAnchoring",
                   "steer": "personadrift.interventions.steering:Steering"}
    assert {name: f"{type(m).__module__}:{type(m).__name__}" for name, m in METHODS.items()} == own


def test_the_toy_method_is_unknown_until_its_package_is_installed(toy_site):
    from personadrift.config import validate_config
    from personadrift.errors import InputError

    assert TOY not in METHODS
    with pytest.raises(InputError, match=f"interventions.toy.method: '{TOY}' is not one of"):
        validate_config(toy_config())
    with on_path(toy_site):
        (ep,) = [ep for ep in entry_points(group="personadrift.methods") if ep.name == TOY]
        assert (ep.dist.name, ep.value) == ("personadrift-toy-method", "personadrift_toy_method:NeutralContrast")
        assert type(METHODS[TOY]).__module__ == "personadrift_toy_method"
        assert validate_config(toy_config())["interventions"]["toy"]["method"] == TOY
    assert TOY not in METHODS


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
    assert engine.identity["chat_template_sha256"] and engine.intervention.hook("branch").weight == 2.0
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


def test_its_own_hook_is_what_the_engine_applies(toy_method, tiny_model):
    """The engine mixes the toy's branch with the hook the plug-in module defines, naming no
    method: its next-token scores are the toy's mix of two plain forwards of the model."""
    import torch

    from personadrift.generation.engine import HFEngine

    model, tok = tiny_model
    hook = toy_method.NeutralContrastHook(weight=2.5)
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about day {i}."}]
            for i in range(3)]
    negative = [[{"role": "system", "content": toy_method.NEUTRAL}, m[1]] for m in msgs]
    engine = HFEngine(model, tok, intervention=Intervention((hook,)))
    got = engine.next_token_logprobs([GenRequest(m, seed=0, intervene=True, negative_messages=n)
                                      for m, n in zip(msgs, negative)])

    def last_logits(messages):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            return model(input_ids=ids["input_ids"]).logits[0, -1]

    for i, (m, n) in enumerate(zip(msgs, negative)):
        lc, ln = (torch.log_softmax(last_logits(x).float(), -1) for x in (m, n))
        torch.testing.assert_close(got[i], ln + 2.5 * (lc - ln), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory, toy_site):
    """The toy study run to its mitigation figures, the toy package on every workflow process's
    path (PYTHONPATH), and only there."""
    work = tmp_path_factory.mktemp("toy-study")
    (work / "toy.yaml").write_text(yaml.safe_dump(toy_config()))
    snakemake(work, "--configfile", work / "toy.yaml", "--cores", "2", "figures/toy/tradeoff_stability_mmlu.png",
              "figures/toy/mitigation_over_rounds.png", env=env_with(toy_site))
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


# ------------------------------------------------------------------ broken plug-ins
METHOD_BASE = "from personadrift.interventions.base import Method\n"
BROKEN = {  # case -> (module code, entry points, what the error says after naming the entry point)
    "import-error": ("import steering_kernels_not_installed\n", {"warp": "broken_method:Steer"},
                     "cannot be loaded (ModuleNotFoundError: No module named 'steering_kernels_not_installed')"),
    "not-a-method": ("class Steer:\n    name = 'warp'\n", {"warp": "broken_method:Steer"},
                     "<class 'broken_method.Steer'> is not a subclass of personadrift.interventions.base.Method"),
    "other-name": (METHOD_BASE + "class Steer(Method):\n    name = 'steering'\n    label = 'steering'\n",
                   {"warp": "broken_method:Steer"}, "the class's name is 'steering'; an entry point is named after its "
                   "method's name (the config's method: value)"),
}


@pytest.fixture(scope="module")
def broken_sites(tmp_path_factory):
    """One folder per broken plug-in, each installed with pip; and a plug-in that takes the
    name of personadrift's own baseline."""
    root = tmp_path_factory.mktemp("broken")
    sites = {}
    for case, (code, eps, _) in BROKEN.items():
        src = write_plugin(root / "src" / case, f"personadrift-broken-{case}", "broken_method", code, eps)
        sites[case] = install(src, root / case)
    src = write_plugin(root / "src" / "duplicate", "personadrift-second-none", "second_none",
                       METHOD_BASE + "class NoneAgain(Method):\n    name = 'none'\n    label = 'none again'\n",
                       {"none": "second_none:NoneAgain"})
    sites["duplicate"] = install(src, root / "duplicate")
    return sites


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plug_in_is_one_error_naming_its_entry_point_and_distribution(case, broken_sites):
    _, entry_points_of_case, problem = BROKEN[case]
    ((name, ref),) = entry_points_of_case.items()
    with on_path(broken_sites[case]), pytest.raises(MethodPluginError) as err:
        METHODS["none"]
    assert str(err.value) == (f"entry point '{name} = {ref}' (group personadrift.methods) of distribution "
                              f"personadrift-broken-{case} 0.1.0: {problem}")
    assert METHODS["none"].name == "none"  # off the path, the plug-in is gone again


def test_a_method_name_taken_twice_names_both_distributions(broken_sites):
    with on_path(broken_sites["duplicate"]), pytest.raises(MethodPluginError) as err:
        list(METHODS)
    msg = str(err.value)
    assert msg.startswith("the method name 'none' is given by 2 entry points: ")
    assert "entry point 'none = second_none:NoneAgain' (group personadrift.methods) of distribution " \
           "personadrift-second-none 0.1.0" in msg
    assert "entry point 'none = personadrift.interventions.none:NoIntervention' (group personadrift.methods) " \
           "of distribution personadrift " in msg


def test_the_command_line_prints_a_broken_plug_in_as_one_line(broken_sites):
    proc = subprocess.run([str(BIN / "personadrift"), "validate", "--config", str(REPO / "config.yaml")],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, **env_with(broken_sites["import-error"])})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "personadrift: error: entry point 'warp = broken_method:Steer' (group personadrift.methods) of distribution "
        "personadrift-broken-import-error 0.1.0: cannot be loaded (ModuleNotFoundError: No module named "
        "'steering_kernels_not_installed')"]


def test_the_readme_plug_in_runs_as_written(tmp_path, tiny_model):
    """The README's plug-in (its module as printed there, its entry point as the README says) is
    installed with pip and found; its hook, applied by the engine, gives the logits of the eager
    reference that rescales the weights to the share it asks for."""
    import re

    import torch

    from personadrift.attention import attention_context  # registers the eager reference too
    from personadrift.generation.engine import HFEngine
    from personadrift.interventions.settings import expand_family

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Adding an intervention method"):]
    entry = re.search(r'entry-points\."personadrift\.methods"\] (\w+) = "([\w.:]+)"', section)
    code = re.search(r"```python\n# (\w+)\.py\n(.*?)```", section, re.S)
    assert entry and code
    site = install(write_plugin(tmp_path / "src", "personadrift-floor", code.group(1), code.group(2),
                                {entry.group(1): entry.group(2)}), tmp_path / "site")
    model, tok = tiny_model
    with on_path(site):
        floor = METHODS[entry.group(1)]
        (setting,) = expand_family("floor", {"method": floor.name, floor.grid_key: [0.4]})
        engine = HFEngine(model, tok, intervention=floor.intervention(setting))
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about day 2."}]
        got = engine.next_token_logprobs([GenRequest(msgs, seed=0, intervene=True)])[0]
        rendered = engine.chat.render(msgs)
        ids = torch.tensor([rendered.ids])
        prompt = torch.zeros_like(ids, dtype=torch.bool)
        prompt[0, rendered.prompt_span[0]:rendered.prompt_span[1]] = True
        previous = model.config._attn_implementation
        model.set_attn_implementation("split_softmax_eager")
        try:
            with torch.no_grad(), attention_context(prompt, reweight=engine.intervention.hook("attention")):
                want = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        finally:
            model.set_attn_implementation(previous)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    plain = HFEngine(model, tok).next_token_logprobs([GenRequest(msgs, seed=0, intervene=True)])[0]
    assert not torch.allclose(got, plain, atol=1e-3)  # the floor changed the prompt's share
