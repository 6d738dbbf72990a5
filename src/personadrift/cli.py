"""The ``personadrift`` command line: one subcommand per workflow step, and the tools.

Each subcommand is declared beside the code it runs (``COMMANDS`` in the modules below:
:class:`~personadrift.command.Command`); this module only collects them. Snakemake rules call
them with ``--params`` (the config sections the step needs, already validated, as JSON); run
on their own they take ``--config config.yaml``. User errors print as one line naming the file
and the field, with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from personadrift.command import exit_status
from personadrift.errors import PersonaDriftError

# the modules declaring subcommands, in the order ``--help`` lists them (the data flow)
COMMAND_MODULES = (
    "personadrift.config",
    "personadrift.steps.models",
    "personadrift.steps.personas",
    "personadrift.steps.vectors",
    "personadrift.steps.selfchat",
    "personadrift.steps.score",
    "personadrift.steps.attention",
    "personadrift.steps.signals",
    "personadrift.steps.mitigation",
    "personadrift.steps.figures",
    "personadrift.steps.verify",
    "personadrift.steps.robustness",
    "personadrift.steps.browser",
    "personadrift.steps.inspect",
    "personadrift.protocol.upstream",
    "personadrift.protocol.upstream_topics",
    "personadrift.runtime.serve",
)
# subcommands without a config: they run natively, whatever CPU numerics a config would pin
NATIVE = ("serve", "import-upstream")


def commands() -> list:
    out = []
    for name in COMMAND_MODULES:
        out += importlib.import_module(name).COMMANDS
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="personadrift", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for command in commands():
        command.add_to(sub)
    return ap


def run(args) -> int:
    from personadrift.config import config_from_args

    command = args.command
    if command.takes_config == "optional":
        status = command.run(config_from_args(args) if args.params or args.config else None, args)
    elif command.takes_config:
        status = command.run(config_from_args(args), args)
    else:
        status = command.run(args)
    return exit_status(status)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # before anything imports torch (a model job): the config's CPU numerics (numerics.py), which
    # the libraries read once, when they load
    if argv[:1] not in [[name] for name in NATIVE]:
        from personadrift.numerics import pin_from_argv

        pin_from_argv(argv)
    try:
        parser = build_parser()  # serve's flags come from every installed method: a broken plug-in stops here
    except PersonaDriftError as exc:
        print(f"personadrift: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "require_gpus", None) is not None:
        from personadrift.job import JobResources, set_current

        set_current(JobResources(gpus=args.require_gpus, gpu_memory_gb=args.gpu_memory_gb, mem_mb=args.mem_mb))
    note = None
    if getattr(args, "no_retry_note", None):
        from personadrift.runtime.attempts import NoRetryNote

        note = NoRetryNote(Path(args.no_retry_note), args.attempt)
        from personadrift.runtime.attempts import keep_memory_notes

        keep_memory_notes(note)  # the batch size running out of memory taught, for the next attempt
    try:
        if note is not None and (earlier := note.earlier_failure()) is not None:
            from personadrift.runtime.attempts import RepeatedFailure

            raise RepeatedFailure(earlier, note)
        return run(args)
    except PersonaDriftError as exc:
        if note is not None:
            note.record(exc)
        print(f"personadrift: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a device error no retry can fix (runtime/attempts.py) is noted too
        if note is not None:
            note.record(exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
