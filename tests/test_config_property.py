"""Property test (hypothesis): one key of the default config mutated at a time (wrong types,
signs, empty, huge, path-like strings, unicode). Either the shared check (``personadrift
validate`` = the workflow's planning check) refuses with one short line naming that key, or
every path the workflow would write stays under results/, logs/, benchmarks/, figures/ or resources/
inside the repository. No case changes an existing file (checked by hash). A slow companion
runs the real ``snakemake -n`` on accepted path-like mutations and reads its planned outputs."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personadrift.config import check_config, read_yaml
from personadrift.errors import InputError
from personadrift.interventions.settings import expand_settings
from support.workflow import REPO

DEFAULT = read_yaml(REPO / "config.yaml")
ALLOWED = ("results", "logs", "benchmarks", "figures", "resources")


def leaf_keys(cfg: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.append((*prefix, k))  # the mapping itself can be mutated too
            out.extend(leaf_keys(v, (*prefix, k)))
        else:
            out.append((*prefix, k))
    return out


KEYS = leaf_keys(DEFAULT)
PATHLIKE = ["..", "../x", "a/b", "/etc/x", ".hidden", "a b", "x;rm -rf y", "$(id)", "ü", "名前", "", "a\nb",
            "x" * 5000, "../../../tmp/out", "~", "*", "{setting}"]
VALUES = st.one_of(
    st.sampled_from(PATHLIKE),
    st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(),
    st.lists(st.sampled_from([0, -1, 1.5, "x", None]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "..", "start", "stop"]), st.integers(-2, 3), max_size=2),
    st.text(max_size=20),
)


def mutate(key: tuple, value) -> dict:
    cfg = copy.deepcopy(DEFAULT)
    node = cfg
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    return cfg


def planned_roots(cfg: dict) -> list[Path]:
    """The folders the workflow writes into (rules/*.smk: results/<study>, logs/<study>,
    resources/models/<model.name>, results/<study>/transcripts/<setting>, figures/)."""
    study, model = cfg["study"], cfg["model"]["name"]
    roots = [f"results/{study}", f"logs/{study}", f"benchmarks/{study}", f"resources/models/{model}", "figures",
             "resources/mmlu"]
    for s in expand_settings(cfg["interventions"]):
        roots += [f"results/{study}/transcripts/{s.name}/shard-0", f"results/{study}/mmlu/{s.name}.csv",
                  f"logs/{study}/selfchat/{s.name}/shard-0.log"]
    return [REPO / r for r in roots]


def inside_allowed(p: Path) -> bool:
    p = Path(os.path.normpath(p))
    return any(p.is_relative_to(REPO / top) and p != REPO / top or p == REPO / "figures" for top in ALLOWED)


def digest(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A working directory with results already computed (the check must leave them alone)."""
    work = tmp_path_factory.mktemp("existing")
    for name in ("results/embedded-default/scores/none.csv", "figures/embedded-default/drift_over_rounds.png", "config.yaml"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(f"{name}\n")
    return work


COUNT = {"refused": 0, "accepted": 0}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_one_mutated_key_is_refused_by_name_or_stays_inside(existing, key, value):
    cfg = mutate(key, value)
    before = digest(existing) | digest(REPO / "personas")
    try:
        check_config(cfg, "config.yaml", REPO, workdir=existing)
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 600, msg[:1000]
        dotted = ".".join(map(str, key))
        # the message names the mutated key (or, for a mutated mapping, a key inside it)
        assert e.field and (e.field.startswith(dotted) or dotted.startswith(e.field.split("[")[0])
                            or (key[0] == "personas" and e.field.startswith("personas"))), (dotted, msg)
        COUNT["refused"] += 1
    else:
        COUNT["accepted"] += 1
        for p in planned_roots(cfg):
            assert inside_allowed(p), (key, value, p)
    assert digest(existing) | digest(REPO / "personas") == before


def test_the_property_test_saw_enough_bad_inputs():
    """Runs after the property test in this module: at least 50 refused cases."""
    if COUNT["refused"] + COUNT["accepted"] == 0:
        pytest.skip("the property test did not run in this session")
    assert COUNT["refused"] >= 50, COUNT


# ------------------------------------------------------------------ the real dry run (slow)
DRY_RUN_CASES = [(("study",), "study.v2"), (("model", "name"), "m-1.0_b"), (("interventions",),
                 {"none": {"method": "none"}, "a.b-c_d": {"method": "repetition", "every": [3]}}),
                 (("study",), ".."), (("model", "name"), "../m"), (("interventions",),
                 {"none": {"method": "none"}, "x y": {"method": "repetition", "every": [1]}})]


def _dry_run(work: Path, key, value):
    cfg = mutate(key, value)
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    bin_ = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    return subprocess.run([str(bin_ / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work), "figures/all",
                           "-n", "--configfile", str(work / "c.yaml")],
                          capture_output=True, text=True, env=env, cwd=work, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("key,value", DRY_RUN_CASES, ids=lambda x: str(x)[:20])
def test_real_dry_run_plans_only_inside_its_folders(tmp_path, key, value):
    work = tmp_path / "repo"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    before = digest(tmp_path)
    proc = _dry_run(work, key, value)
    out = proc.stdout + proc.stderr
    try:
        check_config(mutate(key, value), "c.yaml", REPO, workdir=work)
        accepted = True
    except InputError as e:
        accepted = False
        assert proc.returncode != 0 and e.problem in out, out[-2000:]
    if accepted:
        assert proc.returncode == 0, out[-2000:]
        detailed = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"),
                                   "--directory", str(work), "figures/all", "--detailed-summary",
                                   "--configfile", str(work / "c.yaml")], capture_output=True, text=True, cwd=work,
                                  env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        files = [ln.split("\t")[0] for ln in detailed.stdout.splitlines()[1:] if ln.strip()]
        assert files, detailed.stdout[-2000:] + detailed.stderr[-2000:]
        for f in files:
            p = Path(os.path.normpath(work / f))
            assert any(p.is_relative_to(work / top) for top in ALLOWED), f
    assert {k: v for k, v in digest(tmp_path).items() if "/.snakemake/" not in k and not k.endswith("c.yaml")} == \
        {k: v for k, v in before.items()}
