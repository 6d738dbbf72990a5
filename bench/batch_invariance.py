"""The cost of `model.batch_invariant`: the engine's speed with a batch-invariant forward against
the ordinary one.

The engine's seconds per conversation with the model as `batch_invariant: false` runs it (linear
layers on the config's kernel, fused SDPA over the padded batch) and as `batch_invariant: true`
runs it (oneDNN's packed matmul at every row count, attention on each row's real keys and
queries: row by row in a prefill, a plain decode step's rows in one blocked call:
generation/batch_invariance.py), in one process, the two alternated (ordinary, invariant,
ordinary, ...: each invariant run between two ordinary runs, so a steady drift of the
machine's speed cancels), at the workflow's thread count and schedule in the default config's
shape, with the machine's 2048x2048 float32 matmul rate before and after.

    python bench/batch_invariance.py [--model-dir resources/models/smollm2-135m-instruct] [--threads 1]

The schedule is the throughput benchmark's (``selfchat_throughput.run_engine``). The two modes
sample different texts (the ordinary forward's rows depend on their batch-mates in the last
bits): this measures speed only; tests/test_batch_invariance.py checks the invariance.
"""

from __future__ import annotations

import argparse
import copy


def main() -> None:
    from pathlib import Path

    import yaml

    from personadrift import numerics

    # the numerics config.yaml's model jobs run with (model.cpu_numerics), set before torch loads, as
    # engines_cpu.py does: on an AVX-512 CPU oneDNN's native kernels are not batch-invariant, and
    # the invariant model refuses to build
    model = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["model"]
    numerics.apply(model.get("cpu_numerics", numerics.DEFAULT))
    from _common import add_model_args
    from selfchat_throughput import add_shape_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--conversations", type=int, default=None, help="batch height (default: the config's shard)")
    ap.add_argument("--pairs", type=int, default=2, help="invariant runs, each between two ordinary runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the workflow's model jobs: 1)")
    add_shape_args(ap)
    args = ap.parse_args()

    import torch  # after selfchat_throughput: personadrift set the OpenMP wait policy before torch loaded

    from _common import load, race, shape_runner
    from personadrift.generation.batch_invariance import batch_invariant_of, set_batch_invariant
    from personadrift.generation.linear_kernels import linear_kernel_of
    from selfchat_throughput import TOPICS, default_selfchat, run_engine

    torch.set_num_threads(args.threads)
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    n = args.conversations or int(default_selfchat()["shard_size"])
    plain, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    invariant = copy.deepcopy(plain)
    set_batch_invariant(invariant, args.linear_kernel)
    models = {"ordinary": plain, "invariant": invariant}
    convs = [TOPICS[i % len(TOPICS)] for i in range(n)]

    race(shape_runner(run_engine, tok, TOPICS, convs, args), models, "ordinary", "invariant", args.pairs,
         f"model {name}, {args.threads} thread(s), {n} conversations, {args.rounds} rounds, "
         f"{args.tokens}-token replies, {args.runs} probe answers of {args.probe_tokens} tokens a round; "
         f"ordinary: linear kernel {linear_kernel_of(plain)}, batch-invariant {batch_invariant_of(plain)}; "
         f"invariant: linear kernel {linear_kernel_of(invariant)}, batch-invariant {batch_invariant_of(invariant)}")


if __name__ == "__main__":
    main()
