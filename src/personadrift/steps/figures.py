"""Steps of rules/figures.smk that are not drawing: the example-dialog pick, the manifest."""

from __future__ import annotations

import json

from personadrift.command import Command, arg
from personadrift.provenance import provenance
from personadrift.storage import atomic_write_json, atomic_write_text, read_json
from personadrift.tables import read_table


def largest_drop(agent) -> tuple[int, str]:
    """The conversation whose stability fell most from its first probed round (round 0, right after
    the system prompt, where the study probes it) to its last, among those that started compliant
    (first-round score >= 0.5); else the highest first-round score. The pick and the rule in words."""
    first, last = agent.columns.min(), agent.columns.max()
    compliant = agent[agent[first] >= 0.5]
    if len(compliant):
        drop = (compliant[first] - compliant[last]).sort_values(ascending=False, kind="stable")
        return int(drop.index[0]), (f"largest drop in stability from round {first} to round {last} among the "
                                    f"{len(compliant)} conversations that started compliant "
                                    f"(round-{first} score >= 0.5)")
    best = agent[first].sort_values(ascending=False, kind="stable")
    return int(best.index[0]), (f"no conversation started compliant (round-{first} score >= 0.5); shown: "
                                f"the highest round-{first} score")


# report.example_dialog_rule -> the function that picks (the schema's enum lists these names)
EXAMPLE_DIALOG_RULES = {"largest_drop": largest_drop}


def example_dialog(config: dict, scores_csv, transcript_dirs: list, out_json) -> None:
    """Pick one conversation by ``report.example_dialog_rule`` and keep what its figure shows."""
    from personadrift.protocol.scoring import transcript_paths

    sc = read_table(scores_csv)
    agent = sc[sc["kind"] == "agent"].groupby(["conversation", "round"])["score"].mean().unstack("round")
    pick, rule = EXAMPLE_DIALOG_RULES[config["report"]["example_dialog_rule"]](agent)
    rec = next(r for r in map(read_json, transcript_paths(transcript_dirs)) if r["conversation"] == pick)
    rounds = []
    for r in sorted(agent.columns):
        probe = next(p for p in rec["probes"] if p["round"] == r and p["kind"] == "agent")
        # round 0 is probed right after the system prompt: no agent turn yet, the topic comes next
        rounds.append({"round": int(r), "agent": rec["history"][2 * r - 1] if r >= 1 else None,
                       "user_next": rec["history"][2 * r] if 1 <= r and 2 * r < len(rec["history"]) else None,
                       "probe": probe["question"],
                       "answer": probe["answers"][0], "score": float(agent.loc[pick, r])})
    atomic_write_json(out_json, {"conversation": pick, "rule": rule, "agent": rec["agent"], "user": rec["user"],
                                 "topic": rec["topic"], "rounds": rounds, "model": config["model"]["name"]})


def write_manifest(figures: list, tables: dict, out) -> None:
    """The figures/all manifest: every figure with its sha256 and the tables it was drawn from."""
    from personadrift.generation.models import sha256_file

    entries = [{"figure": str(f), "sha256": sha256_file(f), "tables": tables.get(str(f), [])} for f in figures]
    atomic_write_text(out, json.dumps({"figures": entries, "provenance": provenance()}, indent=1) + "\n")


def _figure(args) -> None:
    from personadrift.figures import draw

    draw(args.name, args.tables, args.out)


def _figure_docs(args) -> int:
    """Write (or with --check, compare) the files generated from the figure catalog."""
    from pathlib import Path

    from personadrift.figures.catalog import figure_docs

    stale = []
    for path, text in figure_docs(args.root).items():
        if Path(path).read_text(encoding="utf-8") == text:
            continue
        stale.append(str(path))
        if not args.check:
            Path(path).write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{path}: {'differs from the figure catalog' if args.check else 'rewritten from the figure catalog'}")
    return 1 if args.check and stale else 0


def _compare(args) -> None:
    from personadrift.figures import save
    from personadrift.figures.comparison import comparison, study_tables

    tables = [t for d in args.studies for t in study_tables(d, args.setting)]
    save(comparison(*tables, setting=args.setting), args.out)


COMMANDS = [
    Command("example-dialog", "pick the example conversation of the first figure",
            lambda config, a: example_dialog(config, a.scores, a.transcripts, a.out),
            (arg("--scores", required=True), arg("--out", required=True), arg("transcripts", nargs="+"))),
    Command("figure", "draw one figure from its tables", _figure,
            (arg("name"), arg("--tables", nargs="+", required=True),
             arg("--out", nargs="+", required=True, help="output files (.pdf and/or .png)")), takes_config=False),
    Command("compare", "draw several studies' drift curves side by side (one panel per study)", _compare,
            (arg("studies", nargs="+", help="each study's results folder (results/<study>), in panel order"),
             arg("--setting", default="none", help="the setting drawn from each study (default: none)"),
             arg("--out", nargs="+", required=True, help="output files (.pdf and/or .png)")), takes_config=False),
    Command("figure-docs", "write report/figure.rst and the README's reviewer's map from the figure catalog",
            _figure_docs,
            (arg("--root", default=".", help="the repository root (default: here)"),
             arg("--check", action="store_true", help="only say which files differ; exit 1 if any does")),
            takes_config=False),
    Command("manifest", "write the figures/all manifest",
            lambda a: write_manifest(a.figures, json.loads(a.figure_tables), a.out),
            (arg("--out", required=True), arg("--figure-tables", required=True, help="JSON: figure -> tables"),
             arg("figures", nargs="+")), takes_config=False),
]
