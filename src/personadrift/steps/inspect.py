"""Step of rules/inspect.smk: a study as Inspect evaluation logs (export/inspect_log.py)."""

from __future__ import annotations

import json
from pathlib import Path

from personadrift.command import Command, arg
from personadrift.errors import InputError


def _export_inspect(config: dict | None, args) -> None:
    from personadrift.export.inspect_log import export_study
    from personadrift.steps.browser import study_inputs

    config = config or {}
    if args.results:
        found = study_inputs(args.results)
        dirs, csvs = found["transcript_dirs"], found["score_csvs"]
        study = config.get("study") or Path(args.results).name
    elif args.transcripts:
        dirs, csvs, study = args.transcripts, args.scores, config.get("study")
        if not study:
            raise InputError(
                "(command line)",
                "--params",
                "the study's name is needed with explicit transcript folders",
            )
    else:
        raise InputError(
            "(command line)", "--results", "give a results folder or transcript folders"
        )
    out = args.out or (Path(args.results) / "inspect" if args.results else None)
    if out is None:
        raise InputError(
            "(command line)",
            "--out",
            "the output folder is needed with explicit transcript folders",
        )
    summary = export_study(
        dirs, csvs, out, study=study, model=(config.get("model") or {}).get("name")
    )
    print(f"export-inspect: {out} ({json.dumps(summary)}); open with: inspect view --log-dir {out}")


COMMANDS = [
    Command(
        "export-inspect",
        "a study as Inspect evaluation logs, one per setting (inspect view, inspect_ai.analysis)",
        _export_inspect,
        (
            arg(
                "--results", help="a study's results folder: finds its transcripts and score tables"
            ),
            arg("--scores", nargs="*", default=[], help="score tables (CSV), one per setting"),
            arg("--out", help="output folder (default: <results>/inspect)"),
            arg("transcripts", nargs="*", help="transcript folders"),
        ),
        takes_config="optional",
    ),
]
