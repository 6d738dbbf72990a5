"""The upstream topics importer: reads utils.py's module-level topics list with ast (never executes it)."""

from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path

import pytest
import yaml

from personadrift.config import check_config, load_config
from personadrift.errors import InputError
from personadrift.protocol.personas import load_pool, load_topics, topics_file, upstream_topics_path
from personadrift.protocol.upstream_topics import (
    SHA_KEY,
    UPSTREAM_TOPIC_COUNT,
    UTILS_URL,
    convert_topics,
    main,
    read_topics,
)
from support.workflow import REPO

FIXTURE = REPO / "tests" / "fixtures" / "upstream" / "utils.py"
FIXTURE_SHA = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
OWN_TOPICS = load_topics(REPO / "personas" / "topics.yaml")


def test_imports_the_module_level_list_in_order_without_executing_the_file(tmp_path):
    rep = convert_topics(FIXTURE, tmp_path / "out", FIXTURE_SHA)
    assert "utils" not in sys.modules or not hasattr(sys.modules["utils"], "ENGINE_MAP")
    topics = load_topics(tmp_path / "out" / "topics.yaml")
    assert topics == rep.topics and len(topics) == 7
    assert topics[:4] == OWN_TOPICS[:4]                                      # file order
    assert topics[4] == OWN_TOPICS[4] + " Some say so."                      # implicit concatenation
    assert topics[5] == OWN_TOPICS[5]                                        # '+' of literals
    assert rep.notices == [f"7 topics; the released file has {UPSTREAM_TOPIC_COUNT}"]
    header = (tmp_path / "out" / "topics.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert FIXTURE_SHA in header and "never executed" in (tmp_path / "out" / "topics.yaml").read_text()


def test_the_sum_is_required_and_checked_and_a_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(InputError) as e:
        convert_topics(FIXTURE, tmp_path / "o", None)
    assert SHA_KEY in str(e.value) and FIXTURE_SHA in str(e.value) and UTILS_URL in str(e.value)
    with pytest.raises(InputError) as e:
        convert_topics(FIXTURE, tmp_path / "o", "0" * 64)
    assert FIXTURE_SHA in str(e.value) and "0" * 64 in str(e.value) and SHA_KEY in str(e.value)
    with pytest.raises(InputError, match="file not found. Download the paper's utils.py from .*e5b57b0/utils.py"):
        convert_topics(tmp_path / "utils.py", tmp_path / "o", FIXTURE_SHA)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,where", [
    ("topics = [\n  'a',\n", "syntax error at line"),
    ("subjects = ['a', 'b']\n", "no module-level list topics"),
    ("topics = make_topics()\n", "expected a non-empty list of string literals"),
    ("topics = []\n", "expected a non-empty list of string literals"),
    ("topics = ['a', f'{x}']\n", r"topics\[1\].*expected a non-empty string literal"),
    ("topics = ['a', '  ']\n", r"topics\[1\]"),
])
def test_input_errors_name_the_file_and_the_item(tmp_path, text, where):
    src = tmp_path / "utils.py"
    src.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=where) as e:
        read_topics(src)
    assert str(src) in str(e.value)


def test_duplicate_topics_are_refused_by_the_topics_loader(tmp_path):
    src = tmp_path / "utils.py"
    src.write_text("topics = ['Same?', 'Same?']\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate topic"):
        convert_topics(src, tmp_path / "o", hashlib.sha256(src.read_bytes()).hexdigest())


def test_command_line(tmp_path, capsys):
    assert main([str(FIXTURE), "--out", str(tmp_path / "a"), "--sha256", FIXTURE_SHA]) == 0
    assert "7 topics written to" in capsys.readouterr().out
    assert main([str(FIXTURE), "--out", str(tmp_path / "b")]) == 2
    assert SHA_KEY in capsys.readouterr().err


def _smoke(**personas) -> dict:
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    cfg["personas"].update(personas)
    return cfg


def test_the_config_checks_the_source_and_uses_the_imported_topics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _smoke(upstream_topics_file=str(FIXTURE), upstream_topics_sha256=FIXTURE_SHA)
    personas, topics = check_config(copy.deepcopy(cfg), "study.yaml", REPO)
    assert personas and topics == []                                 # not imported yet: checked, not read
    assert topics_file(cfg) == upstream_topics_path(cfg) == f"resources/personas/upstream-topics-{FIXTURE_SHA[:12]}/topics.yaml"
    with pytest.raises(InputError, match="rule import_upstream_topics"):
        load_pool(cfg)
    convert_topics(FIXTURE, Path(upstream_topics_path(cfg)).parent, FIXTURE_SHA)
    assert check_config(copy.deepcopy(cfg), "study.yaml", REPO)[1] == read_topics(FIXTURE)
    assert load_pool(cfg)[1] == read_topics(FIXTURE)
    assert topics_file(_smoke()) == _smoke()["personas"]["topics"]   # the default: this project's topics

    for bad, key in ((dict(upstream_topics_file=str(FIXTURE)), SHA_KEY),
                     (dict(upstream_topics_file="utils.py", upstream_topics_sha256=FIXTURE_SHA), "file not found")):
        with pytest.raises(InputError, match="personas.upstream_topics_file") as e:
            check_config(_smoke(**bad), "study.yaml", REPO)
        assert key in str(e.value) and "study.yaml" in str(e.value)


def test_the_paper_configs_take_upstreams_topics():
    for name in ("paper.yaml", "paper-gpt35.yaml"):
        pc = yaml.safe_load((REPO / "configs" / name).read_text(encoding="utf-8"))["personas"]
        assert pc["upstream_topics_file"] == "utils.py", name
