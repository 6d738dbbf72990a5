"""Reproducing a run: a study's outputs manifest (``manifest.py``), a run compared with
another (``compare.py``), and verdicts over seeds (``robustness.py``)."""
