"""Configs as overlays (personadrift/overlays.py): ``extends:`` chains merged key by key, lists
replaced, ``$patch`` directives, cycles refused, errors naming the file that holds the bad key,
the shipped overlays holding only their differences, and the merged config where every reader
takes it (``personadrift validate --show``, the workflow's planning). In-process and fast, but for
two subprocesses and one ``snakemake -n``."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from personadrift.config import check_config, load_config, validate_config
from personadrift.errors import InputError
from personadrift.overlays import read_config
from personadrift.yamlio import read_yaml
from support.workflow import REPO, snakemake


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_mappings_merge_key_by_key_and_lists_replace(tmp_path):
    write(tmp_path / "base.yaml", {"study": "base", "selfchat": {"conversations": 6, "turns": 4},
                                   "interventions": {"none": {"method": "none"},
                                                     "split": {"method": "split_softmax", "k": [0.5, 0.25]}}})
    top = write(tmp_path / "top.yaml", {"extends": "base.yaml", "selfchat": {"turns": 8},
                                        "interventions": {"split": {"k": [0.9]}}})
    cfg = read_config(top).config
    assert cfg["study"] == "base" and cfg["selfchat"] == {"conversations": 6, "turns": 8}
    assert cfg["interventions"]["split"] == {"method": "split_softmax", "k": [0.9]}  # the list replaced whole
    assert "extends" not in cfg


def test_a_chain_of_overlays_resolves_each_base_relative_to_its_own_file(tmp_path):
    (tmp_path / "a").mkdir()
    write(tmp_path / "a" / "root.yaml", {"study": "root", "seed": 1, "mmlu": {"questions": 5}})
    write(tmp_path / "mid.yaml", {"extends": "a/root.yaml", "seed": 2})
    (tmp_path / "b").mkdir()
    top = write(tmp_path / "b" / "top.yaml", {"extends": "../mid.yaml", "mmlu": {"questions": 7}})
    ov = read_config(top)
    assert ov.config == {"study": "root", "seed": 2, "mmlu": {"questions": 7}}
    assert ov.files == [str(tmp_path / "a" / "root.yaml"), str(tmp_path / "mid.yaml"), top]
    assert ov.file_of("study") == ov.files[0] and ov.file_of("seed") == ov.files[1] == ov.file_of("seed")
    assert ov.file_of("mmlu.questions") == top


def test_patch_replaces_a_mapping_or_deletes_a_key(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"name": "big", "source": "hf", "dtype": "bfloat16"},
                                   "interventions": {"none": {"method": "none"}, "cfg": {"method": "cfg"}}})
    top = write(tmp_path / "top.yaml", {"extends": "base.yaml",
                                        "model": {"$patch": "replace", "name": "tiny", "source": "tiny"},
                                        "interventions": {"cfg": {"$patch": "delete"}}})
    assert read_config(top).config == {"model": {"name": "tiny", "source": "tiny"},
                                       "interventions": {"none": {"method": "none"}}}
    bad = write(tmp_path / "bad.yaml", {"extends": "base.yaml", "model": {"$patch": "drop"}})
    with pytest.raises(InputError) as e:
        read_config(bad)
    assert str(e.value).startswith(f"{bad}: model.$patch: 'drop' is not one of")


def test_a_cycle_is_refused_in_one_line_naming_the_files(tmp_path):
    a = write(tmp_path / "a.yaml", {"extends": "b.yaml", "study": "a"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml", "study": "b"})
    with pytest.raises(InputError) as e:
        read_config(a)
    msg = str(e.value)
    assert "\n" not in msg and "extends: the chain of bases is a cycle" in msg
    assert msg.count("a.yaml") >= 2 and "b.yaml" in msg
    self_loop = write(tmp_path / "self.yaml", {"extends": "self.yaml"})
    with pytest.raises(InputError, match="cycle"):
        read_config(self_loop)


def test_a_missing_base_is_named_with_the_file_that_extends_it(tmp_path):
    top = write(tmp_path / "top.yaml", {"extends": "nowhere.yaml"})
    with pytest.raises(InputError) as e:
        read_config(top)
    assert str(e.value).startswith(f"{top}: extends: ") and "nowhere.yaml: file not found" in str(e.value)


@pytest.mark.parametrize("bad_in", ["base", "top"])
def test_an_error_names_the_file_that_holds_the_bad_key(tmp_path, bad_in):
    default = read_yaml(REPO / "config.yaml")
    base = copy.deepcopy(default)
    top = {"extends": "base.yaml", "study": "over"}
    if bad_in == "base":
        base["model"]["max_batch"] = 0
    else:
        top["selfchat"] = {"max_new_tokens": -3}
    write(tmp_path / "base.yaml", base)
    top_path = write(tmp_path / "top.yaml", top)
    with pytest.raises(InputError) as e:
        load_config(top_path)
    want = (tmp_path / "base.yaml", "model.max_batch") if bad_in == "base" else (top_path, "selfchat.max_new_tokens")
    assert str(e.value).startswith(f"{want[0]}: {want[1]}: "), str(e.value)
    ov = read_config(top_path)
    with pytest.raises(InputError) as e:
        check_config(ov.config, ov, REPO)
    assert e.value.path == str(want[0]) and e.value.field == want[1]


@pytest.mark.parametrize("overlay,base,changed", [
    ("configs/laptop.yaml", "config.yaml",
     {"study", "selfchat.conversations", "selfchat.shard_size", "selfchat.turns", "attention.conversations",
      "mmlu.questions", "resources.mem_mb", "resources.runtime_min", "resources.threads"}),
    ("configs/rehearsal.yaml", "configs/paper.yaml",
     {"study", "personas.upstream_file", "personas.upstream_sha256", "personas.upstream_topics_file",
      "personas.upstream_topics_sha256", "personas.calibration.samples", "personas.calibration.max_new_tokens",
      "selfchat.conversations", "selfchat.shard_size", "selfchat.max_new_tokens", "selfchat.probe_max_new_tokens",
      "selfchat.min_new_tokens", "selfchat.context_policy", "attention.conversations", "mmlu.questions",
      "scoring.resamples", "resources.gpus", "resources.cpu_fallback", "resources.mem_mb", "resources.runtime_min",
      "resources.threads"}),
])
def test_the_shipped_overlays_hold_only_their_differences(overlay, base, changed):
    """The laptop study is the default scaled up and the rehearsal is the paper's protocol on a
    tiny model: both validate, differ from their base in exactly these keys (the rehearsal's
    model section aside: a tiny Llama-2-format model in place of the 70B), and restate nothing."""
    ov = read_config(REPO / overlay)
    assert ov.files == [str(REPO / base), str(REPO / overlay)]
    check_config(copy.deepcopy(ov.config), ov, REPO)
    merged = flat(validate_config(ov.config, ov))
    parent = flat(validate_config(read_config(REPO / base).config, base))
    diff = {k for k in merged.keys() | parent.keys() if merged.get(k) != parent.get(k) and not k.startswith("model.")}
    assert diff == changed
    own = flat({k: v for k, v in read_yaml(REPO / overlay).items() if k not in ("extends", "model")})
    restated = {k for k, v in own.items() if parent.get(k) == v}
    assert not restated, f"{overlay} restates its base's values of {sorted(restated)}"
    if overlay.endswith("rehearsal.yaml"):
        assert ov.config["model"]["source"] == "tiny" and ov.config["model"]["tiny_template"] == "llama2"
        assert "repo_id" not in ov.config["model"] and ov.config["model"]["dtype"] == "float32"  # replaced, not merged
    else:
        assert merged["selfchat.shard_size"] == merged["selfchat.conversations"] and merged["selfchat.turns"] == 16


def test_validate_show_prints_the_merged_validated_config():
    proc = subprocess.run([sys.executable, "-m", "personadrift", "validate", "--config", "configs/laptop.yaml",
                           "--show"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown == load_config(REPO / "configs/laptop.yaml")
    assert shown["study"] == "laptop" and shown["model"]["sha256"] and shown["scoring"]["method"] == "t"
    assert validate_config(copy.deepcopy(shown), "shown.yaml") == shown  # a complete config, as printed


def test_the_workflow_plans_an_overlay_and_names_the_base_that_holds_a_bad_key(tmp_path):
    base = read_yaml(REPO / "config.yaml")
    base["model"]["max_batch"] = 0
    write(tmp_path / "base.yaml", base)
    top = write(tmp_path / "top.yaml", {"extends": "base.yaml", "study": "over"})
    proc = snakemake(tmp_path, "-n", "figures/all", "--configfile", top, check=False)
    assert proc.returncode != 0
    assert f"invalid configuration: {tmp_path / 'base.yaml'}: model.max_batch: " in proc.stdout + proc.stderr
    base["model"]["max_batch"] = 16
    write(tmp_path / "base.yaml", base)
    plan = snakemake(tmp_path, "-n", "figures/all", "--configfile", top, "--config", "seed=3").stdout
    assert "results/over/" in plan and "results/embedded-default" not in plan


def test_the_cpu_numerics_of_an_overlay_come_from_its_base(tmp_path):
    """The command line pins CPU numerics from the config before torch loads (numerics.py): an
    overlay that leaves model to its base still gets its base's mode."""
    from personadrift.numerics import mode_of_argv

    base = read_yaml(REPO / "config.yaml")
    base["model"]["cpu_numerics"] = "native"
    write(tmp_path / "base.yaml", base)
    top = write(tmp_path / "top.yaml", {"extends": "base.yaml", "study": "over"})
    assert mode_of_argv(["selfchat", "--config", top]) == "native"


def test_a_mapping_alias_bomb_in_a_base_is_refused_before_the_merge_expands_it(tmp_path):
    """Aliased mappings are shared by the YAML reader and copied apart by a merge: the size guard
    runs on each file before it is merged."""
    bomb = ["l0: &l0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}"]
    for i in range(1, 8):
        bomb.append(f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(10)) + "}")
    (tmp_path / "base.yaml").write_text("model: {name: tiny, source: tiny}\nmmlu:\n  " + "\n  ".join(bomb) + "\n")
    top = write(tmp_path / "top.yaml", {"extends": "base.yaml", "mmlu": {"l7": {"k0": {"x": 1}}}})
    with pytest.raises(InputError) as e:
        read_config(top)
    assert str(e.value).startswith(f"{tmp_path / 'base.yaml'}: mmlu: value too large")
