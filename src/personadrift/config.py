"""Loading and validating the workflow configuration.

Snakemake validates ``config`` with ``snakemake.utils.validate`` against the same schema; this
module does it for the command line, and turns schema errors into one line naming the file,
the key and the problem.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema

from personadrift.errors import InputError
from personadrift.yamlio import read_yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"  # package data


def load_schema() -> dict:
    return read_yaml(SCHEMA_PATH)


def _fill_defaults(validator_class):
    """A validator that writes schema defaults into the instance (as Snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def field_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(error: jsonschema.ValidationError) -> str:
    """A short, human problem statement for a schema error."""
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key {', '.join(map(repr, extra))} (known keys: {known})"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type":
        return f"expected {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    return error.message


def validate_config(config: dict, path: str | Path = "config") -> dict:
    """Validate ``config`` in place (filling defaults) and check cross-field rules."""
    schema = load_schema()
    cls = _fill_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        # the deepest error is the most specific one
        err = max(errors, key=lambda e: len(e.absolute_path))
        if err.context:
            err = max(err.context, key=lambda e: len(e.absolute_path))
        raise InputError(path, field_path(err), describe(err))
    _check_cross_fields(config, path)
    return config


def _check_cross_fields(config: dict, path) -> None:
    sc = config["selfchat"]
    if sc["shard_size"] > sc["conversations"]:
        sc["shard_size"] = sc["conversations"]
    ivs = config["interventions"]
    if "none" not in ivs or ivs["none"]["method"] != "none":
        raise InputError(path, "interventions.none", "the baseline entry none: {method: none} is required")
    needs = {"split_softmax": "k", "repetition": "every", "cfg": "guidance_scale"}
    for name, iv in ivs.items():
        key = needs.get(iv["method"])
        if key and key not in iv:
            raise InputError(path, f"interventions.{name}.{key}", f"required by method {iv['method']}")
        if config["backend"] == "openai" and iv["method"] in ("split_softmax", "cfg"):
            raise InputError(
                path,
                f"interventions.{name}.method",
                f"{iv['method']} needs model internals; it cannot run with backend: openai",
            )
    if config["backend"] == "openai" and not config["openai"].get("model"):
        raise InputError(path, "openai.model", "required with backend: openai")
    if (config["backend"] == "openai") != (config["model"]["source"] == "api"):
        raise InputError(path, "model.source", "use source: api exactly when backend: openai")


REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout: personas/ is looked up here


def resolve_data_paths(config: dict, path: str | Path = "config", base: str | Path = REPO_ROOT) -> dict:
    """Persona and topic files as given if they exist from the working directory, else relative
    to the workflow's folder ``base`` (so a run from elsewhere still finds personas/)."""
    def find(p: str, field: str) -> str:
        if Path(p).exists():
            return p
        alt = Path(base) / p
        if alt.exists():
            return str(alt)
        raise InputError(path, field, f"{p}: file not found (looked in {Path.cwd()} and {base})")

    pc = config["personas"]
    pc["files"] = [find(p, f"personas.files[{i}]") for i, p in enumerate(pc["files"])]
    pc["topics"] = find(pc["topics"], "personas.topics")
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read, merge ``overrides`` into, validate a config file, and locate its data files."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise InputError(path, None, "expected a mapping of keys at the top level")
    if overrides:
        config = deep_merge(config, overrides)
    return resolve_data_paths(validate_config(config, path), path)


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
