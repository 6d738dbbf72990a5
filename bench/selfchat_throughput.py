"""Self-chat throughput: this project's lock-step engine against an upstream-style loop.

Both run in one process, on the same model, the same conversations and the same token budget
(every reply is exactly ``--tokens`` tokens: end-of-turn is suppressed until then):

* upstream-style: one conversation at a time, the whole history re-rendered and re-encoded by
  ``model.generate`` for every turn and every probe sample (what the released code does);
* engine: all conversations in lock-step, each bot's KV cache kept across turns, probes forked
  from the cached prefix, a round's probes in one batched call with the next user turn (the
  workflow's schedule).

Prints tokens per second of each and their ratio at shard sizes 8, 32 and 128 (the engine on the
model's configured linear kernel, ``--linear-kernel``; the upstream-style loop on torch's, as the
released code runs, and on the engine's kernel too, so the kernel's share is visible; one more
row runs the engine at the default shard on torch's kernel), the fraction
of the machine's matmul rate the engine reaches (a 2048x2048 float32 matmul measured in the same
run), and the engine's *linear floor*: the time the model's linear layers alone take for exactly
the forwards the engine ran (every forward's rows recorded, then all linear layers run once per
recorded shape, weights streamed from memory as in a real step; shapes above 512 rows are
scaled from 512, where the rate has levelled off). The engine's time over its floor is what
attention, sampling and bookkeeping add; the floor itself is the CPU's matmul at those batch
sizes. Run:
python bench/selfchat_throughput.py [--model-dir resources/models/smollm2-135m-instruct]
(default: the tiny random model).
"""

from __future__ import annotations

import argparse
import time

import personadrift  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import torch
from _common import add_model_args, load, matmul_rate  # noqa: E402  (bench/ is on sys.path)

from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.chat import ChatFormat
from personadrift.generation.dialog import agent_messages, probe_messages, user_messages
from personadrift.generation.engine import HFEngine
from personadrift.generation.linear_kernels import set_linear_kernel

AGENT = "You love playing tennis and bring it up whenever you can."
USER = "You are a curious traveller who always asks about food."
TOPICS = ["Is remote work better than office work?", "Should cities ban cars?", "Are cats better than dogs?",
          "Is breakfast the most important meal?", "Should homework be abolished?", "Is social media good for us?",
          "Are e-books better than paper books?", "Should everyone learn to cook?"]
PROBE = "What do you like to do on weekends?"


def run_engine(model, tok, convs, rounds, tokens, runs, probe_tokens, return_engine=False):
    """The workflow's schedule (``ShardRun.run``): a round's probes share a call with the next
    round's user turn; agent turns run alone."""
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=tokens, min_new_tokens=tokens), max_batch=256)
    hist = [[t] for t in convs]
    probes: list[GenRequest] = []
    for r in range(1, rounds + 1):
        if r > 1:
            users = [GenRequest(user_messages(USER, h), seed=i, key=f"{i}/u") for i, h in enumerate(hist)]
            out = eng.generate(probes + users)[len(probes):]
            for h, o in zip(hist, out):
                h.append(o[0])
        out = eng.generate([GenRequest(agent_messages(AGENT, h), seed=i, key=f"{i}/a") for i, h in enumerate(hist)])
        for h, o in zip(hist, out):
            h.append(o[0])
        probes = [GenRequest(probe_messages(AGENT, h, PROBE), seed=i, key=f"{i}/a", n=runs, persist=False,
                             max_new_tokens=probe_tokens) for i, h in enumerate(hist)]
    eng.generate(probes)
    return eng if return_engine else eng.stats.generated_tokens


def run_upstream(model, tok, convs, rounds, tokens, runs, probe_tokens):
    chat = ChatFormat(tok)
    generated = 0

    def reply(msgs, seed, n=tokens):
        nonlocal generated
        torch.manual_seed(seed)
        ids = torch.tensor([chat.render(msgs).ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9,
                             temperature=1.0, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
        generated += out.shape[1] - ids.shape[1]
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    for i, topic in enumerate(convs):
        h = [topic]
        for r in range(1, rounds + 1):
            if r > 1:
                h.append(reply(user_messages(USER, h), i))
            h.append(reply(agent_messages(AGENT, h), i))
            for k in range(runs):
                reply(probe_messages(AGENT, h, PROBE), i * 100 + k, probe_tokens)
    return generated


def model_flops_per_token(model) -> float:
    """Matmul FLOPs of one token's forward: 2 x the weights of every linear layer (output layer
    included; attention over the context is extra and not counted, so fractions are conservative)."""
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def default_selfchat() -> dict:
    """The default study's ``selfchat`` section (config.yaml): the benchmark's defaults."""
    from pathlib import Path

    import yaml

    config = Path(__file__).resolve().parents[1] / "config.yaml"
    return yaml.safe_load(config.read_text())["selfchat"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--shard-sizes", default="8,32,128", help="conversations advanced together by the engine")
    ap.add_argument("--upstream-conversations", type=int, default=None,
                    help="conversations for the upstream-style loop (default: the default shard size); its "
                         "rate does not depend on how many there are, it handles one at a time")
    sc = default_selfchat()
    ap.add_argument("--rounds", type=int, default=sc["turns"] // 2, help="default: the default config's")
    ap.add_argument("--tokens", type=int, default=sc["max_new_tokens"], help="reply tokens (default config's)")
    ap.add_argument("--probe-tokens", type=int, default=sc["probe_max_new_tokens"],
                    help="probe answer tokens (default config's)")
    ap.add_argument("--runs", type=int, default=2 * sc.get("runs", 1),
                    help="probe answers per round (default: the default config's two probes x runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and activations of both loops (FLOPs are compared with float32 matmul rates)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    model = model.to(getattr(torch, args.dtype))
    kernel = set_linear_kernel(model, args.linear_kernel)  # after the dtype: oneDNN is float32 only
    sizes = [int(x) for x in args.shard_sizes.split(",")]
    default = int(sc["shard_size"])
    n_up = args.upstream_conversations or default
    flops = model_flops_per_token(model)
    print(f"model={name} ({flops / 1e9:.3f} GFLOP/token in linear layers) rounds={args.rounds} "
          f"tokens/reply={args.tokens} probe answers={args.runs}x{args.probe_tokens} tokens threads={args.threads} default shard={default} "
          f"dtype={args.dtype} engine's linear kernel={kernel}")
    ref = matmul_rate(2048, 2048, 2048)
    print(f"machine: 2048x2048 float32 matmul {ref:.1f} GFLOP/s")

    convs = [TOPICS[i % len(TOPICS)] for i in range(max(sizes + [n_up]))]
    run_engine(model, tok, convs[:2], 1, 4, 1, 4)  # warm-up (allocator, kernels)
    # the upstream-style loop as the released code runs it: stock transformers, torch's kernel;
    # and, if the engine's kernel differs, with that kernel too (the engine's gain without it)
    upstream, upstream_mm = {}, {}
    for k in dict.fromkeys(["torch", kernel]):
        set_linear_kernel(model, k)
        mm = matmul_rate(2048, 2048, 2048)
        t = time.perf_counter()
        n = run_upstream(model, tok, convs[:n_up], args.rounds, args.tokens, args.runs, args.probe_tokens)
        upstream[k] = n / (time.perf_counter() - t)
        upstream_mm[k] = max(mm, matmul_rate(2048, 2048, 2048))
        print(f"upstream-style ({n_up} conversations, one at a time, {k} linears): {upstream[k]:.1f} tokens/s "
              f"(matmul {upstream_mm[k]:.1f} GFLOP/s around it)")
    print(f"{'shard':>5} {'linears':>7} {'tokens/s':>9} {'x upstream':>10} {'x same':>6} {'x per mm':>8} {'GFLOP/s':>8} "
          f"{'mm2048':>8} {'% of it':>7} {'time s':>7} {'floor s':>7} {'floor %':>7}")
    rows = [(size, kernel) for size in sizes]
    if kernel != "torch":  # the engine at the default shard with torch's kernel: the kernel's share
        rows.append((default, "torch"))
    for size, k in rows:
        set_linear_kernel(model, k)
        # measured just before and after each run (the best of both): load on a shared machine drifts
        mm = matmul_rate(2048, 2048, 2048)
        eng, dt, shapes = run_engine_timed(model, tok, convs[:size], args.rounds, args.tokens, args.runs,
                                           args.probe_tokens)
        mm = max(mm, matmul_rate(2048, 2048, 2048))
        floor = linear_floor(model, shapes)
        gen = eng.stats.generated_tokens / dt
        rate = (eng.stats.generated_tokens + eng.stats.prompt_tokens) * flops / dt / 1e9
        per_mm = (gen / mm) / (upstream["torch"] / upstream_mm["torch"])
        print(f"{size:>5} {k:>7} {gen:>9.1f} {gen / upstream['torch']:>9.1f}x {gen / upstream[k]:>5.1f}x {per_mm:>7.1f}x {rate:>8.1f} "
              f"{mm:>8.1f} {100 * rate / mm:>6.0f}% {dt:>7.1f} {floor:>7.1f} {100 * floor / dt:>6.0f}%")
    print("GFLOP/s counts every token the engine's forwards processed (generated and prompt), at the linear "
          "layers' 2 x weights FLOPs per token; x upstream compares generated tokens per second with the "
          "upstream-style loop on torch's kernel (the released code's), x same with that loop on the row's "
          "kernel; x per mm is x upstream with each side's tokens per second divided by the matmul rate "
          "measured around it (this machine's speed drifts by a quarter within minutes, and the loops do not "
          "run at the same moment); mm2048 is torch's default kernel; floor: the seconds the model's linear "
          "layers alone "
          "(on the row's kernel) need for the engine's forwards (floor % = share of the engine's time; the "
          "rest is attention, sampling and bookkeeping).")


def run_engine_timed(model, tok, convs, rounds, tokens, runs, probe_tokens):
    """(engine, seconds, shapes): ``shapes`` counts the (rows, new tokens, logits kept) of every
    forward the engine ran (recorded by a forward pre-hook; nothing in the model changes)."""
    shapes: dict[tuple[int, int, int], int] = {}

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        key = (ids.shape[0], ids.shape[1], int(kwargs.get("logits_to_keep") or ids.shape[1]))
        shapes[key] = shapes.get(key, 0) + 1

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        t = time.perf_counter()
        eng = run_engine(model, tok, convs, rounds, tokens, runs, probe_tokens, return_engine=True)
        dt = time.perf_counter() - t
    finally:
        hook.remove()
    return eng, dt, shapes


LEVEL_ROWS = 512  # from here on a linear layer's rate is flat (README, Benchmarks): scale linearly


def linear_floor(model, shapes: dict[tuple[int, int, int], int]) -> float:
    """Seconds the model's linear layers alone need for the recorded forwards: per forward, the
    body's layers at rows x new tokens and the output layer at rows x logits kept, each layer once
    in model order (so its weights come from memory, as in a step), the best of two runs."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    body = [m for m in linears if m is not head]
    cache: dict[tuple[int, bool], float] = {}

    def timed(layers, rows: int) -> float:
        key = (min(rows, LEVEL_ROWS), layers is body)
        if key not in cache:
            n = key[0]
            xs = {m.in_features: torch.randn(n, m.in_features, dtype=m.weight.dtype) for m in layers}
            best = float("inf")
            with torch.inference_mode():
                for _ in range(2):
                    t = time.perf_counter()
                    for m in layers:
                        m(xs[m.in_features])
                    best = min(best, time.perf_counter() - t)
            cache[key] = best
        return cache[key] * max(1.0, rows / LEVEL_ROWS)

    return sum(count * (timed(body, b * t) + timed([head], b * keep))
               for (b, t, keep), count in shapes.items())


if __name__ == "__main__":
    main()
