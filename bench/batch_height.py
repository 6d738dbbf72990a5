"""Taller batches per model job: would several settings' conversations in one job be faster?

The settings of the default study that differ only in their messages (none, control,
repetition) could share one model job and one batch: 36 conversations a batch instead of 12.
This measures what that would buy, at the workflow's thread count and schedule: the engine's
seconds per conversation at each batch height (``--heights``, default 12 and 36), the heights
alternated (12, 36, 12, ...: each taller run between two runs of the first height, so a steady
drift of the machine's speed cancels), and the ratio of the first height's mean to each other
height, with the machine's 2048x2048 float32 matmul rate before and after.

    python bench/batch_height.py [--model-dir resources/models/smollm2-135m-instruct] [--threads 1]

The schedule is the throughput benchmark's (``selfchat_throughput.run_engine``: the workflow's
merged schedule, replies of fixed length) in the default config's shape (rounds, reply and probe
lengths, two probe answers a round: the agent's persona probe and the user-persona probe, each
sampled ``runs`` times), as ``selfchat_throughput.py`` and ``job_threads.py`` run it.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    from _common import add_model_args
    from selfchat_throughput import add_shape_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--heights", default="12,36", help="conversations per batch, the first is the reference")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the workflow's model jobs: 1)")
    add_shape_args(ap)
    args = ap.parse_args()

    import torch  # after selfchat_throughput: personadrift set the OpenMP wait policy before torch loaded

    from _common import load, matmul_rate
    from selfchat_throughput import TOPICS, run_engine

    torch.set_num_threads(args.threads)
    heights = [int(h) for h in args.heights.split(",")]
    if len(heights) < 2 or min(heights) < 1:
        raise SystemExit("--heights needs at least two positive batch heights")
    model, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)

    def per_conversation(n: int) -> float:
        convs = [TOPICS[i % len(TOPICS)] for i in range(n)]
        t = time.perf_counter()
        run_engine(model, tok, convs, args.rounds, args.tokens, args.runs, args.probe_tokens)
        return (time.perf_counter() - t) / n

    run_engine(model, tok, TOPICS[:2], 1, 4, 1, 4)  # warm-up
    rate = matmul_rate(2048, 2048, 2048)
    print(f"model {name}, {args.threads} thread(s), {args.rounds} rounds, {args.tokens}-token replies, "
          f"{args.runs} probe answers of {args.probe_tokens} tokens a round; matmul {rate:.1f} GFLOP/s before")
    first, runs = heights[0], {h: [] for h in heights}
    runs[first].append(per_conversation(first))
    print(f"height {first}: {runs[first][-1]:.4g} s per conversation", flush=True)
    for h in heights[1:]:
        runs[h].append(per_conversation(h))
        print(f"height {h}: {runs[h][-1]:.4g} s per conversation", flush=True)
        runs[first].append(per_conversation(first))
        print(f"height {first}: {runs[first][-1]:.4g} s per conversation", flush=True)
    after = matmul_rate(2048, 2048, 2048)
    ref = statistics.mean(runs[first])
    print(f"matmul {after:.1f} GFLOP/s after")
    for h in heights[1:]:
        print(f"height {h} against {first}: {ref / runs[h][0]:.2f}x per conversation "
              f"({runs[h][0]:.4g} s against the mean {ref:.4g} s of {len(runs[first])} runs)")


if __name__ == "__main__":
    main()
