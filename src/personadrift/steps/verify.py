"""Steps of rules/verify.smk: a study's outputs manifest and a run compared with another
(the logic: ``reproduce/manifest.py``, ``reproduce/compare.py``)."""

from __future__ import annotations

from personadrift.command import Command, arg
from personadrift.reproduce.compare import compare
from personadrift.reproduce.manifest import write_manifest


def _verify(args) -> int:
    """Print the comparison; exit status 1 when the run departs (2 stays bad input)."""
    report = compare(args.expected, args.results)
    print("\n".join(report.lines()))
    return 0 if report.identical else 1


COMMANDS = [
    Command("study-manifest", "fingerprint a study's outputs: transcripts, tables, claims",
            lambda a: write_manifest(a.results, a.out, a.files or None, study=a.study),
            (arg("--results", required=True, help="the study's results folder (results/<study>)"),
             arg("--out", required=True, help="manifest JSON (results/<study>/manifest.json)"),
             arg("--study", help="study name (default: the results folder's name)"),
             arg("files", nargs="*", help="output files to fingerprint (default: every table of the folder)")),
            takes_config=False),
    Command("verify", "compare a run's outputs with an expected manifest (or another run)", _verify,
            (arg("--expected", required=True, help="a manifest JSON, or another run's results folder"),
             arg("--results", required=True, help="the run's results folder (results/<study>)")),
            takes_config=False),
]
