"""Threads per model job: one self-chat job on 2 threads against two jobs on 1 thread each.

On a 2-core machine Snakemake (``--cores 2``) runs either one model job of ``resources.threads:
2`` at a time or two jobs of 1 thread side by side. At the small batches of a default shard the
linear layers do not scale to two threads, so two single-thread jobs may do more work together.
This prints, measured in one run: the engine's generated tokens per second at the default shard
size in one 2-thread process, the sum over two 1-thread processes started together, their ratio,
and the machine's 2048x2048 float32 matmul rate.

    python bench/job_threads.py [--model-dir resources/models/smollm2-135m-instruct] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_job(args) -> None:
    """The worker: one shard of the default schedule at ``--threads``; prints tokens/s as JSON."""
    import torch

    import personadrift  # noqa: F401  (sets the OpenMP wait policy before torch loads)
    from _common import load
    from selfchat_throughput import TOPICS, default_selfchat, run_engine

    torch.set_num_threads(args.threads)
    model, tok, _ = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    sc = default_selfchat()
    convs = [TOPICS[i % len(TOPICS)] for i in range(int(sc["shard_size"]))]
    run_engine(model, tok, convs[:2], 1, 4, 1, 4)  # warm-up
    t = time.perf_counter()
    n = run_engine(model, tok, convs, args.rounds, sc["max_new_tokens"], 2 * sc.get("runs", 1),
                   sc["probe_max_new_tokens"])
    print(json.dumps({"tokens_per_s": n / (time.perf_counter() - t)}))


def launch(args, threads: int, copies: int) -> float:
    """Start ``copies`` workers together; the sum of their rates."""
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--rounds", str(args.rounds),
           "--linear-kernel", args.linear_kernel]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed with exit code {p.returncode}")
        rates.append(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])
    return sum(rates)


def main() -> None:
    from _common import add_model_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternations of the two arrangements")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return one_job(args)
    import torch

    from _common import matmul_rate

    torch.set_num_threads(2)
    print(f"machine: 2048x2048 float32 matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s (2 threads)")
    one, two = [], []
    for _ in range(args.repeats):  # alternated, so drifting load hits both arrangements alike
        one.append(launch(args, threads=2, copies=1))
        two.append(launch(args, threads=1, copies=2))
        print(f"  one job x 2 threads: {one[-1]:.1f} tokens/s; two jobs x 1 thread: {two[-1]:.1f} tokens/s")
    print(f"best: one job x 2 threads {max(one):.1f} tokens/s, two jobs x 1 thread {max(two):.1f} tokens/s "
          f"(sum), ratio {max(two) / max(one):.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
