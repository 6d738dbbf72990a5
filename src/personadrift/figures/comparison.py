"""Figure: several studies' drift curves side by side, as the paper shows two models.

The paper's drift figure puts Llama-2-chat-70B and GPT-3.5 next to each other. Each study here
is one panel: its agent persona's stability per round, with the study's own interval, from the
study's ``tables/<setting>/by_round.csv`` and ``study.json`` (rules/score.smk); the length-only
control, where the study has one, dashed. Panels share the score axis; each keeps its own
rounds (upstream ran GPT-3.5 for 16 rounds and Llama-2 for 8).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from personadrift.analysis.stats import METHOD_NAME
from personadrift.errors import InputError
from personadrift.figures.drift import CONTROL
from personadrift.figures.style import KIND_COLOR, band, caption

TABLES = ("by_round.csv", "study.json")


@dataclass
class StudyTables:
    by_round: pd.DataFrame
    study: dict
    source: str


def study_tables(results_dir: str | Path, setting: str = "none") -> list[str]:
    """The two tables of ``setting`` that one panel is drawn from, in a study's results folder."""
    return [str(Path(results_dir) / "tables" / setting / name) for name in TABLES]


def _read(by_round_csv: str, study_json: str) -> StudyTables:
    for p in (by_round_csv, study_json):
        if not Path(p).is_file():
            raise InputError(p, None, "file not found: build that study's drift tables first "
                                      "(snakemake results/<study>/tables/none/by_round.csv --configfile <its config>)")
    df = pd.read_csv(by_round_csv)
    missing = {"setting", "kind", "round", "mean", "ci_low", "ci_high"} - set(df.columns)
    if missing:
        raise InputError(by_round_csv, ", ".join(sorted(missing)), "missing column(s) of a drift table")
    return StudyTables(df, json.loads(Path(study_json).read_text(encoding="utf-8")), by_round_csv)


def panel_label(t: StudyTables) -> str:
    return f"{t.study.get('model', '?')} ({t.study.get('study', Path(t.source).parents[2].name)})"


def comparison(*tables: str, setting: str = "none"):
    """One panel per study; ``tables`` are each study's (by_round.csv, study.json), in order."""
    if not tables or len(tables) % 2:
        raise InputError("(command line)", "--tables", "expected pairs of by_round.csv and study.json, one per study")
    studies = [_read(tables[i], tables[i + 1]) for i in range(0, len(tables), 2)]
    fig, axes = plt.subplots(1, len(studies), figsize=(4.2 * len(studies), 3.6), sharey=True, squeeze=False)
    notes = []
    for ax, t in zip(axes[0], studies):
        d = t.by_round[(t.by_round["setting"] == setting) & (t.by_round["kind"] == "agent")].sort_values("round")
        band(ax, d["round"], d["mean"], d["ci_low"], d["ci_high"], KIND_COLOR["agent"], "stability")
        c = t.by_round[(t.by_round["setting"] == CONTROL) & (t.by_round["kind"] == "agent")].sort_values("round")
        if not c.empty:
            band(ax, c["round"], c["mean"], c["ci_low"], c["ci_high"], KIND_COLOR["agent"],
                 "control: user bot without persona", ls="--", mfc="white")
        rounds = sorted(d["round"].unique())
        ax.set_xticks(rounds)
        ax.set_xlabel("round", fontsize=8)
        ax.set_title(panel_label(t), fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        s = t.study
        method = s.get("method", "t")
        notes.append(f"{panel_label(t)}: {s.get('conversations', '?')} conversations x {s.get('runs', '?')} probe "
                     f"samples per round, {s.get('confidence', 0):.0%} {METHOD_NAME.get(method, method)} over "
                     f"{s.get('bootstrap_unit', 'conversation')}s")
    axes[0][0].set_ylabel("persona stability (judge score, 0-1)")
    handles: dict = {}
    for ax in axes[0]:   # one entry per curve kind, whichever panel has it
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[0][0].legend(handles.values(), handles.keys(), loc="best", fontsize=7)
    caption(fig, "Persona stability per round in each study (round 0: the probe right after the system prompt, "
                 "where a study has it), with each study's own interval. " + "; ".join(notes) + ".",
            width=55 * len(studies))
    return fig
