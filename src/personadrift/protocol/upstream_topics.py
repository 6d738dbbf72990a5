"""Import the paper's own opener topics into this project's topics YAML, without executing the file.

The released code (github likenneth/persona_drift, commit e5b57b0; no license, so the user
supplies the file and nothing of it is copied into this project) keeps its 45 opener topics in
``utils.py`` as a module-level list of string literals, ``topics = [...]``, beside its helpers
(which download NLTK data when the module is imported). ``run.py`` draws a conversation's topic
with ``random.randint`` over that list.

This module parses the file with :mod:`ast` only and writes the list, in order, as a topics
file (:func:`personadrift.protocol.personas.load_topics`). The file's sha256 must be the one
the user states in ``personas.upstream_topics_sha256``: this project could not read the
released file byte for byte, so it ships no sum of its own.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from personadrift.command import Command
from personadrift.errors import InputError
from personadrift.protocol.personas import load_topics
from personadrift.protocol.upstream import const_str, sha256_of

UTILS_URL = "https://raw.githubusercontent.com/likenneth/persona_drift/e5b57b0/utils.py"
TOPICS_VARIABLE = "topics"
UPSTREAM_TOPIC_COUNT = 45   # the released file's list
OUTPUT_FILE = "topics.yaml"
SHA_KEY = "personas.upstream_topics_sha256"


@dataclass
class TopicsReport:
    source: str
    sha256: str
    topics: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    written: str = ""

    def summary(self) -> str:
        lines = [f"{self.source} (sha256 {self.sha256}): {len(self.topics)} topics written to {self.written}"]
        lines += [f"  NOTE: {n}" for n in self.notices]
        return "\n".join(lines)


def check_topics_source(path: str | Path, expected_sha256: str | None, field_name: str | None = None) -> str:
    """The file's sha256, after checking it exists and has ``expected_sha256``.

    ``expected_sha256`` None is an error that says how to state it; the errors say where to
    get the released file.
    """
    p = Path(path)
    where = field_name or None
    if not p.is_file():
        raise InputError(p, where, f"file not found. Download the paper's utils.py from {UTILS_URL} (github "
                                   f"likenneth/persona_drift, commit e5b57b0; the repository has no license, so this "
                                   f"project does not ship it) and give its path")
    digest = sha256_of(p)
    if not expected_sha256:
        raise InputError(p, SHA_KEY, f"required with personas.upstream_topics_file: this project could not check the "
                                     f"released utils.py offline, so it ships no sum. After checking the file is the "
                                     f"one at {UTILS_URL}, set {SHA_KEY} to its sha256 (this file's is {digest})")
    if digest != expected_sha256.lower():
        raise InputError(p, where, f"sha256 is {digest}, expected {expected_sha256} ({SHA_KEY}). To import this "
                                   f"different file knowingly, set {SHA_KEY} (or --sha256) to {digest}")
    return digest



def read_topics(path: str | Path) -> list[str]:
    """The module-level ``topics`` list of ``path``, parsed with ast (never executed)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(p))
    except SyntaxError as e:
        raise InputError(p, None, f"Python syntax error at line {e.lineno}: {e.msg}") from None
    node = None
    for stmt in tree.body:  # the last module-level assignment wins, as when Python runs the file
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == TOPICS_VARIABLE
                                                 for t in stmt.targets):
            node = stmt.value
    if node is None:
        raise InputError(p, TOPICS_VARIABLE, f"no module-level list {TOPICS_VARIABLE} = [...] (the paper's utils.py "
                                             f"holds its opener topics there)")
    if not isinstance(node, (ast.List, ast.Tuple)) or not node.elts:
        raise InputError(p, TOPICS_VARIABLE,
                         f"expected a non-empty list of string literals, got {ast.unparse(node)[:80]}")
    topics = []
    for i, elt in enumerate(node.elts):
        s = const_str(elt)
        if s is None or not s.strip():
            raise InputError(p, f"{TOPICS_VARIABLE}[{i}]",
                             f"expected a non-empty string literal, got {ast.unparse(elt)[:80]}")
        topics.append(s)
    return topics


def convert_topics(source: str | Path, out_dir: str | Path, expected_sha256: str | None) -> TopicsReport:
    """Write ``source``'s topics, in its order, to ``out_dir/topics.yaml`` (validated by load_topics)."""
    source, out_dir = Path(source), Path(out_dir)
    digest = check_topics_source(source, expected_sha256)
    topics = read_topics(source)
    report = TopicsReport(source=str(source), sha256=digest, topics=topics)
    if len(topics) != UPSTREAM_TOPIC_COUNT:
        report.notices.append(f"{len(topics)} topics; the released file has {UPSTREAM_TOPIC_COUNT}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / OUTPUT_FILE
    header = (f"# Generated by personadrift.protocol.upstream_topics from {source.name} (sha256 {digest}); do not "
              f"edit.\n# Upstream: github likenneth/persona_drift (commit e5b57b0), parsed with ast, never executed.\n")
    body = {"description": f"The paper's opener topics imported from {source.name}, in its order", "topics": topics}
    out.write_text(header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
    load_topics(out)  # the output must validate (non-empty, no duplicates)
    report.written = str(out)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: ``personadrift import-upstream-topics SOURCE --out DIR --sha256 SUM``.

    Exit status: 0 on success, 2 on an input error.
    """
    return COMMANDS[0].main(argv)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("source", type=Path, help="the paper's utils.py (parsed, never executed)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (topics.yaml is written there)")
    ap.add_argument("--sha256", default=None, help=f"the sum the file must have ({SHA_KEY})")


def run(args: argparse.Namespace) -> int:
    report = convert_topics(args.source, args.out, args.sha256)
    print(report.summary())
    return 0


COMMANDS = [
    Command("import-upstream-topics", "convert the paper's utils.py opener topics into topics YAML", run,
            add_arguments, takes_config=False),
]


if __name__ == "__main__":
    raise SystemExit(main())
