"""The package tree reads like the data flow: no module imports from a later stage.

Stages, in order: core (top-level modules) -> protocol (personas, judges, scoring) -> attention
(registered attention functions) -> generation (engine, chat, dialog, self-chat, backends) ->
interventions (one object per method) -> runtime (the engine factory and the server, which ask a
setting's method what to switch on) -> capability (MMLU) -> analysis -> figures -> browser ->
reproduce (a study's outputs manifest, runs compared, verdicts over seeds) -> export (the study in
other tools' formats: Inspect logs) -> config (the workflow's config check, which asks every
stage) -> steps -> cli.
Imports inside ``if TYPE_CHECKING:`` blocks are types only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "personadrift"
STAGES = ["core", "protocol", "attention", "generation", "interventions", "runtime", "capability", "analysis",
          "figures", "browser", "reproduce", "export", "config", "steps", "cli"]


def stage_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "personadrift":
        raise ValueError(module)
    if len(parts) == 1:
        return "core"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] == "config":
        return "config"
    return parts[1] if parts[1] in STAGES else "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST):
    """personadrift modules imported outside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("personadrift"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("personadrift"):
                    yield node.lineno, alias.name


def test_no_module_imports_from_a_later_stage():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        here = stage_of(module_name(path))
        for line, target in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            there = stage_of(target)
            if STAGES.index(there) > STAGES.index(here):
                problems.append(f"{path.relative_to(PKG)}:{line} ({here}) imports {target} ({there})")
    assert not problems, "imports against the data flow:\n  " + "\n  ".join(problems)


def test_every_package_module_sits_in_a_known_stage():
    unknown = [p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()
               and p.name not in STAGES and p.name != "schemas"]
    assert not unknown, f"packages outside the stage list {STAGES}: {unknown}"
