"""A study's outputs manifest (``results/<study>/manifest.json``, rules/verify.smk).

The manifest fingerprints what a study produced: per setting and conversation, the sha256 of its
dialog texts and of its probe texts, and, so that a departure can be located from the manifest
alone, a short fingerprint of every text (16 hex digits of its sha256, then 4 hex digits per
whitespace-separated word); the sha256 of every score and figure table; and every claim the
figures make (estimate, interval, Holm-adjusted p, verdict), so a rerun can say which verdicts
changed (``compare.py``) and a rerun under other seeds how often each holds (``robustness.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from personadrift.errors import InputError
from personadrift.provenance import provenance
from personadrift.storage import atomic_write_text

FORMAT = 1
# files of a results folder that are not outputs to compare: provenance (timestamps, hosts),
# checkpoints and Snakemake's markers, the browser (a view of the transcripts), the manifest
SKIP_PARTS = {"checkpoints", "browser", "transcripts"}
SKIP_SUFFIXES = (".provenance.json", ".snakemake_timestamp")
MANIFEST_NAME = "manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha(value) -> str:
    return sha256_bytes(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def output_sha(path: Path) -> str:
    """sha256 of an output file; a JSON object's ``provenance`` entry (when, where and at which
    commit it was made, as in ``personas.json``) is left out, so a rerun of the same outputs
    matches."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            value = json.loads(data)
        except ValueError:
            return sha256_bytes(data)
        if isinstance(value, dict) and "provenance" in value:
            return _json_sha({k: v for k, v in value.items() if k != "provenance"})
    return sha256_bytes(data)


def word_hash(word: str) -> str:
    return hashlib.blake2b(word.encode("utf-8"), digest_size=2).hexdigest()


def text_fingerprint(text: str) -> str:
    """``<16 hex of sha256> <4 hex per word>``: equal texts give equal strings, and the first
    differing word of two texts is (up to a 1-in-65,536 collision) the first differing group."""
    return f"{sha256_bytes(text.encode('utf-8'))[:16]} {''.join(word_hash(w) for w in text.split())}"


# ------------------------------------------------------------------ transcripts


def probe_label(probe: dict, sample: int) -> str:
    return f"probe round {probe['round']} {probe['kind']} sample {sample}"


def transcript_entry(rec: dict) -> dict:
    """One conversation's fingerprints: its dialog's and its probes' sha256, and each text's."""
    probes = [{"round": p["round"], "turn": p.get("turn"), "kind": p["kind"], "question": p.get("question"),
               "answers": p.get("answers", [])} for p in rec.get("probes", [])]
    return {
        "dialog": _json_sha(rec["history"]),
        "probes": _json_sha(probes),
        "turns": [text_fingerprint(t) for t in rec["history"]],
        "speakers": [t.get("speaker") for t in rec.get("turns", [])],
        "probe_texts": {probe_label(p, i): text_fingerprint(a) for p in probes for i, a in enumerate(p["answers"])},
    }


def read_transcripts(results) -> dict[str, dict[str, dict]]:
    """setting -> conversation id (``conv-00003``) -> transcript record, from ``results/transcripts``."""
    out: dict[str, dict[str, dict]] = {}
    root = Path(results) / "transcripts"
    for path in sorted(root.glob("*/shard-*/conv-*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(path, None, f"not a readable transcript ({e})") from None
        out.setdefault(path.parts[-3], {})[path.stem] = rec
    return out


# ------------------------------------------------------------------ claims


def verdict(estimate: float, significant: bool) -> str:
    if not significant or not math.isfinite(estimate):
        return "not significant"
    return "significant increase" if estimate > 0 else "significant decrease" if estimate < 0 else "not significant"


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _truth(x) -> bool:
    return str(x).strip().lower() in ("true", "1")


def claims_of(rel: str, path: Path) -> list[dict]:
    """The claims one table makes: a drift change table (``tables/<setting>/change.csv``: each
    setting and speaker's shift and drift, alone and minus the control's), the mitigation table
    (``tables/tradeoff.csv``: each setting's stability level, drift and MMLU difference from the
    baseline), or the attention-against-stability slope (``tables/attention_vs_stability.json``)."""
    import csv

    name = Path(rel).name
    if name == "attention_vs_stability.json":  # one test, nothing to adjust: its p is its Holm p
        c = json.loads(path.read_text(encoding="utf-8"))
        p = _num(c.get("p_value"))
        row = {**c, "significant": p is not None and p < 1 - float(c.get("confidence", 0.95))}
        return [_claim(f"{rel}: slope of stability on system-prompt attention", row, "slope", "ci_low", "ci_high",
                       "p_value", "significant")]
    if name not in ("change.csv", "tradeoff.csv"):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if name == "change.csv":
            versus = f" minus {row['versus']}" if row.get("versus") else ""
            out.append(_claim(f"{rel}: {row['setting']} {row['kind']} {row.get('claim') or 'change'}{versus}, "
                              f"round {row['first_round']} to {row['last_round']}", row, "change", "ci_low",
                              "ci_high", "p_holm", "significant", family=row.get("family")))
            continue
        for what in ("stability_diff", "drift_diff", "mmlu_diff"):
            family = row.get(f"{what}_family")
            if what not in row or (_num(row.get(f"{what}_p_holm")) is None and not _untested(family)):
                continue  # the baseline against itself is no claim
            out.append(_claim(f"{rel}: {row['setting']} {what.replace('_', ' ')} vs baseline", row, what,
                              f"{what}_ci_low", f"{what}_ci_high", f"{what}_p_holm", f"{what}_significant",
                              family=family))
    return out


def _untested(family) -> bool:
    """A claim its table reports without a test (``family`` other than "holm": fixed by design, or
    tested in another table); tables without the column test every claim."""
    return bool(family) and family != "holm"


def _claim(claim: str, row: dict, est: str, low: str, high: str, p: str, sig: str, *, family=None) -> dict:
    estimate = _num(row.get(est))
    if _untested(family):  # reported, not tested: its verdict says why
        return {"claim": claim, "estimate": estimate, "ci_low": _num(row.get(low)), "ci_high": _num(row.get(high)),
                "p_holm": None, "verdict": f"not tested: {family}"}
    return {"claim": claim, "estimate": estimate, "ci_low": _num(row.get(low)), "ci_high": _num(row.get(high)),
            "p_holm": _num(row.get(p)),
            "verdict": verdict(estimate if estimate is not None else float("nan"), _truth(row.get(sig)))}


# ------------------------------------------------------------------ the manifest


def output_files(results) -> list[str]:
    """Every output file of a results folder worth comparing, relative to it, sorted."""
    results = Path(results)
    out = []
    for p in results.rglob("*"):
        rel = p.relative_to(results)
        if not p.is_file() or rel.parts[0] in SKIP_PARTS or rel.as_posix() == MANIFEST_NAME:
            continue
        if p.name.endswith(SKIP_SUFFIXES):
            continue
        out.append(rel.as_posix())
    return sorted(out)


def build_manifest(results, files: list[str] | None = None, *, study: str | None = None) -> dict:
    """The manifest of ``results`` (a study's results folder): its transcripts and ``files``
    (paths relative to it; default: :func:`output_files`)."""
    results = Path(results)
    if not results.is_dir():
        raise InputError(results, None, "not a results folder (results/<study>)")
    files = output_files(results) if files is None else sorted(files)
    tables, claims = {}, []
    for rel in files:
        path = results / rel
        if not path.is_file():
            raise InputError(path, None, "listed output missing from the results folder")
        tables[rel] = output_sha(path)
        claims += claims_of(rel, path)
    transcripts = read_transcripts(results)
    model = next((rec.get("provenance", {}).get("model", {}).get("name")
                  for convs in transcripts.values() for rec in convs.values()), None)
    return {
        "format": FORMAT,
        "study": study or results.name,
        "model": model,
        "settings": {s: {c: transcript_entry(rec) for c, rec in sorted(convs.items())}
                     for s, convs in sorted(transcripts.items())},
        "tables": tables,
        "claims": claims,
    }


def write_manifest(results, out, files: list[str] | None = None, *, study: str | None = None) -> dict:
    """Write the manifest of ``results`` to ``out`` (with provenance: where and how it was made)."""
    results = Path(results)
    if files is not None:  # the rule passes paths as Snakemake sees them: results/<study>/...
        files = [Path(f).resolve().relative_to(results.resolve()).as_posix() for f in files]
    manifest = build_manifest(results, files, study=study)
    atomic_write_text(out, json.dumps({**manifest, "provenance": provenance()}, indent=1, ensure_ascii=False) + "\n")
    return manifest


def read_manifest(path) -> dict:
    path = Path(path)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(path, None, f"cannot read the manifest ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(path, None, f"not JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise InputError(path, "format", f"not a manifest of format {FORMAT} (personadrift study-manifest writes one)")
    for key in ("settings", "tables", "claims"):
        if key not in m:
            raise InputError(path, key, "missing")
    return m
