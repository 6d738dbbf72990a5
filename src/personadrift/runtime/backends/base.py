"""What a backend is: one registered object per backend, as methods are (interventions/base.py).

A backend owns everything about itself: its config name, whether it gives the model's internals
(attention, log-probabilities, split-softmax, guidance), whether it runs the fetched weights
(``model.source: api`` exactly when the study's backend does not), the config section it reads
and that section's checks, how it builds its engine, and the environment its self-chat jobs run
in (``envs/<env>.yaml`` for ``--sdm conda``; the default route's venv: ``.venv`` for ``model``,
``.venv-<env>`` for the others, both built by ``make setup``). The config check, the factory,
the rules and the CLI ask the backend; nothing else compares backend names.

Importing a backend module must stay light (the workflow parses the DAG with it): engines are
imported inside :meth:`Backend.engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from personadrift.errors import InputError

MODEL_ENV = "model"  # the project's own environment (requirements.txt, envs/model.yaml, .venv)


class Backend:
    name: ClassVar[str]  # the config value of ``backend`` and ``interventions.<name>.backend``
    description: ClassVar[str]
    # split-softmax, guidance, attention recording and MMLU's log-probabilities need these
    gives_internals: ClassVar[bool] = False
    # runs the fetched weights (False: a server holds the model; the study's model.source is api)
    local_weights: ClassVar[bool] = True
    section: ClassVar[str | None] = None  # the config section it reads
    env: ClassVar[str] = MODEL_ENV  # envs/<env>.yaml; venv .venv (model) or .venv-<env>

    def check(self, config: dict, path) -> None:
        """Checks of the backend's own keys, when a setting of the study runs on it."""

    def engine(self, config: dict, model_dir: str | Path, setting=None, *, sampling, threads: int | None = None):
        """The engine (generation/api.Engine) of ``setting`` on this backend."""
        raise NotImplementedError

    def refuse(self, setting, where: str = "config") -> None:
        """One line naming the file and key when ``setting`` needs what this backend cannot give."""
        if setting is not None and setting.needs_internals and not self.gives_internals:
            key = "backend" if setting.backend else "method"
            raise InputError(where, f"interventions.{setting.family}.{key}",
                             f"{setting.method} needs model internals; it cannot run with backend: {self.name} "
                             f"(backends that give them: {', '.join(internals_backends())})")


BACKENDS: dict[str, Backend] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` the backend named ``cls.name``."""
    if cls.name in BACKENDS:
        raise ValueError(f"backend {cls.name!r} registered twice")
    BACKENDS[cls.name] = cls()
    return cls


def internals_backends() -> list[str]:
    return [n for n, b in BACKENDS.items() if b.gives_internals]


def backend_of(config: dict, setting=None) -> Backend:
    """The backend of ``setting`` (its own ``backend`` key, else the study's)."""
    name = setting.backend_for(config["backend"]) if setting is not None else config["backend"]
    return BACKENDS[name]


def model_job_backend(config: dict) -> Backend:
    """The backend of the model jobs that are no self-chat (calibration): the study's when it runs
    in the project's own environment, else the first that gives internals on the same weights
    (a vLLM study calibrates on the HF engine)."""
    study = backend_of(config)
    if study.env == MODEL_ENV:
        return study
    return BACKENDS[internals_backends()[0]]
