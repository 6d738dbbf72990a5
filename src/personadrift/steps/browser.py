"""Step of rules/browser.smk: the static transcript and judge browser of a study."""

from __future__ import annotations

from pathlib import Path

from personadrift.command import Command, arg
from personadrift.errors import InputError


def browser(config: dict | None, transcript_dirs: list, score_csvs: list, out_dir, *, pool_json=None,
            calibration_csv=None) -> dict:
    """Build ``out_dir`` from the given transcripts, score tables, persona pool and calibration."""
    from personadrift.browser import build_browser

    config = config or {}
    sc = config.get("selfchat", {})
    caps = {k: sc[k] for k in ("max_new_tokens", "probe_max_new_tokens", "turns", "runs") if k in sc}
    return build_browser(transcript_dirs, score_csvs, out_dir, pool_json=pool_json, calibration_csv=calibration_csv,
                         study=config.get("study"), model=(config.get("model") or {}).get("name"), caps=caps)


def study_inputs(results_dir) -> dict:
    """A finished study folder's inputs (``personadrift browser --results results/<study>``)."""
    root = Path(results_dir)
    # the baseline first, then the length-only control, then the other settings by name
    order = lambda p: (p.parent.name != "none", p.parent.name != "control", p.parent.name, p.name)  # noqa: E731
    transcripts = sorted((p for p in (root / "transcripts").glob("*/shard-*") if p.is_dir()), key=order)
    if not transcripts:
        raise InputError(root, "transcripts", "no transcripts/<setting>/shard-N folders in this results folder")
    pool, cal = root / "personas.json", root / "tables" / "calibration_by_persona.csv"
    return {"transcript_dirs": transcripts, "score_csvs": sorted((root / "scores").glob("*.csv")),
            "pool_json": pool if pool.exists() else None, "calibration_csv": cal if cal.exists() else None}


def _browser(config: dict, args) -> None:
    import json

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


COMMANDS = [
    Command("browser", "static transcript and judge browser of a study (open its index.html)", _browser,
            (arg("--results", help="a study's results folder: finds transcripts, scores, pool and calibration"),
             arg("--scores", nargs="*", default=[], help="score tables (CSV), one per setting"),
             arg("--pool", help="persona pool JSON (personas kept and dropped)"),
             arg("--calibration", help="per-persona calibration summary (CSV)"),
             arg("--out", help="output folder (default: <results>/browser)"),
             arg("transcripts", nargs="*", help="transcript folders")), takes_config="optional"),
]
