"""Backends, one module each, registered by name in :data:`BACKENDS` (see ``base.py``)."""

from personadrift.runtime.backends import hf, openai_compatible, vllm  # noqa: F401  (register)
from personadrift.runtime.backends.base import (  # noqa: F401
    BACKENDS,
    MODEL_ENV,
    Backend,
    backend_of,
    internals_backends,
    model_job_backend,
    register,
)
