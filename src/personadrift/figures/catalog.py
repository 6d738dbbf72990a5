"""Every figure, declared once: its drawing function, its tables, its report caption, its paper claim.

``rules/figures.smk`` builds the figure rule's inputs from ``tables``, ``report/figure.rst`` and
the README's reviewer's map are generated from the declarations (``personadrift figure-docs``,
checked by tests/test_figure_catalog.py), and ``draw`` finds the function through ``draw``. A new
figure is its drawing function plus one ``Figure(...)`` below.

This module imports nothing beyond the standard library: the workflow reads it while parsing the
DAG, where matplotlib, scipy and torch stay unloaded (tests/test_startup.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One figure.

    ``draw``: ``module:function`` in ``personadrift.figures``; the function takes the tables'
    paths in ``tables`` order and returns a matplotlib figure. ``tables``: each one rule output,
    ``rule`` (a rule with one output) or ``rule.key`` (a named output), a ``{setting}`` wildcard
    filled with the baseline ``none``. ``caption``: the report's caption (reStructuredText
    with Jinja: ``c`` is the config, ``how`` the interval in words). ``claim``: the paper claim
    of the reviewer's map, and ``parts``: further (claim, part of the figure) rows.
    ``needs_internals``: drawn from attention or MMLU, which an API model cannot give.
    ``per_study``: built by rule ``figure`` for every study (the comparison is built by rule
    ``compare`` from several studies' tables, and ``command`` names how to build it).
    ``switch``: a boolean config key (dotted) that puts the figure in ``figures/all``; without
    it the figure is built only when asked for (its rule ``figure`` target, or its own target).
    """

    name: str
    draw: str
    tables: tuple[str, ...]
    caption: str
    claim: str
    parts: tuple[tuple[str, str], ...] = ()
    needs_internals: bool = False
    per_study: bool = True
    command: str = ""
    switch: str = ""

    def make_command(self) -> str:
        return self.command or f"make figure NAME={self.name}"


FIGURES: tuple[Figure, ...] = (
    Figure(
        "example_dialog", "example:example_dialog",
        tables=("example_dialog",),
        claim="Fig. 1: a dialog drifts away from its system prompt",
        caption="""
One self-chat rendered as a dialog with the probe answer and score after each round (paper
Fig. 1), picked by the rule ``{{ c["report"]["example_dialog_rule"] }}``.
""",
    ),
    Figure(
        "drift_over_rounds", "drift:drift_over_rounds",
        tables=("drift_tables.by_round", "drift_tables.change", "drift_tables.study"),
        claim="Fig. 2: persona stability falls within 8 rounds, adoption of the user persona rises",
        parts=(("Drift is more than dialog length (control: user bot without persona)", "dashed curves in"),),
        caption="""
Persona drift (paper Fig. 2): mean judge score of the agent's own probe (stability) and of the
user persona's probe (adoption) per round, from round 0 (asked right after the system prompt,
before any dialog) on, with {{ how }}; dashed, when the study has it, the control setting whose
user bot has no persona, so drift from dialog length alone can be told apart from drift toward the
user's persona. Shaded rounds: some prompts did not fit the context as is (truncated or overflow).

The claims, each on per-conversation values with the same interval, Holm-adjusted together: the
*decline over the dialog* is the fitted (least-squares) change from round 1 to the last round, and
the figure's "from a to b" are that fitted line's values at its two ends; the *round-0 shift* is
round 1 minus round 0; against the control, each is the per-conversation difference of the two
settings on the same conversation seeds (a difference in differences). Round 0 is asked before
any dialog with fresh seeds (not the calibration that selected the personas), so the change from
round 0 is not regression to the mean; it measures the dialog's arrival in context, not the decline
over the dialog. A claim that is not significant is read with its interval: the data make effects
outside it unlikely and cannot tell apart the effects inside it, zero among them. Every claim's
estimate, interval, Holm p and verdict (under both treatments of answers the judge could not score) is in the study's
``tables/none/change.csv`` and in the right panel of the figure (filled: significant). Personas:
{{ c["personas"]["files"] | length }} files; calibration threshold
{{ c["personas"]["calibration"]["keep_threshold"] }}. The dialogs and probe answers behind every
point are in the "Dialogs" entry of this report (the transcript browser: click a point of its
drift chart).
""",
    ),
    Figure(
        "attention_decay", "attention:attention_decay",
        tables=("attention.per_token", "attention.per_layer_round"),
        needs_internals=True,
        claim="Attention to the system prompt decays as the dialog grows",
        caption="""
Attention paid to the system prompt by each token of the agent's view, teacher-forced over
{{ c["attention"]["conversations"] }} stored conversations, with turn boundaries and a per-layer
panel (the paper's attention-decay analysis).
""",
    ),
    Figure(
        "attention_vs_stability", "attention:attention_vs_stability",
        tables=("attention_vs_stability.joined", "attention_vs_stability.correlation"),
        needs_internals=True,
        claim="Drift is tied to attention decay",
        caption="""
Per-round prompt attention against per-round stability of the same conversations. The link is
estimated within conversations and net of round (two-way fixed effects, cluster-robust
t-interval over conversations); the pooled Pearson r is shown for contrast only.
""",
    ),
    Figure(
        "theory_attention_decay", "attention:theory_attention_decay",
        tables=("attention.theory_curve", "attention.theory_fits", "attention.theory_synthetic"),
        needs_internals=True,
        claim="A theory of the decay (ours: softmax dilution)",
        caption="""
This project's softmax-dilution model of attention decay (not the paper's theorem), with the
attention sink kept apart, fitted per layer and head on some conversations and scored on
held-out ones; the caption says in which layers it explains the decay. Plus a synthetic check
of the same estimator on a random layer with a planted sink.
""",
    ),
    Figure(
        "comparison", "comparison:comparison",
        tables=(), per_study=False,
        claim="Drift in both models, side by side (Llama-2-70B-chat, GPT-3.5)",
        command="`snakemake figures/paper-gpt35/comparison.png --configfile configs/paper-gpt35.yaml` "
                "(after both paper studies)",
        caption="""
Persona stability per round in each study named by ``compare.studies``
({{ c["compare"]["studies"] | join(", ") }}), one panel per study, each with its own interval.
""",
    ),
    Figure(
        "mitigation_over_rounds", "mitigation:mitigation_over_rounds",
        tables=("tradeoff.by_round", "tradeoff.tradeoff"),
        needs_internals=True,
        claim="Split-softmax, repetition and guidance reduce drift",
        caption="""
Stability per round for no intervention and each method at its chosen setting, on the same
seeds and persona pairs, with {{ how }}; paired differences from no intervention with
Holm-adjusted p-values over the settings. Methods and grids: {{ c["interventions"] | list | join(", ") }}.
""",
    ),
    Figure(
        "tradeoff_stability_mmlu", "mitigation:tradeoff_stability_mmlu",
        tables=("tradeoff.tradeoff",),
        needs_internals=True,
        claim="Split-softmax trades stability against MMLU better than the baselines",
        caption="""
Stability (mean over rounds) against zero-shot MMLU accuracy on
{{ c["mmlu"]["questions"] }} stratified questions with a persona prompt in place, one curve per
method across its grid, intervals on both axes (stability: {{ how }}; MMLU: Wilson), in the
MMLU form (letter or cloze) whose no-intervention accuracy is above chance (paper Fig. 6).
""",
    ),
    Figure(
        "drift_signals", "signals:drift_signals",
        tables=("drift_tables.by_round", "signal_tables.by_round", "signal_tables.change"),
        needs_internals=True, switch="signals.enabled",
        claim="Beyond the paper: drift without a judge (KL from the fresh context, persona-vector projection)",
        caption="""
Drift without a judge, beside the judges' curve: per round, the mean over conversations of the
agent's per-token KL divergence KL(p_dialog || p_fresh) between its next-token distributions over
each probe answer in the dialog's context and in a fresh context (system prompt and probe only),
and the answer's mean projection on its persona's vector, with {{ how }}. Teacher-forced on the
stored answers; the setting's intervention applies in both contexts. The signals' claims (round-0
shift, decline over the dialog) are Holm-adjusted in a family of their own
(``tables/none/signals_change.csv``); their link with the judge score within conversations is in
``tables/none/signals_vs_judge.json``.
""",
    ),
)

BY_NAME: dict[str, Figure] = {f.name: f for f in FIGURES}
if len(BY_NAME) != len(FIGURES):
    raise ValueError("two figures in catalog.FIGURES share a name")


def study_figures(*, internals: bool = True, config: dict | None = None, switched: bool = False) -> list[Figure]:
    """The figures of one study's ``figures/all`` (without model internals: the dialog ones); a
    figure with a ``switch`` only where ``config`` turns it on, or every one with ``switched``
    (what rule ``figure`` can build)."""
    return [f for f in FIGURES if f.per_study and (internals or not f.needs_internals)
            and (not f.switch or switched or (config is not None and bool(config_value(config, f.switch))))]


def config_value(config: dict, dotted: str):
    """The value of the dotted key ``dotted`` in ``config`` (None where a section lacks it)."""
    value: object = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table_refs(fig: Figure) -> list[tuple[str, str | None]]:
    """``fig.tables`` as (rule, output key or None for the rule's one output)."""
    return [(ref.split(".", 1)[0], ref.split(".", 1)[1] if "." in ref else None) for ref in fig.tables]


# ------------------------------------------------------------------ generated text

GENERATED = "generated from src/personadrift/figures/catalog.py by `personadrift figure-docs`; do not edit"
HOW = ('{% set how = (c["scoring"]["confidence"] * 100) | round | int | string ~ "% " ~ '
       '{"t": "t-interval", "signflip": "sign-flip permutation interval", "bca": "BCa bootstrap interval", '
       '"percentile": "percentile bootstrap interval"}[c["scoring"]["method"]] ~ " over conversations" %}')


def report_caption() -> str:
    """report/figure.rst: the caption of every figure, picked by the figure rule's ``name`` wildcard."""
    lines = [f"{{# {GENERATED} #}}", '{% set name = snakemake.wildcards.name | default("comparison") %}',
             "{% set c = snakemake.config %}", HOW]
    for i, f in enumerate(FIGURES):
        lines.append(f'{{% {"if" if i == 0 else "elif"} name == "{f.name}" %}}')
        lines.append(f.caption.strip())
    lines.append("{% endif %}")
    return "\n".join(lines) + "\n"


MAP_START = f"<!-- reviewer's map: {GENERATED} -->"
MAP_END = "<!-- end of the reviewer's map -->"
BROWSER_ROW = ("| Read any dialog behind a number | `results/<study>/browser/index.html` | built by `figures/all`; "
               "alone: `personadrift browser --results results/<study>` |")


def reviewer_map() -> str:
    """The README's reviewer's map: one row per paper claim, with the figure and how to build it."""
    rows = ["| Paper claim | Figure (`figures/<study>/`) | Command (after `make setup`) |", "|---|---|---|"]
    for f in FIGURES:
        command = f.make_command() if f.command else f"`{f.make_command()}`"
        rows.append(f"| {f.claim} | `{f.name}.pdf` | {command} |")
        rows += [f"| {claim} | {part} `{f.name}.pdf` | as above |" for claim, part in f.parts]
    rows.append(BROWSER_ROW)
    return "\n".join([MAP_START, "", *rows, "", MAP_END])


def with_reviewer_map(readme: str) -> str:
    """``readme`` with the text between the map's markers replaced by :func:`reviewer_map`."""
    pattern = re.compile(re.escape(MAP_START) + r".*?" + re.escape(MAP_END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"the README has no reviewer's map between {MAP_START!r} and {MAP_END!r}")
    return pattern.sub(lambda _: reviewer_map(), readme, count=1)


def figure_docs(root) -> dict:
    """The generated files under the repository ``root`` (path -> text), from their current text."""
    from pathlib import Path

    readme = Path(root) / "README.md"
    return {Path(root) / "report" / "figure.rst": report_caption(),
            readme: with_reviewer_map(readme.read_text(encoding="utf-8"))}
