"""Intervention methods, one module each, registered by name in :data:`METHODS`.

Importing this package registers every method; see ``base.py`` for what a method owns. Modules
named in ``PERSONADRIFT_METHODS`` (comma-separated) are imported too: a method defined outside
the package (the tests' toy method) is then known to the config check, the rules and every step.
"""

import importlib
import os

from personadrift.interventions import guidance, none, repetition, split_softmax  # noqa: F401  (register)
from personadrift.interventions.base import METHODS, Method, register  # noqa: F401

for _module in filter(None, (m.strip() for m in os.environ.get("PERSONADRIFT_METHODS", "").split(","))):
    importlib.import_module(_module)
