"""The comparison of a run with an expected manifest or another run (``personadrift verify``).

:func:`compare` reads a run's results folder against an expected manifest (``manifest.py``) and
reports, per setting, the first departure: conversation, turn (or probe) and token. The token is
found by tokenizing both texts when the expected run's transcripts are at hand (a manifest beside
its results folder, or a results folder given as expected) and the model's tokenizer is found;
with both texts but no tokenizer it is the first differing character; with the manifest alone,
the first differing word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from personadrift.reproduce.manifest import build_manifest, read_manifest, read_transcripts, word_hash


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
                return (f"word {k}: the expected text ends after {len(exp) // 4} words, "
                        f"the run's goes on with {words[k]!r}")
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
    out: list[tuple[tuple, str, str]] = []
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
