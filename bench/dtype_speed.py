"""bfloat16 against float32: what `model.dtype: bfloat16_if_native` would buy the default study.

The engine's seconds per conversation in float32 (the model's linear layers on the config's
kernel, as the workflow runs them) and in bfloat16 (torch's kernel: oneDNN's packed path is
float32 only), in one process, the two dtypes alternated (float32, bfloat16, float32, ...: each
bfloat16 run between two float32 runs, so a steady drift of the machine's speed cancels), at the
workflow's thread count and schedule in the default config's shape, with the machine's 2048x2048
float32 matmul rate before and after, and whether this CPU multiplies bfloat16 natively (where it
does not, `bfloat16_if_native` runs float32 and this ratio does not apply).

    python bench/dtype_speed.py [--model-dir resources/models/smollm2-135m-instruct] [--threads 1]

The schedule is the throughput benchmark's (``selfchat_throughput.run_engine``: the workflow's
merged schedule, replies of fixed length, two probe answers a round), as ``batch_height.py`` runs
it. bfloat16 texts differ from float32's and depend on batch-mates (docs/methods.md, Engine): this
measures speed only.
"""

from __future__ import annotations

import argparse
import copy


def main() -> None:
    from _common import add_model_args
    from selfchat_throughput import add_shape_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--conversations", type=int, default=None, help="batch height (default: the config's shard)")
    ap.add_argument("--pairs", type=int, default=2, help="bfloat16 runs, each between two float32 runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the workflow's model jobs: 1)")
    add_shape_args(ap)
    args = ap.parse_args()

    import torch  # after selfchat_throughput: personadrift set the OpenMP wait policy before torch loaded

    from _common import load, race, shape_runner
    from personadrift.generation.linear_kernels import linear_kernel_of, set_linear_kernel
    from personadrift.generation.models import native_bf16
    from selfchat_throughput import TOPICS, default_selfchat, run_engine

    torch.set_num_threads(args.threads)
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    n = args.conversations or int(default_selfchat()["shard_size"])
    f32, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    bf16 = copy.deepcopy(f32).to(torch.bfloat16)
    set_linear_kernel(bf16, args.linear_kernel)  # after the dtype: only float32 layers can use oneDNN
    models = {"float32": f32, "bfloat16": bf16}
    convs = [TOPICS[i % len(TOPICS)] for i in range(n)]

    race(shape_runner(run_engine, tok, TOPICS, convs, args), models, "float32", "bfloat16", args.pairs,
         f"model {name}, {args.threads} thread(s), {n} conversations, {args.rounds} rounds, "
         f"{args.tokens}-token replies, {args.runs} probe answers of {args.probe_tokens} tokens a round; "
         "linear kernel: float32 "
         f"{linear_kernel_of(f32)}, bfloat16 {linear_kernel_of(bf16)}; native bfloat16 on this CPU: "
         f"{native_bf16('cpu')}")


if __name__ == "__main__":
    main()
