"""Loading and validating the workflow configuration.

:func:`check_config` is THE check: ``personadrift validate`` and the Snakefile (rules/common.smk)
both call it, so anything one refuses the other refuses, with the same one-line message naming
the file, the key and the problem. It runs, in order: a size guard (a YAML alias bomb is refused
before anything walks it), the JSON schema (defaults filled in, integers that are really
integers), the name rule for everything that becomes a path or a wildcard, each intervention
entry against its method's own keys and grid rules, cross-field rules, and then the semantic
checks that can run before any model: the self-chat's opening template, the MMLU subset against
the questions there are, persona files, the pool size the calibration rule needs, a local model
folder's contents, and, when the model's config is readable (a local folder, a fetched model, the
tiny model) or ``model.max_context`` is set, layer indices against its depth and token budgets
against its context.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import jsonschema

from personadrift.command import Command, add_config_arguments
from personadrift.errors import InputError
from personadrift.names import NAME_RULE, name_problem, short_repr, short_text
from personadrift.overlays import Overlay, located, read_config
from personadrift.yamlio import check_size, read_yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"  # package data
NAME_PATTERN = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$"  # the schema's spelling of names.is_safe_name


def load_schema() -> dict:
    return read_yaml(SCHEMA_PATH)


def with_backends(schema: dict) -> dict:
    """``schema`` with the registered backends as the values of ``backend`` (runtime/backends/)."""
    from personadrift.runtime.backends import BACKENDS

    schema["properties"]["backend"]["enum"] = sorted(BACKENDS)
    return schema


def _strict_validator(validator_class):
    """A validator that writes schema defaults into the instance (as Snakemake's validate does)
    and does not count 8.0 as an integer (JSON Schema does; range(8.0) does not)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(validator_class, {"properties": set_defaults}, type_checker=checker)


def field_path(error: jsonschema.ValidationError, prefix: str = "") -> str:
    out = prefix
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(error: jsonschema.ValidationError) -> str:
    """A short, human problem statement for a schema error (values quoted up to ~200 characters)."""
    v, inst = error.validator, error.instance
    if v == "additionalProperties":
        extra = sorted(map(str, set(inst) - set(error.schema.get("properties", {}))))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return short_repr(f"unknown key {', '.join(map(repr, extra))}", 300) + f" (known keys: {known})"
    if v == "required":
        return error.message.replace("is a required property", "is required")
    if v in ("enum", "const"):
        allowed = error.validator_value if v == "enum" else [error.validator_value]
        return f"{short_repr(inst)} is not one of {allowed}"
    if v == "type":
        return f"expected {error.validator_value}, got {type(inst).__name__} {short_repr(inst)}"
    if v == "pattern" and error.validator_value == NAME_PATTERN:
        return name_problem(inst) or "not a usable name"
    if v == "pattern":
        return f"{short_repr(inst)} does not match {error.validator_value!r}"
    if v == "propertyNames":
        return f"key {name_problem(inst)}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "uniqueItems"):
        return error.message if len(error.message) < 300 else f"{short_repr(inst)}: {v} {error.validator_value}"
    return short_repr(error.message, 300)


def _first_error(validator, instance):
    errors = list(validator.iter_errors(instance))
    if not errors:
        return None
    err = max(errors, key=lambda e: len(e.absolute_path))  # the deepest error is the most specific one
    if err.context:
        err = max(err.context, key=lambda e: len(e.absolute_path))
    return err


def _check_finite(value, path, where: str = "") -> None:
    """Refuse NaN and infinities anywhere: every minimum and maximum comparison of the schema is
    false for NaN (so ``temperature: .nan`` would pass it), and no key means anything by infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(path, where or None, f"{value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, path, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(v, path, f"{where}[{i}]")


def validate_config(config: dict, path: str | Path | Overlay = "config") -> dict:
    """Validate ``config`` in place (filling defaults) and check names, grids and cross-field rules.
    ``path`` an :class:`Overlay`: an error names the file of the chain that holds the bad key."""
    try:
        return _validate_config(config, path)
    except InputError as e:
        raise located(e, path) from None


def _validate_config(config: dict, path) -> dict:
    if not isinstance(config, dict):
        raise InputError(path, None, "expected a mapping of keys at the top level")
    check_size(config, path)
    _check_finite(config, path)
    schema = with_backends(load_schema())
    cls = _strict_validator(jsonschema.validators.validator_for(schema))
    err = _first_error(cls(schema), config)
    if err:
        raise InputError(path, field_path(err), describe(err))
    _check_interventions(config, path)
    _check_cross_fields(config, path)
    return config


def _check_interventions(config: dict, path) -> None:
    """Each entry against its method's own keys; grids that keep every point; unique names."""
    ivs = config["interventions"]
    base = ivs.get("none")
    if not isinstance(base, dict) or base.get("method") != "none" or base.get("user_persona", True) is not True:
        raise InputError(path, "interventions.none", "the baseline entry none: {method: none} is required")
    made: dict[str, str] = {}
    for family, entry in ivs.items():
        for s in check_entry(path, family, entry):
            if s.name in made:
                raise InputError(path, f"interventions.{family}",
                                 f"setting name {s.name!r} is also made by interventions.{made[s.name]}")
            made[s.name] = family


def check_entry(path, family: str, entry: dict) -> list:
    """One ``interventions.<family>`` entry against its method's own keys and checks; its settings."""
    from personadrift.interventions import METHODS
    from personadrift.interventions.base import EntryError
    from personadrift.interventions.settings import check_family
    from personadrift.runtime.backends import BACKENDS

    where = f"interventions.{family}"
    method = entry["method"]
    if method not in METHODS:
        raise InputError(path, f"{where}.method", f"{short_repr(method)} is not one of {sorted(METHODS)}")
    impl = METHODS[method]
    schema = impl.entry_schema()
    schema["properties"]["backend"]["enum"] = sorted(BACKENDS)  # the registered backends
    cls = _strict_validator(jsonschema.validators.validator_for(schema))
    err = _first_error(cls(schema), copy.deepcopy(entry))
    if err and err.validator == "required":
        missing = err.message.split("'")[1]
        raise InputError(path, f"{where}.{missing}", f"required by method {method}")
    if err and err.validator == "additionalProperties" and not err.absolute_path:
        extra = sorted(map(str, set(entry) - set(impl.entry_schema()["properties"])))[0]
        raise InputError(path, f"{where}.{extra}", f"not a key of method {method} "
                         f"(its keys: {', '.join(sorted(impl.entry_schema()['properties']))})")
    if err:
        raise InputError(path, field_path(err, where), describe(err))
    try:
        return check_family(family, entry)
    except EntryError as e:
        raise InputError(path, f"{where}.{e.key}", e.problem) from None


def _check_cross_fields(config: dict, path) -> None:
    from personadrift.interventions.layers import layers_problem

    _check_batch_invariance(config["model"], path)
    problem = layers_problem(config["attention"]["layers"])
    if problem:
        raise InputError(path, "attention.layers", problem)
    sc = config["selfchat"]
    if sc["shard_size"] > sc["conversations"]:
        sc["shard_size"] = sc["conversations"]
    _check_backends(config, path)
    _check_opening(config, path)
    _check_mmlu_size(config, path)


def _check_batch_invariance(model: dict, path) -> None:
    """What the loader would refuse for ``model.batch_invariant`` whatever the machine: layers not
    in float32 (auto and bfloat16_if_native are float32 only on some checkpoints or CPUs) and
    torch's linear kernel (generation/linear_kernels.py, set_linear_kernel)."""
    if not model["batch_invariant"]:
        return
    if model["dtype"] != "float32":
        raise InputError(path, "model.batch_invariant", f"needs model.dtype: float32 (not {model['dtype']}): a "
                         "batch-invariant forward runs every linear layer in float32; set one or the other")
    if model["linear_kernel"] == "torch":
        raise InputError(path, "model.batch_invariant", "needs oneDNN's packed linear, not model.linear_kernel: "
                         "torch; use linear_kernel auto or onednn, or set batch_invariant: false")


def _check_backends(config: dict, path) -> None:
    """Each setting against its backend (runtime/backends/): what it needs, the backend's own
    keys, and the model source (``api`` exactly when the study's backend runs no local weights)."""
    from personadrift.interventions.settings import expand_settings
    from personadrift.runtime.backends import BACKENDS, backend_of

    study = backend_of(config)
    used: dict = {}
    for s in expand_settings(config["interventions"]):
        backend = backend_of(config, s)
        backend.refuse(s, path)
        used.setdefault(backend.name, (backend, s))
    for backend, _s in used.values():
        backend.check(config, path)
    api = config["model"]["source"] == "api"
    if study.local_weights == api:
        remote = ", ".join(n for n, b in BACKENDS.items() if not b.local_weights)
        raise InputError(path, "model.source", f"use source: api exactly when backend: {remote}"
                         + (" (settings may still run on an API with interventions.<name>.backend)" if api else ""))
    for backend, s in used.values():
        if api and backend.local_weights:
            raise InputError(path, f"interventions.{s.family}.backend", f"backend {backend.name} runs the fetched "
                             "model, and model.source: api fetches none")


def _check_opening(config: dict, path) -> None:
    """The opening template the self-chat job would refuse, refused here with the config's name."""
    from personadrift.generation.selfchat import check_opening

    opening = config["selfchat"].get("opening")
    if opening is None:
        return
    try:
        check_opening(opening)
    except InputError as e:
        raise InputError(path, e.field, e.problem) from None


def _check_mmlu_size(config: dict, path) -> None:
    """The MMLU subset cannot be larger than the split it is drawn from: the pinned test split's
    14,042 questions, or the questions of a copy named by ``mmlu.source`` when it is readable."""
    from personadrift.capability.mmlu import MMLU_COUNT, load_mmlu

    m = config["mmlu"]
    available, where = MMLU_COUNT, "the MMLU test split"
    if m.get("source"):
        try:
            available = len(load_mmlu(m["source"], expected_sha256=None, expected_count=None))
        except InputError:  # a missing or broken copy is reported by fetch_mmlu, with its line
            return
        where = short_text(str(m["source"]))
    if m["questions"] > available:
        raise InputError(path, "mmlu.questions",
                         f"{m['questions']} is more than the {available:,} questions of {where}")


REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout: personas/ is looked up here


def resolve_data_paths(config: dict, path: str | Path | Overlay = "config", base: str | Path = REPO_ROOT) -> dict:
    """Persona and topic files as given if they exist from the working directory, else relative
    to the workflow's folder ``base`` (so a run from elsewhere still finds personas/)."""
    def find(p: str, field: str) -> str:
        if Path(p).exists():
            return p
        alt = Path(base) / p
        if alt.exists():
            return str(alt)
        raise InputError(path, field, f"{short_text(str(p))}: file not found (looked in {Path.cwd()} and {base})")

    pc = config["personas"]
    pc["files"] = [find(p, f"personas.files[{i}]") for i, p in enumerate(pc["files"])]
    pc["topics"] = find(pc["topics"], "personas.topics")
    for key in ("upstream_file", "upstream_topics_file"):
        up = pc.get(key)
        if up and not Path(up).exists() and (Path(base) / up).exists():
            # the paper's file, or a fixture shipped with the workflow; a missing one is reported
            # by the upstream check, which says where to download it
            pc[key] = str(Path(base) / up)
    return config


def check_config(config: dict, path: str | Path | Overlay = "config", base: str | Path = REPO_ROOT,
                 workdir: str | Path = ".") -> tuple[list, list]:
    """Everything that can be checked before any job runs; the pool's (personas, topics).

    ``personadrift validate`` and the workflow's planning both call this one function. ``path``
    an :class:`Overlay` (read_config): an error names the file of the chain that holds the bad key."""
    try:
        return _check_config(config, path, base, workdir)
    except InputError as e:
        raise located(e, path) from None


def _check_config(config: dict, path, base, workdir) -> tuple[list, list]:
    from personadrift.protocol.personas import check_pool, load_personas, ready_topics

    validate_config(config, path)
    resolve_data_paths(config, path, base)
    # the paper's personas and topics are imported by rules import_upstream and
    # import_upstream_topics: their source files (present, right sha256) are checked now, what
    # they import once imported
    check_pool(config, str(path))
    topics = ready_topics(config)
    if config["personas"].get("upstream_file"):
        check_model(config, path, workdir)
        return [], topics
    personas = load_personas(config["personas"]["files"])
    for p in personas:  # persona ids name files and table rows; the loader has its own stricter rule
        if name_problem(p.id):
            raise InputError(path, "personas.files", f"persona id {name_problem(p.id)}")
    cal = config["personas"]["calibration"]
    if len(personas) < cal["min_kept"]:
        raise InputError(path, "personas.files", f"{len(personas)} persona(s) in the pool, but a self-chat needs at "
                         f"least {cal['min_kept']} (personas.calibration.min_kept) to pair an agent with a user")
    if not topics and not config["personas"].get("upstream_topics_file"):
        raise InputError(path, "personas.topics", "no topics: a self-chat opens with one")
    check_model(config, path, workdir)
    return personas, topics


# files a Hugging Face model folder cannot work without
_MODEL_FILES = {"config.json": ("config.json",), "a tokenizer": ("tokenizer.json", "tokenizer.model"),
                "weights": ("*.safetensors", "*.bin", "*.gguf")}


def check_model(config: dict, path, workdir: str | Path = ".") -> None:
    """A local model folder has its files; layer sets fit the model's depth when it is known."""
    m = config["model"]
    if m["source"] == "local":
        folder = Path(m["path"]).expanduser()
        if not folder.is_dir():
            raise InputError(path, "model.path", f"{short_text(str(folder))} is not a directory")
        for what, patterns in _MODEL_FILES.items():
            if not any(any(folder.glob(p)) for p in patterns):
                raise InputError(path, "model.path", f"{short_text(str(folder))} has no {what} "
                                 f"({' or '.join(patterns)}): not a model folder in Hugging Face format")
    depth = model_depth(config, workdir)
    if depth is not None:
        check_depth(config, depth, path)
    heads = model_heads(config, workdir)
    if heads is not None:
        check_heads(config, heads, path)
    context = model_context(config, workdir)
    if context is not None:
        check_budgets(config, context, path)
    check_gpu_memory(config, path, workdir)


def check_gpu_memory(config: dict, path, workdir=".") -> None:
    """With ``resources.gpus`` and ``resources.gpu_memory_gb`` set and the model's config.json
    readable (fetched or local): the GPUs hold its weights and KV cache
    (``generation/memory.py``: ``gpus_needed``). Without the config.json the model job checks
    it before loading the weights."""
    res = config.get("resources", {})
    if not res.get("gpus") or not res.get("gpu_memory_gb") or config["model"]["source"] in ("api", "tiny"):
        return
    cfg = model_config_json(config, workdir)
    if cfg is None:
        return
    from personadrift.generation.memory import fit_problem

    try:
        problem = fit_problem(cfg, config["model"].get("dtype", "float32"), res["gpus"], res["gpu_memory_gb"],
                              config["model"].get("max_context"))
    except (KeyError, TypeError):  # not a decoder config this estimate reads: the job's own checks apply
        return
    if problem:
        raise InputError(path, "resources.gpus", problem)


def model_config_json(config: dict, workdir=".") -> dict | None:
    """The configured model's config.json, if readable without loading the model: a local
    folder's or a fetched model's (resources/models/<name>)."""
    m = config["model"]
    candidates = []
    if m["source"] == "local":
        candidates.append(Path(m["path"]).expanduser() / "config.json")
    folder = Path(workdir) / "resources" / "models" / m["name"]
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        candidates.append(folder / manifest["weights_dir"] / "config.json")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for c in candidates:
        try:
            cfg = json.loads(c.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict):
            return cfg
    return None


def _model_config_value(config: dict, workdir, key: str, tiny_parameter: str) -> int | None:
    """``key`` of the configured model's config.json (:func:`model_config_json`), or the tiny
    model's builder default."""
    if config["model"]["source"] == "tiny":
        import inspect

        from personadrift.generation.tiny import build_tiny_model

        return inspect.signature(build_tiny_model).parameters[tiny_parameter].default
    for cfg in filter(None, [model_config_json(config, workdir)]):
        text_config = cfg.get("text_config")
        n = cfg.get(key, text_config.get(key) if isinstance(text_config, dict) else None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def model_depth(config: dict, workdir: str | Path = ".") -> int | None:
    """Number of layers of the configured model, if knowable without loading it."""
    return _model_config_value(config, workdir, "num_hidden_layers", "layers")


def model_heads(config: dict, workdir: str | Path = ".") -> int | None:
    """Number of query heads per layer of the configured model, if knowable without loading it."""
    return _model_config_value(config, workdir, "num_attention_heads", "heads")


def model_context(config: dict, workdir: str | Path = ".") -> int | None:
    """Positions (prompt + reply) the model may use, if knowable without loading it: ``model.max_context``,
    else its config's ``max_position_embeddings`` (the engine's own rule)."""
    if config["model"].get("max_context"):
        return config["model"]["max_context"]
    return _model_config_value(config, workdir, "max_position_embeddings", "max_positions")


# reply budgets (tokens a reply may take), each of which must leave room for a prompt
BUDGET_KEYS = ("selfchat.max_new_tokens", "selfchat.probe_max_new_tokens", "personas.calibration.max_new_tokens")


def check_budgets(config: dict, context: int, path="config") -> None:
    """Every reply budget leaves room for a prompt in a model of ``context`` positions: a budget
    of the whole context fails on the first request, under any ``selfchat.context_policy``."""
    for key in BUDGET_KEYS:
        section, *rest = key.split(".")
        value = config.get(section)
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int) and value >= context:
            source = ("model.max_context" if config["model"].get("max_context")
                      else "its config's max_position_embeddings")
            raise InputError(path, key, f"{value} tokens leave no room for a prompt: the model has {context} "
                             f"positions ({source})")


def check_depth(config: dict, n_layers: int, path="config") -> None:
    """Every layer a setting or the attention analysis selects exists in a model of ``n_layers``."""
    from personadrift.interventions.base import EntryError
    from personadrift.interventions.layers import check_layers_depth
    from personadrift.interventions.settings import expand_settings

    try:
        for s in expand_settings(config["interventions"]):
            where = f"interventions.{s.family}"
            s.impl.check_depth(s, n_layers)
        where = "attention"
        if "attention" in config:
            check_layers_depth(config["attention"].get("layers", "all"), n_layers)
    except EntryError as e:
        raise InputError(path, f"{where}.{e.key}", e.problem) from None


def check_heads(config: dict, n_heads: int, path="config") -> None:
    """Every query head a setting selects exists in a model of ``n_heads`` heads per layer."""
    from personadrift.interventions.base import EntryError
    from personadrift.interventions.settings import expand_settings

    for s in expand_settings(config["interventions"]):
        try:
            s.impl.check_heads(s, n_heads)
        except EntryError as e:
            raise InputError(path, f"interventions.{s.family}.{e.key}", e.problem) from None


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a config file over its ``extends:`` chain, merge ``overrides`` into it, validate it,
    and locate its data files."""
    source = read_config(path)
    config = source.config
    if overrides:
        config = deep_merge(config, overrides)
    try:
        return resolve_data_paths(validate_config(config, source), source)
    except InputError as e:
        raise located(e, source) from None


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


__all__ = ["NAME_RULE", "check_config", "load_config", "validate_config"]


def fill_defaults(partial: dict, schema: dict | None = None) -> dict:
    """The schema's defaults written into the sections ``partial`` has, in place: a rule's params
    hand a step some keys of the validated config, and the step indexes what the schema fills in.
    A top-level key the params lack stays missing (a step that reads it fails loudly, rather than
    running on a default the study did not choose)."""
    schema = load_schema() if schema is None else schema
    for name, value in partial.items():
        sub = schema.get("properties", {}).get(name, {})
        if isinstance(value, dict) and "properties" in sub:
            for key, spec in sub["properties"].items():
                if "default" in spec and key not in value:
                    value[key] = copy.deepcopy(spec["default"])
            fill_defaults(value, sub)
    return partial


def config_from_args(args) -> dict:
    """The config of a subcommand: ``--params`` (JSON, or ``@file``; the rules'; schema defaults
    filled into its sections), else ``--config``, else ./config.yaml as Snakemake would use it."""
    if args.params:
        text = Path(args.params[1:]).read_text() if args.params.startswith("@") else args.params
        return fill_defaults(json.loads(text))
    if args.config:
        return load_config(args.config)
    if Path("config.yaml").exists():  # the default study, as Snakemake would use it
        return load_config("config.yaml")
    raise InputError("(command line)", "--config", "no config given and no config.yaml here")


def _validate(args) -> None:
    """The workflow's own check (rules/common.smk calls the same check_config)."""
    from personadrift.interventions.settings import expand_settings

    source: str | Overlay
    if args.params:
        config, source = config_from_args(args), "--params"
    else:
        named = args.config or "config.yaml"
        if not args.config and not Path(named).exists():
            raise InputError("(command line)", "--config", "no config given and no config.yaml here")
        source = read_config(named)
        config = source.config
    personas, topics = check_config(config, source)
    if args.show:  # the merged, validated config, defaults filled in: what every step reads
        import yaml

        print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
        return
    settings = [s.name for s in expand_settings(config["interventions"])]
    print(f"ok: {len(personas)} personas, {len(topics)} topics, settings: {', '.join(settings)}")


def _validate_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--show", action="store_true",
                   help="print the merged, validated config (extends: resolved, defaults filled in) as YAML")


COMMANDS = [
    Command("validate", "validate a config file and its persona files", _validate, _validate_arguments,
            takes_config=False),
]
