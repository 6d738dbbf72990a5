"""Intervention methods, one module each, found by name in :data:`METHODS`.

See ``base.py`` for what a method owns and ``registry.py`` for how methods are found: through
the entry point group ``personadrift.methods``, where this package registers its own methods
(none/control, split_softmax, repetition, cfg) and any installed package may register more.
"""

from personadrift.interventions.base import Method
from personadrift.interventions.registry import METHODS, MethodPluginError

__all__ = ["METHODS", "Method", "MethodPluginError"]
