"""Headless Chromium from the command line: the rendered DOM of a page, or a screenshot.

Used by the browser's tests and its page-weight benchmark (bench/browser_weight.py). Plain ``chromium`` CLI (Debian
package), a fresh profile per call, no network services, so it also runs as root in a
container.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def _run(exe: str, args: list[str], url: str, timeout: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix="pd-chromium-") as profile:
        t0 = time.perf_counter()
        proc = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}) on {url}:\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def dump_dom(exe: str, url: str, *, budget_ms: int | None = None, timeout: float = 180) -> tuple[str, float]:
    """The DOM once the page has loaded, and the wall-clock seconds of the whole Chromium process.

    Data scripts a view adds while the page loads delay its load event, so lazily loaded views
    are complete too. No virtual time by default: it would make the page's ``performance.now()``
    (its own render timing) virtual.
    """
    args = ([f"--virtual-time-budget={budget_ms}"] if budget_ms else []) + ["--dump-dom"]
    return _run(exe, args, url, timeout)


def screenshot(exe: str, url: str, out, *, size=(1400, 1000), budget_ms: int = 5000, timeout: float = 180) -> Path:
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(exe, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
               f"--screenshot={out}"], url, timeout)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot for {url}")
    return out
