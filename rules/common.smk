# Validation of the config, paths, rule params and input functions shared by all rule files.
# Imports nothing heavy: parsing the DAG (once per cluster job too) loads neither torch nor
# transformers.

import copy
import json
import os
import re
import shlex
import shutil
import sys

from snakemake.exceptions import WorkflowError

try:
    from personadrift.config import check_config
    from personadrift.overlays import read_configs
    from personadrift.errors import PersonaDriftError
    from personadrift.figures.catalog import study_figures, table_refs
    from personadrift.generation.selfchat import n_shards
    from personadrift.runtime.backends import (
        BACKENDS,
        MODEL_ENV,
        backend_of,
        internals_backends,
    )
    from personadrift.protocol.persona_vectors import sidecar_path, vectors_path
    from personadrift.interventions.settings import (
        expand_settings,
        mitigation_settings,
        mmlu_from_baseline,
    )
except ImportError as exc:
    raise WorkflowError(
        f"the personadrift package is not importable here ({exc}): run 'make setup', then "
        "'source .venv/bin/activate' (or call .venv/bin/snakemake), and try again"
    ) from None

# The config: each --configfile over its extends: chain (personadrift/overlays.py), else the
# embedded default config.yaml; --config KEY=VALUE overrides on top. Snakemake's own merge of the
# files knows no extends:, so the config is rebuilt from the files here. (A configfile: directive
# would instead merge a user's --configfile into the default, so keys such as interventions could
# never be removed.)
try:
    CONFIG = read_configs(
        workflow.configfiles or [workflow.source_path("../config.yaml")],
        copy.deepcopy(dict(workflow.config_settings.config)),
    )
except PersonaDriftError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None
config.clear()
config.update(CONFIG.config)

# The same check as `personadrift validate` (one function): errors name the file that holds
# the bad key (the user's --configfile, a base it extends, or config.yaml), the key and the
# problem, before any job starts.
CONFIG_SOURCE = str(CONFIG)
try:
    check_config(config, CONFIG, workflow.basedir)
except PersonaDriftError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None

# The project's command line, as the shell function `personadrift` of every rule: personadrift on PATH
# (an activated venv, a conda env), else the one beside the Python running Snakemake
# (.venv/bin/snakemake without activation).
_PD = (
    "command personadrift"  # the installed command, not this function
    if shutil.which("personadrift")
    else f"{shlex.quote(sys.executable)} -m personadrift"
)
# (the prefix is formatted like a shell command: its braces are doubled)
shell.prefix(f'set -euo pipefail; personadrift() {{{{ {_PD} "$@"; }}}}; ')


def env_cli(env):
    """The personadrift command of a rule running in ``env`` (a backend's environment,
    runtime/backends/): under --sdm conda, the one on the activated envs/<env>.yaml's PATH;
    otherwise the CLI of the venv ``make setup-<env>`` built beside the Snakefile (.venv-<env>).
    """
    from snakemake.settings.types import DeploymentMethod

    if (
        env == MODEL_ENV
        or DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    ):
        return "personadrift"
    python = os.path.join(workflow.basedir, f".venv-{env}", "bin", "python")
    if not os.path.exists(python):
        return f"echo 'no {python}: run make setup-{env} (it builds .venv-{env}), or use --sdm conda' >&2; false"
    return f"{shlex.quote(python)} -m personadrift"


STUDY = config["study"]
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
# each study's figures in their own folder: another study never overwrites them
FIGURES = f"figures/{STUDY}"
# wall time, memory and CPU of every job (Snakemake benchmark files): bench/timings.py reads them
BENCHMARKS = f"benchmarks/{STUDY}"


def one_of(names):
    """A wildcard regex matching exactly ``names`` (none: a regex that matches nothing)."""
    return "|".join(map(re.escape, names)) or "(?!)"


SETTINGS = [s.name for s in expand_settings(config["interventions"])]
# the baseline and the interventions; controls: Method.is_control
MITIGATION = [s.name for s in mitigation_settings(config["interventions"])]
CONTROLS = [s.name for s in expand_settings(config["interventions"]) if s.is_control]
# MMLU: scored by a model job, or the baseline's scores (a method that leaves single-turn
# prompts unchanged, e.g. repetition; rules/mitigation.smk)
MMLU_COPIED = [
    s.name
    for s in mitigation_settings(config["interventions"])
    if mmlu_from_baseline(s)
]
MMLU_SCORED = [s for s in MITIGATION if s not in MMLU_COPIED]
# self-chat settings by the environment their backend runs in (rules/selfchat.smk: one rule each)
SELFCHAT_ENVS = {}
for _s in expand_settings(config["interventions"]):
    SELFCHAT_ENVS.setdefault(backend_of(config, _s).env, []).append(_s.name)
SHARDS = list(
    range(
        n_shards(config["selfchat"]["conversations"], config["selfchat"]["shard_size"])
    )
)


wildcard_constraints:
    setting=one_of(SETTINGS),
    shard=r"\d+",


# ------------------------------------------------------------------ per-key rule params
# Each rule's params carry exactly the config keys that change its output (as PyPSA-Eur's
# config provider): a changed key reruns the rules that read it and nothing else. A key is
# "section.key"; "section" is the whole section; "section-a,b" is the section without a, b.

# keys of selfchat that shape the dialog, not how one reply is sampled
DIALOG_KEYS = "conversations,shard_size,turns,runs,user_system_prompt,probe_user_persona,flatten_newlines,probe_max_new_tokens,opening,context_policy"
# keys of model that only matter once the weights are loaded
LOAD_KEYS = "dtype,device_map,fold_system_prompt,max_batch,cpu_numerics"
# the config sections of the backends the study uses (openai's: always, as fetch_model's
# manifest names its model)
MODEL_KEYS = (
    "model",
    "backend",
    "openai",
    *sorted(
        {
            backend_of(config, s).section
            for s in expand_settings(config["interventions"])
            if backend_of(config, s).section
        }
        - {"openai"}
    ),
)
# the backend of jobs that need the model's internals (attention, MMLU)
INTERNALS_BACKEND = internals_backends()[0]
SAMPLING_KEYS = (f"selfchat-{DIALOG_KEYS}",)


def config_subset(whole, *keys):
    """The nested sub-dict of ``whole`` holding exactly ``keys``."""
    out = {}
    for key in keys:
        *parents, last = key.split(".")
        src, dst = whole, out
        for p in parents:
            src, dst = src[p], dst.setdefault(p, {})
        if "-" in last:  # a section without some of its keys
            last, drop = last.split("-", 1)
            dst[last] = {k: v for k, v in src[last].items() if k not in drop.split(",")}
        else:
            dst[last] = src[last]
    return out


def config_provider(*keys):
    """Rule params: the ``keys`` of the config as JSON."""
    return json.dumps(config_subset(config, *keys), sort_keys=True)


def setting_named(name):
    """The configured setting (one grid point) called ``name``."""
    return next(s for s in expand_settings(config["interventions"]) if s.name == name)


def setting_entry(name, *, backend=None):
    """The config entry of setting ``name`` reduced to that one grid point (the rest of its
    grid and ``chosen`` change other settings or only the figures)."""
    s = setting_named(name)
    entry = {
        k: v for k, v in config["interventions"][s.family].items() if k != "chosen"
    }
    if s.impl.grid_key:
        entry[s.impl.grid_key] = [s.value]
    if backend:
        entry["backend"] = backend
    return {s.family: entry}


def setting_params(*keys, backend=None):
    """Params of a per-setting rule: ``keys`` plus the setting's own entry."""

    def params(wildcards):
        subset = config_subset(config, *keys)
        subset["interventions"] = setting_entry(wildcards.setting, backend=backend)
        if backend:
            subset["backend"] = backend
        return json.dumps(subset, sort_keys=True)

    return params


def model_resources():
    """Resources of every rule that runs the model; retries get more memory and time.
    ``attempt`` is no resource a scheduler limits: it hands Snakemake's attempt number to
    the step (resources are the only place Snakemake gives it), which fails a retry at once
    when an earlier attempt failed with an error a retry cannot fix (runtime/attempts.py).
    """
    res = config["resources"]
    return dict(
        gpu=res["gpus"],
        mem_mb=lambda wildcards, attempt: res["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: res["runtime_min"] * attempt,
        attempt=lambda wildcards, attempt: attempt,
        # for the step, not the scheduler (job.py): the GPUs it must run its model on
        # (none with resources.cpu_fallback), and each card's memory
        required_gpus=0 if res.get("cpu_fallback") else res["gpus"],
        gpu_memory_gb=res.get("gpu_memory_gb") or 0,
    )


# Scheduling on few cores: Snakemake starts the highest-priority ready job whenever a core
# frees up. Calibration gates every self-chat (the persona pool), so it goes first; then the
# self-chats, longest first (more rows per sampled reply: Method.rows_per_sample); MMLU and the small
# table and figure jobs fill the gaps. Without this, on 2 cores the MMLU jobs ran first and a
# core idled for about a minute while calibration ran alone.
PRIORITY_POOL = 20


def selfchat_priority(wildcards):
    """Settings decoding more rows per sampled reply (the longest self-chats) first."""
    return 9 + setting_named(wildcards.setting).rows_per_sample()


def method_inputs(wildcards):
    """The files the setting's method reads besides the model (Method.inputs: persona vectors,
    say), name -> path: named inputs of its self-chat and MMLU jobs, handed to the step as
    --method-inputs."""
    s = setting_named(wildcards.setting)
    return s.impl.inputs(s, RESULTS)


def method_inputs_json(wildcards):
    return json.dumps(method_inputs(wildcards), sort_keys=True)


def vector_keys(wildcards):
    """The config entries whose settings read the persona vectors of this layer (rules/vectors.smk;
    the step's error names them)."""
    path = vectors_path(RESULTS, wildcards.layer)
    keys = {
        f"interventions.{s.family}.layer"
        for s in expand_settings(config["interventions"])
        if path in s.impl.inputs(s, RESULTS).values()
    }
    return ",".join(sorted(keys)) or "layer"


def transcripts(setting):
    """The shard folders of ``setting`` (rules/selfchat.smk)."""
    return expand(rules.selfchat.output[0], setting=setting, shard=SHARDS)


def drift_table_files(setting):
    """The three drift tables of ``setting`` (by_round, change, study; rules/score.smk)."""
    return [
        expand(rules.drift_tables.output[k], setting=setting)[0]
        for k in ("by_round", "change", "study")
    ]


def figure_tables(fig):
    """The tables figure ``fig`` is drawn from: its declared rule outputs, for the baseline."""
    paths = []
    for rule, key in table_refs(fig):
        output = getattr(rules, rule).output
        paths += expand(output[key] if key else output[0], setting="none")
    return [str(p) for p in paths]


def comparison_tables(wildcards):
    """Each compared study's drift tables (rules/score.smk's by_round.csv and study.json)."""
    studies, setting = config["compare"]["studies"], config["compare"]["setting"]
    if not studies:
        raise WorkflowError(
            f"{CONFIG_SOURCE}: compare.studies is empty: name the results folders of the studies "
            "to draw side by side (e.g. [results/paper-llama2-70b, results/paper-gpt35])"
        )
    return [
        os.path.join(d, "tables", setting, name)
        for d in studies
        for name in ("by_round.csv", "study.json")
    ]
