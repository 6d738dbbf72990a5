"""Intervention methods, one module each, registered by name in :data:`METHODS`.

Importing this package registers every method; see ``base.py`` for what a method owns.
"""

from personadrift.interventions import guidance, none, repetition, split_softmax  # noqa: F401  (register)
from personadrift.interventions.base import METHODS, Method, register  # noqa: F401
