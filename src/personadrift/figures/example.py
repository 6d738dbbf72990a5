"""The paper's first figure: one conversation as a readable dialog, with probe scores per round."""

from __future__ import annotations

import json
import textwrap

import matplotlib.pyplot as plt

from personadrift.figures.style import caption

WRAP = 95


def _clip(text: str, n: int = 260) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def example_dialog(example_json: str):
    ex = json.loads(open(example_json).read())
    lines: list[tuple[str, str, str]] = []  # (who, text, colour)
    lines.append(("agent persona", ex["agent"]["system_prompt"], "#1f77b4"))
    lines.append(("user persona", ex["user"]["system_prompt"], "#d62728"))
    topic = ("user (topic)", ex["topic"], "#d62728")
    if not any(r["agent"] is None for r in ex["rounds"]):
        lines.append(topic)
    for r in ex["rounds"]:
        if r["agent"] is None:  # round 0: probed before any dialog, then the topic opens it
            lines.append((f"  probe before the dialog: {r['probe']}",
                          f"-> {_clip(r['answer'], 180)}   [score {r['score']:.2f}]", "#555555"))
            lines.append(topic)
            continue
        lines.append((f"agent, round {r['round']}", _clip(r["agent"]), "#1f77b4"))
        lines.append((f"  probe: {r['probe']}", f"-> {_clip(r['answer'], 180)}   [score {r['score']:.2f}]", "#555555"))
        if r["user_next"]:
            lines.append(("user", _clip(r["user_next"]), "#d62728"))
    wrapped = [(who, textwrap.wrap(text, WRAP) or [""], col) for who, text, col in lines]
    height = sum(len(w) + 1.3 for _, w, _ in wrapped)
    fig, ax = plt.subplots(figsize=(8.5, max(3.0, 0.17 * height)))
    ax.axis("off")
    y = 1.0
    step = 1.0 / height
    for who, text_lines, col in wrapped:
        ax.text(0.0, y, who, fontsize=7.5, fontweight="bold", color=col, va="top", transform=ax.transAxes)
        y -= step
        for t in text_lines:
            ax.text(0.02, y, t, fontsize=7.5, color=col if col == "#555555" else "black", va="top",
                    transform=ax.transAxes, family="DejaVu Sans")
            y -= step
        y -= 0.3 * step
    ax.set_title(f"Example self-chat ({ex['model']}, conversation {ex['conversation']})", fontsize=9)
    caption(fig, f"Picked by rule: {ex['rule']}. Score: the agent persona's judge on the probe answers of that "
                 "round (mean over samples; one sample shown). Probes are asked in forks that never enter the dialog.",
            width=120)
    return fig
