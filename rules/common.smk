# Validation of the config, paths, and input functions shared by all rule files.

import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from personadrift.config import (
    deep_merge,
    read_yaml,
    resolve_data_paths,
    validate_config,
)
from personadrift.errors import PersonaDriftError
from personadrift.generation.selfchat import n_shards
from personadrift.interventions.settings import expand_settings
from personadrift.benchmark.personas import check_pool

# Without --configfile the embedded default config.yaml is used; --config KEY=VALUE
# overrides still apply on top. (A configfile: directive would instead merge a user's
# --configfile into the default, so keys such as interventions could never be removed.)
if "model" not in config:
    _overrides = dict(config)
    config.clear()
    config.update(
        deep_merge(read_yaml(workflow.source_path("../config.yaml")), _overrides)
    )

# Errors name the user's --configfile (or config.yaml), the key and the problem; persona
# files are checked here too, so a bad one fails before any model is fetched.
CONFIG_SOURCE = ", ".join(map(str, workflow.configfiles)) or "config.yaml"
try:
    validate_config(config, CONFIG_SOURCE)
    resolve_data_paths(config, CONFIG_SOURCE, workflow.basedir)
    # check_pool: as load_pool, but with personas.upstream_file it checks that file (exists,
    # sha256) and leaves the personas to rule import_upstream, which has not run yet.
    check_pool(config, CONFIG_SOURCE)
except PersonaDriftError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None
validate(config, "../src/personadrift/schemas/config.schema.yaml")

STUDY = config["study"]
R = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
MODEL_DIR = f"resources/models/{config['model']['name']}"
MODEL = f"{MODEL_DIR}/manifest.json"
SETTINGS = [s.name for s in expand_settings(config["interventions"])]
SHARDS = list(
    range(
        n_shards(config["selfchat"]["conversations"], config["selfchat"]["shard_size"])
    )
)


wildcard_constraints:
    setting="|".join(SETTINGS),
    shard=r"\d+",


def stage_params(*sections):
    """The config sections a step needs, as JSON: a change to them reruns the step."""
    return json.dumps({k: config[k] for k in sections}, sort_keys=True)


MODEL_SECTIONS = (
    "model",
    "backend",
    "openai",
    "seed",
    "selfchat",
    "personas",
    "scoring",
)


def model_resources():
    """Resources of every rule that runs the model; retries get more memory and time."""
    res = config["resources"]
    return dict(
        gpu=res["gpus"],
        mem_mb=lambda wildcards, attempt: res["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: res["runtime_min"] * attempt,
    )


def transcripts(setting):
    return expand(f"{R}/transcripts/{setting}/shard-{{shard}}", shard=SHARDS)
