"""The config check shared by ``personadrift validate`` and the workflow (config.check_config):
names that become paths, intervention grids, layer sets, keys foreign to a method, pool size,
model folders, and bounded messages. In-process and fast."""

from __future__ import annotations

import copy
import json

import pytest

from personadrift.config import check_config, read_yaml, validate_config
from personadrift.errors import InputError
from personadrift.interventions import METHODS
from personadrift.interventions.settings import expand_settings, setting_by_name
from support.workflow import REPO


@pytest.fixture
def default():
    return read_yaml(REPO / "config.yaml")


def refused(config, tmp_path=None) -> InputError:
    with pytest.raises(InputError) as e:
        check_config(config, "cfg.yaml", REPO, workdir=tmp_path or REPO)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith("cfg.yaml: "), msg
    return e.value


def with_iv(config, **entries):
    config["interventions"] = {"none": {"method": "none"}, **entries}
    return config


@pytest.mark.parametrize("key,value", [("study", ".."), ("study", "a/b"), ("study", ".hidden"), ("study", "a b"),
                                       ("study", "x" * 101), ("study", "ü")])
def test_study_name_rule(default, key, value):
    default[key] = value
    e = refused(default)
    assert e.field == "study" and "not a usable name" in e.problem


@pytest.mark.parametrize("value", ["..", "../x", "a/b", "$(rm)"])
def test_model_name_rule(default, value):
    default["model"]["name"] = value
    assert refused(default).field == "model.name"


@pytest.mark.parametrize("family", ["a/b", "../x", "a b", ".x", "x;y"])
def test_intervention_keys_follow_the_name_rule(default, family):
    with_iv(default, **{family: {"method": "repetition", "every": [1]}})
    e = refused(default)
    assert e.field == "interventions" and "not a usable name" in e.problem and family[:3] in e.problem


def test_chosen_must_be_in_the_grid(default):
    with_iv(default, ss={"method": "split_softmax", "k": [0.5, 0.25], "chosen": 0.3})
    e = refused(default)
    assert e.field == "interventions.ss.chosen" and "not one of the grid values" in e.problem


def test_grid_values_that_print_alike_get_distinct_names(default):
    with_iv(default, ss={"method": "split_softmax", "k": [0.5, 0.5000001, 0.50000001]})
    validate_config(default, "cfg.yaml")
    names = [s.name for s in expand_settings(default["interventions"])]
    assert len(set(names)) == len(names) == 4
    assert setting_by_name(default["interventions"], names[2]).value == 0.5000001


def test_duplicate_grid_values_and_colliding_names_are_refused(default):
    with_iv(default, ss={"method": "split_softmax", "k": [0.5, 0.5]})
    assert refused(default).field == "interventions.ss.k"
    cfg = read_yaml(REPO / "config.yaml")
    with_iv(cfg, r={"method": "repetition", "every": [1]}, **{"r-every1": {"method": "none"}})
    e = refused(cfg)
    assert "r-every1" in e.problem and "also made by" in e.problem


@pytest.mark.parametrize("layers,problem", [([], "selects no layer"), ({"start": 3, "stop": 3}, "selects no layer"),
                                            ("some", "expected"), ([0, "1"], "layer indices"), ([-1], "layer indices"),
                                            ([1, 1], "twice"), ({"start": 0}, "expected"), (True, "expected")])
def test_layer_sets_are_typed_and_select_something(default, layers, problem):
    with_iv(default, ss={"method": "split_softmax", "k": [0.5], "layers": layers})
    e = refused(default)
    assert e.field == "interventions.ss.layers" and problem in e.problem


def test_layers_past_the_model_depth_are_refused_when_the_depth_is_known(default):
    default["model"] = {"name": "tiny", "source": "tiny"}  # 2 layers
    with_iv(default, ss={"method": "split_softmax", "k": [0.5], "layers": [0, 2]})
    e = refused(default)
    assert e.field == "interventions.ss.layers" and "layer 2 does not exist: the model has 2 layers" in e.problem
    default["interventions"]["ss"]["layers"] = {"start": 0, "stop": 2}
    check_config(default, "cfg.yaml", REPO)


def test_depth_read_from_a_fetched_model_folder(default, tmp_path):
    folder = tmp_path / "resources/models" / default["model"]["name"]
    (folder / "weights").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"weights_dir": "weights"}))
    (folder / "weights/config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    with_iv(default, ss={"method": "split_softmax", "k": [0.5], "layers": [4]})
    assert "the model has 4 layers" in refused(default, tmp_path).problem
    default["attention"] = {"layers": [7]}
    default["interventions"]["ss"]["layers"] = [3]
    assert refused(default, tmp_path).field == "attention.layers"


@pytest.mark.parametrize("method,foreign", [("split_softmax", {"every": [1]}), ("repetition", {"layers": [0]}),
                                            ("cfg", {"k": [0.5]}), ("none", {"chosen": 1})])
def test_keys_of_another_method_are_refused(default, method, foreign):
    entry = {"method": method, **({METHODS[method].grid_key: [1]} if METHODS[method].grid_key else {}), **foreign}
    with_iv(default, x=entry)
    e = refused(default)
    assert e.field == f"interventions.x.{next(iter(foreign))}" and f"not a key of method {method}" in e.problem


def test_a_float_is_not_an_integer(default):
    default["selfchat"]["conversations"] = 8.0
    e = refused(default)
    assert e.field == "selfchat.conversations" and "expected integer" in e.problem


@pytest.mark.parametrize("n", [0, 1])
def test_a_pool_too_small_to_pair_is_refused_before_any_model(default, tmp_path, n):
    persona = ("  - id: p{i}\n    category: pattern\n    system_prompt: \"Answer in one word.\"\n"
               "    probe: \"What is Paris?\"\n    judge: {{name: one_word}}\n")
    (tmp_path / "p.yaml").write_text("personas:\n" + "".join(persona.format(i=i) for i in range(n)) if n else "personas: []\n")
    default["personas"] = {"files": [str(tmp_path / "p.yaml")]}
    try:
        e = refused(default)
    except AssertionError:
        raise
    assert e.field.startswith("personas") and ("min_kept" in e.problem or "personas" in e.problem)


def test_an_empty_local_model_folder_is_refused(default, tmp_path):
    default["model"] = {"name": "m", "source": "local", "path": str(tmp_path)}
    e = refused(default)
    assert e.field == "model.path" and "has no config.json" in e.problem


def test_an_alias_bomb_gives_one_short_line(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        bomb.append(f"{'abcdefghij'[i]}: &{'abcdefghij'[i]} [" + ", ".join([f"*{'abcdefghij'[i - 1]}"] * 10) + "]")
    text = "\n".join(bomb).replace("a:", "x0:", 1)
    (tmp_path / "bomb.yaml").write_text("model: {name: tiny, source: tiny}\nstudy: &s [1]\nbomb:\n  " +
                                        "\n  ".join(text.splitlines()) + "\nseed: *i\n")
    cfg = read_yaml(tmp_path / "bomb.yaml")
    with pytest.raises(InputError) as e:
        validate_config(cfg, "bomb.yaml")
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_long_values_are_quoted_briefly(default):
    default["backend"] = "x" * 100_000
    e = refused(default)
    assert e.field == "backend" and len(str(e)) < 500


def test_every_method_owns_its_switches():
    """The registry answers what the rest of the code used to decide by comparing names."""
    ivs = {"none": {"method": "none"}, "control": {"method": "none", "user_persona": False},
           "ss": {"method": "split_softmax", "k": [0.5], "apply_to": "dialog"},
           "rep": {"method": "repetition", "every": [2]}, "g": {"method": "cfg", "guidance_scale": [2.0]}}
    s = {x.name: x for x in expand_settings(ivs)}
    assert list(s) == ["none", "control", "ss-k0.5", "rep-every2", "g-g2"]
    assert not s["control"].user_persona and s["none"].user_persona
    assert s["ss-k0.5"].intervenes("dialog") and not s["ss-k0.5"].intervenes("probe") and s["ss-k0.5"].intervenes("mmlu")
    assert s["g-g2"].intervenes("probe") and s["g-g2"].engine_intervention().hook("branch").scale == 2.0
    msgs = [{"role": "system", "content": "p"}, {"role": "user", "content": "q"}]
    assert s["g-g2"].negative_messages(msgs) == msgs[1:] and s["ss-k0.5"].negative_messages(msgs) is None
    assert s["rep-every2"].repetition().every == 2 and s["none"].repetition() is None
    assert [x.needs_internals for x in s.values()] == [False, False, True, False, True]
    with pytest.raises(ValueError):
        s["ss-k0.5"].intervenes("dialogue")


def test_openai_backend_per_setting(default):
    cfg = copy.deepcopy(default)
    with_iv(cfg, ss={"method": "split_softmax", "k": [0.5], "backend": "openai"})
    cfg["openai"] = {"model": "m"}
    e = refused(cfg)
    assert e.field == "interventions.ss.backend" and "needs model internals" in e.problem
    cfg["interventions"] = {"none": {"method": "none", "backend": "openai"}}
    check_config(cfg, "cfg.yaml", REPO)
    assert expand_settings(cfg["interventions"])[0].backend_for("hf") == "openai"
    del cfg["openai"]
    cfg.pop("openai", None)
    cfg2 = read_yaml(REPO / "config.yaml")
    cfg2["interventions"] = {"none": {"method": "none", "backend": "openai"}}
    assert refused(cfg2).field == "openai.model"


# ------------------------------------------------------------------ checks that used to wait for a job


@pytest.mark.parametrize("n,ok", [(14_042, True), (14_043, False), (100_000, False)])
def test_mmlu_subset_larger_than_the_test_split_is_refused(default, n, ok):
    default["mmlu"]["questions"] = n
    if ok:
        check_config(default, "cfg.yaml", REPO)
        return
    e = refused(default)
    assert e.field == "mmlu.questions" and f"{n} is more than the 14,042 questions" in e.problem


def test_mmlu_subset_is_checked_against_a_configured_copy(default, tmp_path):
    row = {"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
           "correct_answer": "A", "topic": "t"}
    copy_ = tmp_path / "mmlu.jsonl"
    copy_.write_text("".join(json.dumps(row) + "\n" for _ in range(5)))
    default["mmlu"] = {"source": str(copy_), "questions": 6}
    e = refused(default)
    assert e.field == "mmlu.questions" and "more than the 5 questions of" in e.problem and "mmlu.jsonl" in e.problem
    default["mmlu"]["questions"] = 5
    check_config(default, "cfg.yaml", REPO)


@pytest.mark.parametrize("opening,problem", [
    ("Q: $topic A: $reply $persona", "unknown field $persona"),
    ("$Topic / $reply / $topic", "unknown field $Topic"),
    ("only $topic", "must contain $topic and $reply"),
    ('asked "{topic}"', "without braces"),
])
def test_an_opening_with_an_unknown_field_is_refused_by_validate(default, opening, problem):
    default["selfchat"]["opening"] = opening
    e = refused(default)
    assert e.field == "selfchat.opening" and problem in e.problem


def test_the_opening_knows_topic_and_reply(default):
    default["selfchat"]["opening"] = "Earlier: $topic, then $reply ($$5)"
    check_config(default, "cfg.yaml", REPO)


@pytest.mark.parametrize("key", ["selfchat.max_new_tokens", "selfchat.probe_max_new_tokens",
                                 "personas.calibration.max_new_tokens"])
def test_a_reply_budget_past_model_max_context_is_refused(default, key):
    default["model"]["max_context"] = 512
    section, *rest = key.split(".")
    target = default[section]
    for part in rest[:-1]:
        target = target.setdefault(part, {})
    target[rest[-1]] = 511
    check_config(copy.deepcopy(default), "cfg.yaml", REPO)
    target[rest[-1]] = 512
    e = refused(default)
    assert e.field == key and "512 tokens leave no room for a prompt" in e.problem and "model.max_context" in e.problem


def test_a_reply_budget_past_a_fetched_model_context_is_refused(default, tmp_path):
    folder = tmp_path / "resources/models" / default["model"]["name"]
    (folder / "weights").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"weights_dir": "weights"}))
    (folder / "weights/config.json").write_text(json.dumps({"num_hidden_layers": 4, "max_position_embeddings": 256}))
    default["selfchat"]["probe_max_new_tokens"] = 300
    e = refused(default, tmp_path)
    assert e.field == "selfchat.probe_max_new_tokens" and "256 positions (its config's max_position_embeddings)" in e.problem
    check_config(default, "cfg.yaml", REPO)  # no fetched model here: the context is unknown, nothing to check


def test_a_reply_budget_past_the_tiny_model_context_is_refused(default):
    import inspect

    from personadrift.generation.tiny import build_tiny_model

    positions = inspect.signature(build_tiny_model).parameters["max_positions"].default
    default["model"] = {"name": "tiny", "source": "tiny"}
    default["selfchat"]["max_new_tokens"] = positions
    assert refused(default).field == "selfchat.max_new_tokens"


@pytest.mark.parametrize("name,overrides,key", [
    ("mmlu", {"mmlu": {"questions": 100000}}, "mmlu.questions"),
    ("opening", {"selfchat": {"opening": "$topic $reply $persona"}}, "selfchat.opening"),
    ("context", {"model": {"max_context": 64}, "selfchat": {"probe_max_new_tokens": 64}}, "selfchat.probe_max_new_tokens"),
])
def test_validate_command_names_the_file_and_key(default, tmp_path, name, overrides, key):
    """``personadrift validate`` prints one line naming the file and the key, exit status 2."""
    import subprocess
    import sys

    import yaml

    from personadrift.config import deep_merge

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_merge(default, overrides)))
    proc = subprocess.run([sys.executable, "-m", "personadrift", "validate", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"personadrift: error: {path}: {key}: "), proc.stderr


# ------------------------------------------------------------------ what validate can know without a model


@pytest.mark.parametrize("key,value", [
    ("selfchat.temperature", ".nan"), ("selfchat.top_p", ".inf"), ("scoring.confidence", "-.inf"),
    ("personas.calibration.min_lift", ".nan"), ("interventions.split.k[0]", ".nan"),
])
def test_a_non_finite_number_is_refused_naming_the_file_and_key(default, tmp_path, key, value):
    """NaN passes every minimum and maximum of the schema; any float key refuses it, read from YAML."""
    import yaml

    text = yaml.safe_dump(default)
    path = tmp_path / "nan.yaml"
    path.write_text(text)
    cfg = read_yaml(path)
    *parents, last = key.replace("[0]", "").split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    if key.endswith("[0]"):
        node[last] = [float(value.replace(".", ""))]
    else:
        node[last] = float(value.replace(".", ""))
    path.write_text(yaml.safe_dump(cfg))
    assert value in path.read_text()  # the file spells it as YAML does
    e = refused(read_yaml(path))
    assert e.field == key and "is not a finite number" in e.problem


@pytest.mark.parametrize("model,problem", [
    ({"dtype": "bfloat16"}, "needs model.dtype: float32 (not bfloat16)"),
    ({"dtype": "bfloat16_if_native"}, "needs model.dtype: float32"),
    ({"linear_kernel": "torch"}, "not model.linear_kernel: torch"),
])
def test_batch_invariance_with_what_the_loader_refuses_is_refused_at_validate(default, model, problem):
    assert default["model"]["batch_invariant"] is True
    default["model"].update(model)
    e = refused(default)
    assert e.field == "model.batch_invariant" and problem in e.problem
    default["model"]["batch_invariant"] = False
    check_config(default, "cfg.yaml", REPO)  # the same model without batch invariance is fine


def test_every_example_dialog_rule_the_schema_allows_is_one_the_step_runs():
    from personadrift.config import load_schema
    from personadrift.steps.figures import EXAMPLE_DIALOG_RULES

    spec = load_schema()["properties"]["report"]["properties"]["example_dialog_rule"]
    assert set(spec["enum"]) == set(EXAMPLE_DIALOG_RULES) and spec["default"] in EXAMPLE_DIALOG_RULES


def test_a_rules_params_get_the_schemas_defaults_in_their_sections_only():
    """A step indexes what the schema fills in; a top-level key its rule does not hand it stays missing."""
    from personadrift.config import fill_defaults

    cfg = fill_defaults({"seed": 3, "scoring": {"confidence": 0.9}, "personas": {"calibration": {}}})
    assert cfg["scoring"] == {"confidence": 0.9, "english_fluency_gate": False, "method": "t", "resamples": 2000,
                              "bootstrap_unit": "conversation"}
    assert cfg["personas"]["calibration"]["samples"] >= 1 and cfg["seed"] == 3
    assert "study" not in cfg and "selfchat" not in cfg


@pytest.mark.parametrize("entry,field,problem", [
    ({"omega": [0.5]}, "interventions.a.omega[0]", "less than the minimum of 1"),  # weakens the prompt: no control
    ({"omega": ["strong"]}, "interventions.a.omega[0]", "expected number"),
    ({"omega": []}, "interventions.a.omega", "should be non-empty"),
    ({"omega": [2], "chosen": 3}, "interventions.a.chosen", "not one of the grid values"),
    ({"omega": [2], "mask": "blank"}, "interventions.a.mask", "'blank' is not one of"),
    ({}, "interventions.a.omega", "required by method spa"),
])
def test_a_bad_spa_entry_names_its_key(default, entry, field, problem):
    with_iv(default, a={"method": "spa", **entry})
    e = refused(default)
    assert e.field == field and problem in e.problem, str(e)
