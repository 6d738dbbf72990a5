"""Figures: each is drawn from small tables only, so any figure rebuilds in seconds.

``draw(name, tables, outputs)`` looks the figure up in ``FIGURES`` and writes every output
(PDF and PNG) from one matplotlib figure.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes

FIGURES: dict[str, Callable] = {}


def figure(name: str):
    def deco(fn):
        FIGURES[name] = fn
        return fn

    return deco


def draw(name: str, tables: list[str], outputs: list[str]) -> None:
    from personadrift.figures import drift  # noqa: F401  (registers figures)

    for mod in ("attention", "mitigation", "example", "comparison"):
        try:
            __import__(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; known: {sorted(FIGURES)}")
    save(FIGURES[name](*tables), outputs)


def save(fig, outputs: list[str]) -> None:
    """Write ``fig`` to every output (PDF and/or PNG), then close it."""
    import matplotlib.pyplot as plt

    for out in outputs:
        fig.savefig(out, bbox_inches="tight", dpi=150, metadata=_metadata(out))
    plt.close(fig)


def _metadata(out: str) -> dict:
    # fixed metadata keeps PDFs byte-stable across rebuilds of the same tables
    if out.endswith(".pdf"):
        return {"CreationDate": None, "Producer": "personadrift"}
    if out.endswith(".png"):
        return {"Software": "personadrift"}
    return {}
