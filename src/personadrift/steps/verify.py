"""The outputs manifest of a study and its comparison with another run's (``personadrift verify``).

A study's manifest (``results/<study>/manifest.json``, rules/verify.smk) fingerprints what it
produced: per setting and conversation, the sha256 of its dialog texts and of its probe texts,
and, so that a departure can be located from the manifest alone, a short fingerprint of every
text (16 hex digits of its sha256, then 4 hex digits per whitespace-separated word); the sha256
of every score and figure table; and every claim the figures make (estimate, interval,
Holm-adjusted p, verdict), so a rerun can say which verdicts changed.

:func:`compare` reads a run's results folder against an expected manifest and reports, per
setting, the first departure: conversation, turn (or probe) and token. The token is found by
tokenizing both texts when the expected run's transcripts are at hand (a manifest beside its
results folder, or a results folder given as expected) and the model's tokenizer is found; with
both texts but no tokenizer it is the first differing character; with the manifest alone, the
first differing word.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from personadrift.command import Command, arg
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


# ------------------------------------------------------------------ comparing two runs


@dataclass
class Departure:
    setting: str
    conversation: str
    where: str  # "turn 3 (agent)" or "probe round 1 agent sample 0"
    position: str  # "token 5: ' the' -> ' a'" or "word 4: ..." or "character 17: ..."
    differing: int  # transcripts of this setting that differ
    total: int

    def line(self) -> str:
        return (f"setting {self.setting}: first departure in {self.conversation}, {self.where}, {self.position} "
                f"({self.differing} of {self.total} conversations differ)")


@dataclass
class Report:
    expected: str
    results: str
    settings_identical: list[str] = field(default_factory=list)
    departures: list[Departure] = field(default_factory=list)
    setting_problems: list[str] = field(default_factory=list)  # settings or conversations missing/extra
    tables_differ: list[str] = field(default_factory=list)
    tables_missing: list[str] = field(default_factory=list)
    verdicts_changed: list[str] = field(default_factory=list)
    claims_missing: list[str] = field(default_factory=list)
    claims_compared: int = 0
    position_unit: str = ""

    @property
    def identical(self) -> bool:
        return not (self.departures or self.setting_problems or self.tables_differ or self.tables_missing
                    or self.verdicts_changed or self.claims_missing)

    def lines(self) -> list[str]:
        if self.identical:
            n = len(self.settings_identical)
            return [f"identical: {self.results} matches {self.expected} ({n} settings' transcripts, every table, "
                    f"{self.claims_compared} claims)"]
        out = [f"{self.results} departs from {self.expected}"]
        out += [f"setting {s}: identical" for s in self.settings_identical]
        out += [d.line() for d in self.departures]
        out += self.setting_problems
        if self.tables_differ:
            out.append(f"tables that differ ({len(self.tables_differ)}): {', '.join(self.tables_differ)}")
        if self.tables_missing:
            out.append(f"tables missing from the run ({len(self.tables_missing)}): {', '.join(self.tables_missing)}")
        out += [f"claim missing from the run: {c}" for c in self.claims_missing]
        if self.verdicts_changed:
            out.append(f"verdicts changed: {len(self.verdicts_changed)} of {self.claims_compared} claims")
            out += [f"  {v}" for v in self.verdicts_changed]
        else:
            out.append(f"verdicts: all {self.claims_compared} claims keep their verdict")
        return out


def _fmt(c: dict) -> str:
    def n(x, spec="+.3f"):
        return "nan" if x is None else format(x, spec)
    return f"{c['verdict']} ({n(c['estimate'])} [{n(c['ci_low'])}, {n(c['ci_high'])}], Holm p {n(c['p_holm'], '.3g')})"


def _first_word(expected_fp: str, text: str) -> str:
    """The first differing word, from the expected text's fingerprint and the run's text."""
    words = text.split()
    got = "".join(word_hash(w) for w in words)
    exp = expected_fp.split(" ", 1)[1] if " " in expected_fp else ""
    for i in range(0, max(len(exp), len(got)), 4):
        if exp[i:i + 4] != got[i:i + 4]:
            k = i // 4
            if k >= len(words):
                return f"word {k}: the run's text ends after {len(words)} words, the expected one goes on"
            if i >= len(exp):
                return f"word {k}: the expected text ends after {len(exp) // 4} words, the run's goes on with {words[k]!r}"
            return f"word {k}: the run has {words[k]!r} (the expected word is known by its hash only)"
    return "the same words, other whitespace"


def _first_char(a: str, b: str) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"character {k}: expected {a[k:k + 20]!r}, got {b[k:k + 20]!r}"


class Tokens:
    """The model's tokenizer, loaded once when a departure's token is asked for."""

    def __init__(self, model_dir: Path | None):
        self.model_dir, self._tok, self.tried = model_dir, None, False

    def get(self):
        if not self.tried:
            self.tried = True
            if self.model_dir is not None:
                try:
                    from transformers import AutoTokenizer

                    self._tok = AutoTokenizer.from_pretrained(self.model_dir)
                except Exception:  # noqa: BLE001 - no tokenizer: fall back to characters, and say so
                    self._tok = None
        return self._tok

    def first(self, a: str, b: str) -> str | None:
        tok = self.get()
        if tok is None:
            return None
        ta, tb = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
        k = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
        def show(ids):
            return repr(tok.decode(ids[k:k + 1])) if k < len(ids) else "(end)"
        return f"token {k}: expected {show(ta)}, got {show(tb)}"


def model_dir_of(results: Path, model: str | None) -> Path | None:
    """The fetched model's weights folder of a run (``<workdir>/resources/models/<name>``)."""
    if not model:
        return None
    folder = Path(results).resolve().parents[1] / "resources" / "models" / model
    try:
        return folder / json.loads((folder / "manifest.json").read_text())["weights_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _events(entry: dict) -> list[tuple[tuple, str, str]]:
    """A conversation's texts in the order they depend on the dialog: (order key, label, fingerprint)."""
    out = []
    speakers = entry.get("speakers", [])
    for i, fp in enumerate(entry["turns"]):
        who = speakers[i] if i < len(speakers) and speakers[i] else ""
        out.append(((i, 0), f"turn {i}" + (f" ({who})" if who else ""), fp))
    for label, fp in entry["probe_texts"].items():
        turn = label.split()[2]  # "probe round R ...": a round-R probe sees the dialog up to turn 2R
        out.append(((2 * int(turn), 1, label), label, fp))
    return sorted(out)


def _text_of(rec: dict, label: str) -> str:
    if label.startswith("turn "):
        return rec["history"][int(label.split()[1])]
    _, _, rnd, kind, _, sample = label.split()
    probe = next(p for p in rec["probes"] if p["round"] == int(rnd) and p["kind"] == kind)
    return probe["answers"][int(sample)]


def compare(expected, results) -> Report:
    """Compare the run in ``results`` (a results folder) with ``expected`` (a manifest file, or
    another run's results folder)."""
    expected, results = Path(expected), Path(results)
    if expected.is_dir():
        exp_results = expected
        exp = build_manifest(expected)
    else:
        exp = read_manifest(expected)
        beside = expected.parent
        exp_results = beside if (beside / "transcripts").is_dir() else None
    exp_texts = read_transcripts(exp_results) if exp_results is not None else {}
    files = list(exp["tables"])
    missing = [f for f in files if not (results / f).is_file()]
    run = build_manifest(results, [f for f in files if f not in missing])
    run_texts = read_transcripts(results)
    tokens = Tokens(model_dir_of(results, run.get("model")) or
                    (model_dir_of(exp_results, exp.get("model")) if exp_results is not None else None))
    report = Report(str(expected), str(results), tables_missing=missing)
    for setting, convs in exp["settings"].items():
        got = run["settings"].get(setting)
        if got is None:
            report.setting_problems.append(f"setting {setting}: no transcripts in the run")
            continue
        extra = sorted(set(got) - set(convs))
        lost = sorted(set(convs) - set(got))
        if extra or lost:
            report.setting_problems.append(f"setting {setting}: conversations missing {lost or 'none'}, "
                                           f"extra {extra or 'none'}")
        differing = [c for c in convs if c in got and (convs[c]["dialog"], convs[c]["probes"])
                     != (got[c]["dialog"], got[c]["probes"])]
        if not differing:
            if not (extra or lost):
                report.settings_identical.append(setting)
            continue
        conv = differing[0]
        report.departures.append(_departure(setting, conv, convs[conv], got[conv], run_texts.get(setting, {}).get(conv),
                                            exp_texts.get(setting, {}).get(conv), tokens, len(differing), len(convs)))
    for setting in sorted(set(run["settings"]) - set(exp["settings"])):
        report.setting_problems.append(f"setting {setting}: in the run, not in the expected manifest")
    report.tables_differ = [f for f, sha in exp["tables"].items() if f in run["tables"] and run["tables"][f] != sha]
    got_claims = {c["claim"]: c for c in run["claims"]}
    for c in exp["claims"]:
        g = got_claims.get(c["claim"])
        if g is None:
            if c["claim"].split(":")[0] not in missing:  # a missing table is reported as such
                report.claims_missing.append(c["claim"])
            continue
        report.claims_compared += 1
        if g["verdict"] != c["verdict"]:
            report.verdicts_changed.append(f"{c['claim']}: expected {_fmt(c)}, got {_fmt(g)}")
    return report


def _departure(setting, conv, exp_entry, got_entry, got_rec, exp_rec, tokens: Tokens, differing, total) -> Departure:
    exp_events, got_events = _events(exp_entry), {label: fp for _, label, fp in _events(got_entry)}
    for _, label, fp in exp_events:
        if got_events.get(label) == fp:
            continue
        if label not in got_events:
            return Departure(setting, conv, label, "missing from the run", differing, total)
        got_text = _text_of(got_rec, label) if got_rec is not None else ""
        if exp_rec is not None:
            exp_text = _text_of(exp_rec, label)
            position = tokens.first(exp_text, got_text) or (_first_char(exp_text, got_text) + " (no tokenizer found)")
        else:
            position = _first_word(fp, got_text) + " (manifest only: words, not tokens)"
        return Departure(setting, conv, label, position, differing, total)
    extra = [label for label in got_events if label not in {lbl for _, lbl, _ in exp_events}]
    where = f"{extra[0]} (not in the expected run)" if extra else "the dialog's or probes' other fields"
    return Departure(setting, conv, where, "extra text", differing, total)


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
