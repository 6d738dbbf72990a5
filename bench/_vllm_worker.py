"""The vLLM side of bench/engines_cpu.py: one persistent process in the vLLM environment
(.venv-vllm), so the engine starts once and every timed pass measures its steady state.

    .venv-vllm/bin/python bench/_vllm_worker.py WEIGHTS '{"eager": false, "kvcache_gib": 3}'

Protocol, one JSON object a line: the worker writes ``{"load_s": ..., "warm_up_s": ...}`` once
the engine is built and has run two short conversations, then answers each shape read from
stdin (``convs``, ``rounds``, ``tokens``, ``runs``, ``probe_tokens``, ``top_k``) with
``{"tokens": ..., "seconds": ...}``, the prefix cache emptied first (each HF engine pass starts
with an empty prefix store too). Everything else the process prints goes to stderr. vLLM spawns
processes: the engine is built under ``__main__``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(weights: str, options: dict) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's logs and prints: stderr, never the protocol's stream
    sys.stdout = sys.stderr

    from personadrift.generation.api import Sampling
    from personadrift.generation.vllm_engine import VLLMEngine
    from selfchat_throughput import TOPICS, schedule  # bench/ is sys.path[0]

    t0 = time.perf_counter()
    engine = VLLMEngine(weights, dtype="float32", enforce_eager=bool(options.get("eager")),
                        cpu_kvcache_gib=int(options.get("kvcache_gib", 3)), max_num_seqs=options.get("max_num_seqs"),
                        # a step budget above any pass's prompts (the engine schedules prefills whole)
                        max_num_batched_tokens=int(options.get("max_batched_tokens", 65536)))
    load_s = time.perf_counter() - t0

    def run(shape: dict) -> dict:
        engine.sampling = Sampling(max_new_tokens=shape["tokens"], min_new_tokens=shape["tokens"],
                                   top_k=shape.get("top_k", 0))
        engine.llm.reset_prefix_cache()
        before = engine.stats.generated_tokens
        t = time.perf_counter()
        schedule(engine, shape["convs"], shape["rounds"], shape["runs"], shape["probe_tokens"])
        return {"tokens": engine.stats.generated_tokens - before, "seconds": time.perf_counter() - t}

    warm = run({"convs": TOPICS[:2], "rounds": 1, "tokens": 4, "runs": 1, "probe_tokens": 4})
    protocol.write(json.dumps({"load_s": load_s, "warm_up_s": warm["seconds"]}) + "\n")
    for line in sys.stdin:
        if line.strip():
            protocol.write(json.dumps(run(json.loads(line))) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
