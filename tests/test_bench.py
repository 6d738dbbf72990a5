"""The self-chat throughput benchmark, run end to end on the tiny model: its side-by-side ratio is
computed from the runs it prints (each upstream-style run between two engine runs), and its
roofline table has a row per shard size. Speeds themselves are never asserted."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys

from support.workflow import REPO

RATE = r"([0-9.]+)"


def test_throughput_bench_alternates_the_loops_and_reports_their_ratio():
    cmd = [sys.executable, "bench/selfchat_throughput.py", "--shard-sizes", "2,3", "--rounds", "2",
           "--tokens", "3", "--probe-tokens", "2", "--pairs", "2", "--upstream-conversations", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    pairs = re.findall(rf"pair (\d): engine {RATE} tokens/s before .*?upstream-style {RATE} .*?engine {RATE} after "
                       rf".*?: {RATE}x", out)
    assert [p[0] for p in pairs] == ["1", "2"], out
    before, upstream, after, ratio = ([float(p[i]) for p in pairs] for i in range(1, 5))
    assert after[0] == before[1], "pair 2 starts from the engine run that ended pair 1"
    for b, u, a, r in zip(before, upstream, after, ratio):
        assert abs((b + a) / 2 / u - r) <= 0.051 + 0.001 * r
    median = float(re.search(rf"ratio {RATE}x \(median of 2 pairs", out).group(1))
    assert abs(median - statistics.median(ratio)) <= 0.051
    for shard in (2, 3):
        assert re.search(rf"^\s+{shard}\s+torch\s+{RATE}\s+{RATE}x\s+{RATE}x .*%$", out, re.M), out

