"""A figure is declared once (src/personadrift/figures/catalog.py): the rule's tables, the report's
caption and the README's reviewer's map come from that declaration, and the drift figure's own
caption is short, its "from a to b" the fitted line's ends."""

from __future__ import annotations

import inspect
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from personadrift.figures import function
from personadrift.figures.catalog import FIGURES, figure_docs, study_figures
from support.simulated_study import drift_tables_of_simulated_study
from support.workflow import REPO, SMOKE, snakemake


def test_the_generated_caption_and_map_match_the_catalog():
    """report/figure.rst and the README's map are what `personadrift figure-docs` writes now: a
    figure added, renamed or re-captioned without rerunning it fails here."""
    for path, text in figure_docs(REPO).items():
        assert path.read_text(encoding="utf-8") == text, f"{path.relative_to(REPO)} is stale: run `make figure-docs`"


def test_the_readme_map_has_one_row_per_declared_claim():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for f in FIGURES:
        rows = [line for line in readme.splitlines() if line.startswith(f"| {f.claim} |")]
        assert len(rows) == 1 and f"`{f.name}.pdf`" in rows[0], f.name
        if f.per_study:
            assert f"`make figure NAME={f.name}`" in rows[0]


def test_every_declared_function_takes_its_tables_in_order():
    """The rule passes the declared tables positionally: the function has exactly that many."""
    for f in FIGURES:
        params = inspect.signature(function(f.name)).parameters.values()
        positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        if f.per_study:
            assert len(positional) == len(f.tables), f"{f.name}: {len(f.tables)} tables, {len(positional)} parameters"
        else:
            assert any(p.kind is p.VAR_POSITIONAL for p in params), f.name
    with pytest.raises(KeyError, match="unknown figure 'nope'"):
        function("nope")


@pytest.mark.parametrize("f", FIGURES, ids=lambda f: f.name)
def test_the_report_caption_renders_for_every_figure(f):
    """The caption template as Snakemake's report renders it (Jinja, the validated config)."""
    import jinja2

    from personadrift.config import load_config

    config = load_config(REPO / "config.yaml")
    wildcards = {"name": f.name} if f.per_study else {}   # rule compare has no name wildcard
    text = jinja2.Environment().from_string((REPO / "report/figure.rst").read_text()).render(
        snakemake=SimpleNamespace(wildcards=wildcards, config=config))
    first = " ".join(f.caption.split()[:4])
    assert " ".join(text.split()).startswith(first), text[:300]
    assert "{{" not in text and "{%" not in text


def test_the_rule_builds_every_declared_figure_into_the_studys_folder(tmp_path):
    """The DAG, planned on the smoke config: one figure job per declared per-study figure, each
    written under figures/<study>/, and figures/all after figures/smoke/all."""
    plan = snakemake(tmp_path, "--configfile", SMOKE, "-n", "figures/all")
    text = plan.stdout + plan.stderr
    planned = set(re.findall(r"figures/smoke/(\w+)\.pdf", text))
    assert planned == {f.name for f in study_figures()}
    assert "output: figures/smoke/all" in text and "output: figures/all" in text
    assert not re.search(r"figures/(?!smoke/|all\b)\w+\.(pdf|png)", text)


# ------------------------------------------------------------------- the drift figure's caption

@pytest.fixture(scope="module")
def drift_tables(tmp_path_factory):
    """A simulated study with a planted decline through the score and drift-table steps."""
    out = drift_tables_of_simulated_study(tmp_path_factory.mktemp("drift"), 16, seed=5)
    return [str(out[k]) for k in ("by_round", "change", "study")]


def test_the_drift_figures_caption_is_three_sentences_with_the_fitted_ends(drift_tables):
    from personadrift.figures.drift import _claim, drift_caption, fitted_ends

    by_round, change = pd.read_csv(drift_tables[0]), pd.read_csv(drift_tables[1])
    study = json.loads(open(drift_tables[2]).read())
    text = drift_caption(by_round, change, study, [])
    assert len(re.findall(r"[.)](?= [A-Z]|$)", text)) == 3, text
    assert "cannot show drift" not in text
    d = _claim(change, "none", "agent", "drift")
    a, b = fitted_ends(by_round, d)
    # the fitted line's ends: the least-squares line through the per-round means (every
    # conversation has every round here, so it is the mean of the per-conversation lines)
    rows = by_round[(by_round["setting"] == "none") & (by_round["kind"] == "agent") & (by_round["round"] >= 1)]
    slope, icept = np.polyfit(rows["round"], rows["mean"], 1)
    assert a == pytest.approx(icept + slope * d.first_round) and b == pytest.approx(icept + slope * d.last_round)
    assert b - a == pytest.approx(d.change)
    assert f"from {a:.2f} (round {d.first_round}) to {b:.2f} (round {d.last_round}) on the fitted line" in text
    # the observed end-round means are not what the caption quotes when they differ from the fit
    assert (round(d.first_mean, 2), round(d.last_mean, 2)) != (round(a, 2), round(b, 2))


def test_the_drift_caption_names_the_share_that_stopped_and_what_could_have_been_shown(drift_tables, tmp_path):
    """With no stop planted it says none stopped; with a quarter of the baseline's conversations
    stopped early (planted), it names how many of how many, as the scores flag them. A claim not
    shown carries the change the study had 80% power to show (analysis.stats.detectable_change)."""
    from personadrift.analysis.stats import detectable_change, stopped_by
    from personadrift.figures.drift import _claim, drift_caption

    by_round, change = pd.read_csv(drift_tables[0]), pd.read_csv(drift_tables[1])
    study = json.loads(open(drift_tables[2]).read())
    assert "(none stopped early)" in drift_caption(by_round, change, study, [])

    out = drift_tables_of_simulated_study(tmp_path, 16, seed=5, stop_share={"none": 0.25})
    by_round, change = pd.read_csv(out["by_round"]), pd.read_csv(out["change"])
    study = json.loads(out["study"].read_text())
    none_scores = pd.read_csv(next(p for p in out["scores"] if p.stem == "none"))
    stopped = len(stopped_by(none_scores, int(by_round["round"].max())))
    assert 0 < stopped < 16
    text = drift_caption(by_round, change, study, [])
    assert f"({stopped} of 16 conversations, {stopped / 16:.0%}, stopped early with their context full" in text
    assert len(re.findall(r"[.)](?= [A-Z]|$)", text)) == 3, text
    d = _claim(change, "none", "agent", "drift")
    if not d.significant:
        x = detectable_change(d.se, int(d.n_conversations), int(d.n_comparisons), confidence=d.confidence)
        assert f"a change of {x:.2f} or more either way would have been shown with 80% power" in text
    else:
        assert "80% power" not in text


def test_the_drift_caption_counts_the_verdicts_the_other_judge_error_treatment_changes():
    from personadrift.figures.drift import judge_error_note

    change = pd.DataFrame({"significant": [True, False, True], "significant_if_dropped": [False, False, True]})
    assert judge_error_note(change, {"judge_errors": 0}) == ""
    assert judge_error_note(change, {"judge_errors": 3}) == (
        "3 answers could not be judged and are scored 0 (dropped instead, 1 claim changes verdict)")
    same = change.assign(significant_if_dropped=change["significant"])
    assert judge_error_note(same, {"judge_errors": 3}).endswith("(dropped instead, no claims change verdict)")


def test_a_switched_figure_joins_figures_all_only_where_the_config_turns_it_on():
    """drift_signals (signals.enabled) stays out of the default's figures/all, which its model time
    would lengthen, and rule figure can still build it; an API study never gets it (no internals)."""
    from personadrift.config import load_config

    config = load_config(REPO / "config.yaml")
    assert config["signals"]["enabled"] is False
    names = lambda **kw: {f.name for f in study_figures(**kw)}  # noqa: E731
    assert "drift_signals" not in names(config=config)
    assert "drift_signals" in names(config={**config, "signals": {"enabled": True}})
    assert "drift_signals" in names(switched=True)
    assert "drift_signals" not in names(internals=False, switched=True)


def test_the_mitigation_caption_names_stopped_conversations_and_what_a_null_could_have_shown():
    """Per compared setting: conversations stopped early (in it or the baseline), and for a claim
    not shown, the difference it had 80% power to show at its family's Bonferroni level."""
    from personadrift.analysis.stats import detectable_change
    from personadrift.figures.mitigation import _stopped_clause, mitigation_sentence

    def row(method, value, significant, stopped):
        return {"method": method, "value": value, "family": method, "chosen": True, "n_conversations": 48,
                "n_stopped": stopped, "n_comparisons": 6, "confidence": 0.95,
                **{f"stability_diff{k}": v for k, v in {"": 0.1, "_ci_low": -0.02, "_ci_high": 0.22, "_p_holm": 0.4,
                                                       "_significant": significant, "_se": 0.06}.items()}}

    t = pd.DataFrame([row("none", np.nan, False, 0), row("repetition", 1.0, False, 6),
                      row("split_softmax", 0.5, True, 0)])
    assert _stopped_clause(t) == ("stopped early, in the setting or the baseline: prompt repetition (every=1) "
                                  "6 (12%), split-softmax (k=0.5) 0 (0%)")
    assert _stopped_clause(t.assign(n_stopped=0)) == "none stopped early"
    x = detectable_change(0.06, 48, 6)
    assert f"(no significant difference; shown with 80% power only from ±{x:.2f})" in mitigation_sentence(t.iloc[1])
    assert "80% power" not in mitigation_sentence(t.iloc[2]) and "raises the level" in mitigation_sentence(t.iloc[2])
