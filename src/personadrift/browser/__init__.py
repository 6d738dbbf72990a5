"""A static transcript and judge browser for a study: read any dialog behind a number.

``build_browser`` (builder.py) writes ``index.html`` plus lazily loaded data files from the
transcripts, score tables and persona pool (data.py reads them); the page itself lives in
``template/`` (HTML, CSS, JavaScript; no dependencies, no network).
"""

from personadrift.browser.builder import build_browser, weight

__all__ = ["build_browser", "weight"]
