"""personadrift: measure and control persona drift in language-model dialogs.

Data flows one way: model -> transcripts -> scores -> tables -> figures.
"""

import os

# OpenMP threads that spin while waiting (libgomp's default) make small matrix products up to
# 20x slower whenever the cores are shared (a busy laptop, a shared node, several jobs): a
# 576x1536 linear at 32 rows ran at 4-7 GFLOP/s on 2 spinning threads and at 60-70 with
# PASSIVE, measured side by side. OpenMP reads this when torch is first imported, so it is set
# here, before any torch import; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
