"""Pinned against native CPU numerics: what `model.cpu_numerics: pinned_avx2` costs, and whether it
changes the texts on this machine.

The engine's seconds per conversation with the instruction sets pinned at AVX2 (torch, oneDNN,
MKL and numpy; numerics.py) and with each library's own pick, each in a fresh process (the libraries
read their settings when they load), alternated (native, pinned, native, ...: each pinned run
between two native runs, so a steady drift of the machine's speed cancels), at the workflow's
thread count and schedule in the default config's shape. Each process prints its 2048x2048
float32 matmul rate beside its speed, the capability torch ran at and a hash of every text it
generated. On a CPU without AVX-512 both modes run the same kernels: the ratio is then noise and
the texts must be identical; on one with AVX-512 the ratio is the cost of pinning.

    python bench/cpu_numerics.py [--model-dir resources/models/smollm2-135m-instruct] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("native", "pinned_avx2")


def worker(args) -> None:
    """One run in this fresh process under ``--mode`` (applied before anything loaded torch): prints
    a JSON line."""
    import torch

    from personadrift.numerics import record

    if record()["mode"] != args.mode:
        raise SystemExit(f"the worker's numerics are not {args.mode}: torch loaded before they were set")
    from _common import load, matmul_rate
    from selfchat_throughput import TOPICS, default_selfchat, run_engine

    torch.set_num_threads(args.threads)
    model, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    n = args.conversations or int(default_selfchat()["shard_size"])
    convs = [TOPICS[i % len(TOPICS)] for i in range(n)]
    run_engine(model, tok, TOPICS[:2], 1, 4, 1, 4)  # warm-up
    texts: list[str] = []
    t = time.perf_counter()
    run_engine(model, tok, convs, args.rounds, args.tokens, args.runs, args.probe_tokens, texts=texts)
    seconds = (time.perf_counter() - t) / n
    print(json.dumps({"mode": args.mode, "model": name, "seconds": seconds,
                      "matmul": matmul_rate(2048, 2048, 2048), "numerics": record(),
                      "texts": hashlib.sha256(json.dumps(texts).encode()).hexdigest(), "n_texts": len(texts)}))


def launch(args, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--threads", str(args.threads),
           "--rounds", str(args.rounds), "--tokens", str(args.tokens), "--probe-tokens", str(args.probe_tokens),
           "--runs", str(args.runs), "--linear-kernel", args.linear_kernel]
    if args.conversations:
        cmd += ["--conversations", str(args.conversations)]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    from personadrift.numerics import unpinned_environ

    # native means each library's own pick: no setting inherited from this shell
    env = unpinned_environ()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{mode} worker failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from _common import add_model_args
    from selfchat_throughput import add_shape_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--conversations", type=int, default=None, help="batch height (default: the config's shard)")
    ap.add_argument("--pairs", type=int, default=2, help="pinned runs, each between two native runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the workflow's model jobs: 1)")
    add_shape_args(ap)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="native", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for mode in ["native"] + ["pinned_avx2", "native"] * args.pairs:
        r = launch(args, mode)
        runs[mode].append(r)
        num = r["numerics"]
        print(f"{mode}: {r['seconds']:.4g} s per conversation, matmul {r['matmul']:.1f} GFLOP/s, "
              f"torch capability {num['cpu_capability']}, texts {r['texts'][:12]}", flush=True)
    first = runs["native"][0]
    print(f"model {first['model']}, {args.threads} thread(s), {first['n_texts']} texts a run; pinned: "
          + ", ".join(f"{k}={runs['pinned_avx2'][0]['numerics'][k]}" for k in
                      ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "NPY_DISABLE_CPU_FEATURES")))
    native = [r["seconds"] for r in runs["native"]]
    pinned = [r["seconds"] for r in runs["pinned_avx2"]]
    pairs = [(native[i] + native[i + 1]) / 2 / p for i, p in enumerate(pinned)]
    print(f"pinned against native: {statistics.mean(native) / statistics.mean(pinned):.2f}x per conversation "
          f"(means {statistics.mean(pinned):.4g} s and {statistics.mean(native):.4g} s; "
          f"pairs {', '.join(f'{p:.2f}x' for p in pairs)})")
    hashes = {m: {r["texts"] for r in rs} for m, rs in runs.items()}
    if all(len(h) == 1 for h in hashes.values()) and hashes["native"] == hashes["pinned_avx2"]:
        print("texts identical pinned and native")
    else:
        print(f"texts differ: native {sorted(hashes['native'])}, pinned {sorted(hashes['pinned_avx2'])}")


if __name__ == "__main__":
    if "--worker" in sys.argv:  # a worker's mode goes into the environment before any import loads torch
        from personadrift.numerics import apply

        apply(sys.argv[sys.argv.index("--mode") + 1])
    sys.path.insert(0, str(HERE))
    main()
