"""oneDNN's linear layers with pre-packed weights against the plain weights, side by side.

``OneDNNLinear`` (``generation/linear_kernels.py``) hands oneDNN each layer's weight packed once
into its blocked layout; given the plain ``[out, in]`` weight, oneDNN reorders it on every call.
Measured in one run, at ``--threads``:

* every linear layer of the model once, in model order (a step's weight traffic), at each of
  ``--rows``: milliseconds with the plain and with the packed weights (the best of ``--repeats``
  alternated timings), their ratio, and whether the two products are bitwise equal (one row keeps
  the plain weight in ``OneDNNLinear``, so that row compares what packing would have given);
* the engine at the default shard exactly as ``selfchat_throughput.py`` runs it (the workflow's
  schedule, every reply its full length), ``--pairs`` alternated runs with plain and with packed
  weights: generated tokens per second, each pair's ratio, and whether the texts are the same;
* the machine's 2048x2048 float32 matmul rate before and after.

python bench/linear_packing.py [--model-dir resources/models/smollm2-135m-instruct] [--threads 1]
(default: the tiny random model, on oneDNN although ``auto`` would keep its narrow layers on torch's kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

import personadrift  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from _common import add_model_args, load, matmul_rate  # noqa: E402  (bench/ is on sys.path)
from personadrift.generation import linear_kernels
from selfchat_throughput import TOPICS, default_selfchat, run_engine


@contextlib.contextmanager
def plain_weights():
    """oneDNN on the plain weights (reordered inside every call): the kernel before packing."""
    packed_of = linear_kernels._Pack.of
    linear_kernels._Pack.of = lambda self, weight: weight
    try:
        yield
    finally:
        linear_kernels._Pack.of = packed_of


def layer_stack(model, rows: int, repeats: int) -> tuple[float, float, bool]:
    """(plain ms, packed ms, bitwise equal) for all linear layers once at ``rows`` rows."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packs = [linear_kernels._Pack().of(m.weight) for m in layers]
    xs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
    best = {"plain": float("inf"), "packed": float("inf")}
    with torch.inference_mode():
        equal = all(torch.equal(linear_kernels._onednn_linear(xs[m.in_features], m.weight, m.bias),
                                linear_kernels._onednn_linear(xs[m.in_features], p, m.bias))
                    for m, p in zip(layers, packs))
        for _ in range(repeats):
            for label, weights in (("plain", [m.weight for m in layers]), ("packed", packs)):
                t = time.perf_counter()
                for m, w in zip(layers, weights):
                    linear_kernels._onednn_linear(xs[m.in_features], w, m.bias)
                best[label] = min(best[label], time.perf_counter() - t)
    return 1e3 * best["plain"], 1e3 * best["packed"], equal


def selfchat(model, tok, convs: list[str], args, sc: dict) -> tuple[list[str], int, float]:
    """(texts, generated tokens, seconds) of the throughput benchmark's engine run (its schedule
    and reply lengths)."""
    texts: list[str] = []
    t = time.perf_counter()
    n = run_engine(model, tok, convs, args.rounds, sc["max_new_tokens"], 2 * sc.get("runs", 1),
                   sc["probe_max_new_tokens"], texts=texts)
    return texts, n, time.perf_counter() - t


def main():
    sc = default_selfchat()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--threads", type=int, default=1, help="default: the workflow's model jobs' (resources.threads)")
    ap.add_argument("--rows", default="1,12,36,128", help="batch sizes for the layer stack")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=2, help="engine runs with plain and with packed weights")
    ap.add_argument("--conversations", type=int, default=int(sc["shard_size"]), help="default: the default shard")
    ap.add_argument("--rounds", type=int, default=sc["turns"] // 2)
    args = ap.parse_args()
    if args.pairs < 1 or args.repeats < 1:
        ap.error("--pairs and --repeats must be at least 1")
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    if not linear_kernels.onednn_available():
        sys.exit("this torch build has no oneDNN linear: nothing to compare")
    model, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    linear_kernels.set_linear_kernel(model, "onednn")
    print(f"model={name} threads={args.threads} (weights packed for {linear_kernels.PACK_ROWS_HINT} rows)")
    print(f"machine before: 2048x2048 float32 matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s")

    print("all linear layers once, in model order (best of alternated timings):")
    print(f"{'rows':>5} {'plain ms':>9} {'packed ms':>9} {'x':>6} {'bitwise equal':>13}")
    for rows in (int(r) for r in args.rows.split(",")):
        plain, packed, equal = layer_stack(model, rows, args.repeats)
        print(f"{rows:>5} {plain:>9.1f} {packed:>9.1f} {plain / packed:>5.2f}x {'yes' if equal else 'no':>13}")

    print(f"engine, {args.conversations} conversations x {args.rounds} rounds (default schedule), alternated:")
    convs = [TOPICS[i % len(TOPICS)] for i in range(args.conversations)]
    run_engine(model, tok, convs[:2], 1, 4, 1, 4)  # warm-up: allocator, kernels, packs
    ratios, same = [], True
    for i in range(args.pairs):
        with plain_weights():
            texts_plain, n_plain, s_plain = selfchat(model, tok, convs, args, sc)
        texts_packed, n_packed, s_packed = selfchat(model, tok, convs, args, sc)
        same = same and texts_plain == texts_packed
        ratios.append((n_packed / s_packed) / (n_plain / s_plain))
        print(f"  pair {i + 1}: plain {n_plain / s_plain:.1f} tokens/s, packed {n_packed / s_packed:.1f}: "
              f"{ratios[-1]:.2f}x")
    print(f"  ratio {statistics.median(ratios):.2f}x (median of {len(ratios)} pairs, range {min(ratios):.2f}-"
          f"{max(ratios):.2f}x); texts {'identical' if same else 'DIFFERENT'} with plain and packed weights")
    print(f"machine after: 2048x2048 float32 matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
