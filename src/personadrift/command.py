"""A ``personadrift`` subcommand, declared beside the code it runs.

Each module that owns a subcommand lists it in its ``COMMANDS`` (``steps/<stage>.py`` for the
workflow's steps, ``config.py`` for ``validate``, ``runtime/serve.py``, the importers in
``protocol/``): its name, help, arguments and the function called. ``cli.py`` only collects
them, so adding a step touches its rule file and its step module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass


def arg(*flags: str, **kwargs) -> tuple:
    """One ``add_argument`` call: ``arg("--out", required=True)``."""
    return flags, kwargs


# a model step's ``--method-inputs``: the setting's method's input files (Method.inputs) as JSON
METHOD_INPUTS = arg("--method-inputs", default="{}",
                    help="JSON {name: path}: the files the setting's method reads (rules/common.smk: method_inputs)")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config`` | ``--params``, ``--threads``, and Snakemake's attempt (runtime/attempts.py)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="config YAML (validated against src/personadrift/schemas/config.schema.yaml)")
    g.add_argument("--params", help="validated config sections as JSON (used by the Snakemake rules)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--attempt", type=int, default=1, help="Snakemake's attempt number of this job (1, 2, ...)")
    p.add_argument("--require-gpus", type=int, default=0,
                   help="GPUs the model must run on: the job refuses to run it on the CPU or on disk (job.py)")
    p.add_argument("--gpu-memory-gb", type=float, default=0.0, help="memory of one GPU, to size the model against")
    p.add_argument("--mem-mb", type=int, default=0, help="the job's host memory (bounds spilled prefixes)")
    p.add_argument("--no-retry-note", default=None,
                   help="file where an error a retry cannot fix is noted; a later attempt that finds it fails at "
                        "once with the same message (runtime/attempts.py)")


def exit_status(returned) -> int:
    """A command's exit status: what it returned when that is an int (steps return what they wrote: 0)."""
    return returned if isinstance(returned, int) and not isinstance(returned, bool) else 0


@dataclass(frozen=True)
class Command:
    """``run(config, args)`` (``takes_config``: the command reads ``--config``/``--params`` and
    ``--threads``; ``"optional"``: config is None unless one is given) or ``run(args)``; an
    int it returns is the exit status (anything else: 0). ``arguments``: the :func:`arg` calls, or a function that
    adds them to the subparser."""

    name: str
    help: str
    run: Callable
    arguments: tuple | Callable[[argparse.ArgumentParser], None] = ()
    takes_config: bool | str = True

    def add_to(self, sub) -> argparse.ArgumentParser:
        p = sub.add_parser(self.name, help=self.help, description=self.help)
        if self.takes_config:
            add_config_arguments(p)
        self._add_arguments(p)
        p.set_defaults(command=self)
        return p

    def main(self, argv: list[str] | None = None) -> int:
        """Run a command that takes no config on its own (``python -m <module>``): an input error
        is one line on stderr and exit status 2, as under ``personadrift``."""
        from personadrift.errors import InputError

        assert not self.takes_config, f"{self.name} reads a config: run it as 'personadrift {self.name}'"
        ap = argparse.ArgumentParser(prog=f"personadrift {self.name}", description=self.help)
        self._add_arguments(ap)
        try:
            status = self.run(ap.parse_args(argv))
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return exit_status(status)

    def _add_arguments(self, p: argparse.ArgumentParser) -> None:
        if callable(self.arguments):
            self.arguments(p)
        else:
            for flags, kwargs in self.arguments:
                p.add_argument(*flags, **kwargs)
