"""Headless Chromium from the command line: the rendered DOM of a page, a screenshot, or the
page's text once it shows what a test waits for.

Used by the browser's tests, the Inspect viewer test and the browser's page-weight benchmark
(bench/browser_weight.py). Plain ``chromium`` CLI (Debian package), a fresh profile per call, no
network services (the DevTools protocol over a pipe, not a port), so it also runs as root in a
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


def wait_for_text(exe: str, url: str, needles: list[str], *, timeout: float = 120) -> str:
    """The page's visible text (``document.body.innerText``) once it holds every one of ``needles``.

    For pages that keep loading after their load event (an app fetching data, unpacking it in
    workers), where a DOM dump at load or after a virtual-time budget comes too early. Drives
    Chromium over its DevTools pipe (fd 3 in, fd 4 out; no port, no websocket) and polls the text;
    raises TimeoutError with the last text seen if the needles never all appear.
    """
    import json
    import os

    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="pd-chromium-") as profile:
        def child_fds():  # the DevTools pipe: Chromium reads fd 3 and writes fd 4 (copied out of the
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)  # way first: either may be 3 or 4 here)
            os.dup2(r, 3)
            os.dup2(w, 4)

        proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        reader = os.fdopen(from_chrome_r, "rb")
        writer = os.fdopen(to_chrome_w, "wb")
        buffered = b""
        ids = iter(range(1, 1 << 30))

        def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
            nonlocal buffered
            msg = {"id": next(ids), "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            writer.write(json.dumps(msg).encode() + b"\0")
            writer.flush()
            while True:  # replies and events, each ended by a NUL byte
                while b"\0" not in buffered:
                    chunk = os.read(reader.fileno(), 1 << 16)
                    if not chunk:
                        raise RuntimeError(f"chromium closed its DevTools pipe on {url}")
                    buffered += chunk
                raw, buffered = buffered.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == msg["id"]:
                    if "error" in reply:
                        raise RuntimeError(f"DevTools {method}: {reply['error']}")
                    return reply["result"]

        text = ""
        try:
            deadline = time.monotonic() + timeout
            page = None
            while page is None and time.monotonic() < deadline:
                targets = call("Target.getTargets")["targetInfos"]
                page = next((t for t in targets if t["type"] == "page"), None)
            if page is None:
                raise TimeoutError(f"chromium opened no page for {url}")
            attached = call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})
            session = attached["sessionId"]
            while time.monotonic() < deadline:
                got = call("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                                "returnByValue": True}, session)
                text = got.get("result", {}).get("value") or ""
                if all(n in text for n in needles):
                    return text
                time.sleep(0.5)
            raise TimeoutError(f"{url} did not show {needles} within {timeout} s; it showed:\n{text[-3000:]}")
        finally:
            try:
                call("Browser.close")
            except (RuntimeError, OSError):
                pass
            writer.close()
            reader.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
