"""Figures: each is drawn from small tables only, so any figure rebuilds in seconds.

Every figure is declared once in ``catalog.FIGURES`` (its function, tables, captions);
``draw(name, tables, outputs)`` imports its function and writes every output (PDF and PNG)
from one matplotlib figure. Importing this package loads no matplotlib: the workflow reads the
catalog while parsing the DAG.
"""

from __future__ import annotations

from importlib import import_module

from personadrift.figures.catalog import BY_NAME


def function(name: str):
    """The drawing function of figure ``name`` (catalog.FIGURES)."""
    if name not in BY_NAME:
        raise KeyError(f"unknown figure {name!r}; known: {sorted(BY_NAME)}")
    module, attr = BY_NAME[name].draw.split(":")
    _headless()
    return getattr(import_module(f"{__name__}.{module}"), attr)


def draw(name: str, tables: list[str], outputs: list[str], **options) -> None:
    save(function(name)(*tables, **options), outputs)


def save(fig, outputs: list[str]) -> None:
    """Write ``fig`` to every output (PDF and/or PNG), then close it."""
    import matplotlib.pyplot as plt

    for out in outputs:
        fig.savefig(out, bbox_inches="tight", dpi=150, metadata=_metadata(out))
    plt.close(fig)


def _headless() -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes


def _metadata(out: str) -> dict:
    # fixed metadata keeps PDFs byte-stable across rebuilds of the same tables
    if out.endswith(".pdf"):
        return {"CreationDate": None, "Producer": "personadrift"}
    if out.endswith(".png"):
        return {"Software": "personadrift"}
    return {}
