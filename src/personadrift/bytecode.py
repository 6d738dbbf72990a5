"""Cache, once at setup, the compiled bytecode of what the workflow's jobs import.

``python -m personadrift.bytecode`` (``make setup`` runs it after installing the lock).

Every workflow job is a new Python process. CPython caches a module's bytecode (``__pycache__``)
the first time a process imports it, unless PYTHONDONTWRITEBYTECODE is set, as on many CI
runners; there, a venv without cached bytecode makes every job compile torch and transformers
anew (about 14 s of CPU each). Byte-compiling the whole venv at install (uv's
``--compile-bytecode``) does that for all of its ~20,000 files, most of which no job imports, and
was most of the setup's time (docs/measurements.md, Setup). Here the process turns bytecode
writing on and imports what the jobs import: every module of this package (torch, transformers,
scipy, pandas and the rest at module level), the modules transformers loads lazily for a Llama
model and its GGUF fetch, and matplotlib's PDF and PNG writers, exercised on a small figure.
What a job imports beyond these is cached by the first process that imports it wherever
bytecode writing is on (the Makefile's recipes turn it on), and compiled in memory otherwise.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
import sys

# imported by the jobs after their module-level imports (transformers resolves a model's classes
# lazily, from its config); without them cached, each model job compiles them again
LAZY_MODULES = (
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.generation.utils",
    "transformers.tokenization_utils_tokenizers",
    "transformers.modeling_gguf_pytorch_utils",  # the embedded default's fetch
    "gguf",
    "snakemake.cli",  # the workflow's own process, and each SLURM job's
)


def package_modules() -> list[str]:
    """Every module of the personadrift package, by name."""
    import personadrift

    return [info.name for info in pkgutil.walk_packages(personadrift.__path__, "personadrift.")]


def _figure_writers() -> None:
    """Write a small figure with text to PDF and PNG in memory: loads the writers and the font
    subsetting of the PDF backend (fontTools), as every figure job does."""
    import matplotlib

    matplotlib.use("Agg")  # as personadrift.figures does (not imported here: a later stage)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0], label="stability")
    ax.legend()
    ax.set_title("bytecode")
    for fmt in ("pdf", "png"):
        fig.savefig(io.BytesIO(), format=fmt, bbox_inches="tight")
    plt.close(fig)


def warm(modules: list[str] | None = None) -> list[str]:
    """Import ``modules`` with bytecode writing on (default: the package's modules and
    LAZY_MODULES, then the figure writers); returns one line per module that failed to import."""
    sys.dont_write_bytecode = False  # whatever PYTHONDONTWRITEBYTECODE says: caching is the point
    names = package_modules() + list(LAZY_MODULES) if modules is None else modules
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional dependency absent here (vllm in the main venv)
            failed.append(f"{name}: {exc}")
    if modules is None:
        _figure_writers()
    return failed


def main() -> int:
    failed = warm()
    cached = sum(1 for m in list(sys.modules.values()) if getattr(m, "__cached__", None))
    print(f"bytecode: {cached} modules imported, their bytecode cached"
          + (f"; {len(failed)} not importable here:" if failed else ""))
    for line in failed:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
