"""The persona benchmark files, the topic list, the schema, and persona-file validation errors."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest
import yaml

from personadrift.errors import InputError
from personadrift.protocol.judges import judge_info
from personadrift.protocol.personas import (
    CATEGORIES,
    FrozenDict,
    Persona,
    load_personas,
    load_topics,
    persona_schema,
)
from support.workflow import REPO as ROOT

BENCH = ROOT / "personas" / "benchmark"
PATHS = [BENCH / f"{c}.yaml" for c in CATEGORIES]  # the five benchmark files, in category order
PAPER_COUNTS = {"pattern": 29, "multiple_choice": 27, "persona": 14, "memorization": 27, "language": 3}
PERSONAS = load_personas(PATHS)


# ---- the benchmark ------------------------------------------------------------------------------
def test_multiple_choice_answer_letters_are_balanced():
    from collections import Counter

    mc = [p for p in PERSONAS if p.judge == "multiple_choice"]
    letters = Counter(p.judge_args["letter"] for p in mc)
    assert len(mc) == 27 and set(letters) == {"A", "B", "C", "D"}, letters
    assert max(letters.values()) - min(letters.values()) <= 1, letters
    for p in mc:  # the probe lists the judge's options in order, and the letter is one of them
        opts = p.judge_args["options"]
        assert ord(p.judge_args["letter"]) - ord("A") < len(opts)
        assert " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(opts)) in p.probe, p.id


def test_benchmark_counts_match_the_paper():
    assert len(PERSONAS) == 100
    assert Counter(p.category for p in PERSONAS) == Counter(PAPER_COUNTS)
    assert tuple(PAPER_COUNTS) == CATEGORIES


def test_each_file_holds_its_own_category_in_order():
    for path, cat in zip(PATHS, CATEGORIES):
        ps = load_personas([path])
        assert ps and {p.category for p in ps} == {cat}
    assert [p.category for p in PERSONAS] == sorted((p.category for p in PERSONAS), key=CATEGORIES.index)


def test_ids_are_unique_slugs_and_every_persona_has_examples():
    assert len({p.id for p in PERSONAS}) == 100
    for p in PERSONAS:
        assert p.example_compliant.strip() and p.example_noncompliant.strip(), p.id
        assert p.source.endswith(f"{p.category}.yaml")


def test_small_model_friendly_categories_use_content_judges():
    """Only the pattern category relies on formatting judges (a 135M model follows no formatting rule)."""
    for p in PERSONAS:
        module = judge_info(p.judge).func.__module__
        if p.category != "pattern":
            assert not module.endswith(".format"), (p.id, p.judge)
    content_like = [p for p in PERSONAS if p.category in ("persona", "multiple_choice", "memorization", "language")]
    assert len(content_like) == 71


@pytest.mark.parametrize("persona", PERSONAS, ids=[p.id for p in PERSONAS])
def test_persona_examples_score_as_expected(persona: Persona):
    good = persona.score(persona.example_compliant)
    bad = persona.score(persona.example_noncompliant)
    assert good >= 0.8, f"{persona.id}: compliant example scored {good}"
    assert bad <= 0.2, f"{persona.id}: non-compliant example scored {bad}"


def test_topics():
    topics = load_topics(ROOT / "personas" / "topics.yaml")
    assert len(topics) >= 45
    assert len(set(topics)) == len(topics)
    assert all(t.strip().endswith("?") for t in topics)


# ---- schema -------------------------------------------------------------------------------------
def test_schema_file_is_generated_from_the_registry():
    on_disk = yaml.safe_load((ROOT / "src" / "personadrift" / "schemas" / "persona.schema.yaml").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(persona_schema())), (
        "src/personadrift/schemas/persona.schema.yaml is stale: run personadrift.protocol.personas.write_schema('src/personadrift/schemas/persona.schema.yaml')")


def test_benchmark_files_validate_against_the_schema():
    schema = persona_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in PATHS:
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)
    bad = {"personas": [{"id": "x", "category": "persona", "system_prompt": "s", "probe": "p",
                         "judge": {"name": "contains_any", "args": {"words": "tennis"}}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ---- the Persona object -----------------------------------------------------------------------------
def test_persona_is_frozen_hashable_and_round_trips(tmp_path):
    p = next(x for x in PERSONAS if x.id == "tennis-lover")
    assert hash(p) == hash(Persona(**{**p.__dict__}))
    assert isinstance(p.judge_args, FrozenDict) and isinstance(p.judge_args["words"], tuple)
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        p.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.judge_args["words"] = ["x"]
    assert json.loads(json.dumps(p.judge_args))["words"][0] == "tennis"
    f = tmp_path / "one.yaml"
    f.write_text(yaml.safe_dump({"personas": [p.to_dict()]}), encoding="utf-8")
    (q,) = load_personas([f])
    assert q == p
    assert p.score("I play tennis daily.") == 1.0 and p.score("I read books.") == 0.0
    built = Persona("x", "persona", "s", "p", "contains_any", {"words": ["cat"]})
    assert built.score("cats!") == 1.0 and isinstance(built.judge_args, FrozenDict)


# ---- validation errors ---------------------------------------------------------------------------
GOOD = """\
personas:
  - id: tennis-lover
    category: persona
    system_prompt: "You love tennis."
    probe: "What do you do?"
    judge: {name: contains_any, args: {words: [tennis]}}
"""


def _write(tmp_path, text, name="p.yaml"):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return f


@pytest.mark.parametrize("old,new,field,fragment", [
    ("name: contains_any", "name: contains_anything", "personas[tennis-lover].judge.name", "unknown judge"),
    ("args: {words: [tennis]}", "args: {}", "personas[tennis-lover].judge.args.words", "missing required argument"),
    ("args: {words: [tennis]}", "args: {words: 3}", "personas[tennis-lover].judge.args.words", "expected a list of strings, got 3"),
    ("args: {words: [tennis]}", "args: {words: [tennis], colour: red}", "personas[tennis-lover].judge.args.colour", "unknown argument"),
    ("    probe:", "    prob: oops\n    probe:", "personas[tennis-lover].prob", "unknown key"),
    ("judge: {name", "judge: {nmae: x, name", "personas[tennis-lover].judge.nmae", "unknown key"),
    ("category: persona", "category: hobby", "personas[tennis-lover].category", "expected one of pattern"),
    ("    probe: \"What do you do?\"\n", "", "personas[tennis-lover].probe", "missing required key"),
    ("probe: \"What do you do?\"", "probe: 42", "personas[tennis-lover].probe", "expected a string, got 42"),
    ("id: tennis-lover", "id: Tennis Lover", "personas[0].id", "slug"),
    ("personas:", "persona:", "persona", "unknown top-level key"),
])
def test_validation_errors_name_file_persona_and_field(tmp_path, old, new, field, fragment):
    assert old in GOOD
    f = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(InputError) as exc:
        load_personas([f])
    assert exc.value.path == str(f)
    assert exc.value.field == field
    assert fragment in exc.value.problem
    assert str(f) in str(exc.value) and field in str(exc.value)


def test_wrong_type_message_is_exact(tmp_path):
    text = GOOD.replace("name: contains_any, args: {words: [tennis]}", "name: starts_with_letter, args: {letter: 3}")
    f = _write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_personas([f])
    assert str(exc.value) == f"{f}: personas[tennis-lover].judge.args.letter: expected a string, got 3"


def test_duplicate_ids_across_and_within_files(tmp_path):
    a = _write(tmp_path, GOOD, "a.yaml")
    b = _write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(InputError) as exc:
        load_personas([a, b])
    assert exc.value.path == str(b) and exc.value.field == "personas[tennis-lover].id"
    assert "duplicate id" in exc.value.problem and str(a) in exc.value.problem
    both = GOOD + GOOD.split("personas:\n", 1)[1]
    with pytest.raises(InputError, match=r"personas\[tennis-lover\]\.id: duplicate id"):
        load_personas([_write(tmp_path, both, "c.yaml")])


def test_bad_yaml_reports_the_line(tmp_path):
    f = _write(tmp_path, GOOD.replace('probe: "What do you do?"', 'probe: "What do you do?'))
    with pytest.raises(InputError) as exc:
        load_personas([f])
    assert exc.value.path == str(f) and "invalid YAML at line" in exc.value.problem


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    f = _write(tmp_path, GOOD.replace("    category: persona\n", "    category: persona\n    category: pattern\n"))
    with pytest.raises(InputError, match=r"line 4.*duplicate key 'category'"):
        load_personas([f])


def test_persona_files_never_run_code(tmp_path):
    evil = "personas: !!python/object/apply:os.system ['echo pwned > %s']\n" % (tmp_path / "pwned")
    with pytest.raises(InputError):
        load_personas([_write(tmp_path, evil)])
    assert not (tmp_path / "pwned").exists()


def test_structural_errors(tmp_path):
    with pytest.raises(InputError, match="expected a list of personas"):
        load_personas([_write(tmp_path, "personas: {a: 1}\n")])
    with pytest.raises(InputError, match="expected a mapping"):
        load_personas([_write(tmp_path, "- just a list\n")])
    with pytest.raises(InputError, match=r"personas\[0\]: expected a mapping"):
        load_personas([_write(tmp_path, "personas: [hello]\n")])
    with pytest.raises(InputError, match="missing.yaml: file not found"):
        load_personas([tmp_path / "missing.yaml"])
    assert load_personas([_write(tmp_path, "personas: []\n")]) == []


def test_topic_errors(tmp_path):
    with pytest.raises(InputError, match=r"topics\[1\]: duplicate topic"):
        load_topics(_write(tmp_path, "topics: [\"a?\", \"a?\"]\n", "t.yaml"))
    with pytest.raises(InputError, match=r"topics\[0\]: expected a non-empty string"):
        load_topics(_write(tmp_path, "topics: [3]\n", "t.yaml"))
    with pytest.raises(InputError, match="unknown top-level key"):
        load_topics(_write(tmp_path, "topics: [a]\nextra: 1\n", "t.yaml"))
