"""Self-chat throughput: this project's lock-step engine against an upstream-style loop.

Both run in one process, on the same model, the same conversations and the same token budget
(every reply is exactly ``--tokens`` tokens: end-of-turn is suppressed until then):

* upstream-style: one conversation at a time, the whole history re-rendered and re-encoded by
  ``model.generate`` for every turn and every probe sample (what the released code does);
* engine: all conversations in lock-step, each bot's KV cache kept across turns, probes forked
  from the cached prefix, a round's probes in one batched call with the next user turn (the
  workflow's schedule).

The ratio at the default shard is measured side by side: ``--pairs`` upstream-style runs (torch's
linear kernel, as the released code runs) alternate with engine runs, each between two of them,
and each pair's ratio takes the mean of its two engine runs, so a steady drift of the machine's
speed (a quarter within minutes on the project machine) cancels out in each pair; the
median, the range and the pooled ratio are printed, with the matmul rate measured around every run.

Then prints tokens per second and the ratio at each of ``--shard-sizes`` (8, 12, 32 and 128; the
default shard's row is its last alternated run, not another one), the engine on the
model's configured linear kernel, ``--linear-kernel``; against the pooled upstream-style runs and
one more on the engine's kernel, so the kernel's share is visible (one more
row runs the engine at the default shard on torch's kernel); the fraction
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
import statistics
import sys
import time
from dataclasses import dataclass

import torch

import personadrift  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from _common import add_model_args, load, matmul_rate  # noqa: E402  (bench/ is on sys.path)
from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.chat import ChatFormat
from personadrift.generation.dialog import agent_messages, probe_messages, user_messages
from personadrift.generation.linear_kernels import set_linear_kernel
from personadrift.runtime.factory import engine_on

AGENT = "You love playing tennis and bring it up whenever you can."
USER = "You are a curious traveller who always asks about food."
TOPICS = ["Is remote work better than office work?", "Should cities ban cars?", "Are cats better than dogs?",
          "Is breakfast the most important meal?", "Should homework be abolished?", "Is social media good for us?",
          "Are e-books better than paper books?", "Should everyone learn to cook?"]
PROBE = "What do you like to do on weekends?"


@dataclass
class Run:
    """One timed run: generated tokens, seconds, the matmul rate measured just before and after it
    (the machine's speed drifts: printed beside every rate), and what the run returned."""

    tokens: int
    seconds: float
    mm_before: float
    mm_after: float
    result: object

    @classmethod
    def timed(cls, fn) -> Run:
        """Run ``fn``: it returns generated tokens, or (engine, seconds, shapes) from ``run_engine_timed``."""
        before = matmul_rate(2048, 2048, 2048)
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        if isinstance(result, tuple):
            eng, dt, _ = result
            tokens = eng.stats.generated_tokens
        else:
            tokens = result
        return cls(tokens, dt, before, matmul_rate(2048, 2048, 2048), result)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def mm(self) -> float:
        return max(self.mm_before, self.mm_after)

    @property
    def mm_text(self) -> str:
        return f"{self.mm_before:.0f}-{self.mm_after:.0f}"

    @staticmethod
    def pooled(runs: list[Run]) -> float:
        return sum(r.tokens for r in runs) / sum(r.seconds for r in runs)


def run_engine(model, tok, convs, rounds, tokens, runs, probe_tokens, return_engine=False, texts=None, top_k=0):
    """The workflow's schedule (``ShardRun.run``): a round's probes share a call with the next
    round's user turn; agent turns run alone. Every reply is appended to ``texts`` if given."""
    eng = engine_on(model, tok, sampling=Sampling(max_new_tokens=tokens, min_new_tokens=tokens, top_k=top_k),
                    max_batch=256)
    schedule(eng, convs, rounds, runs, probe_tokens, texts)
    return eng if return_engine else eng.stats.generated_tokens


def schedule(eng, convs, rounds, runs, probe_tokens, texts=None) -> None:
    """``run_engine``'s calls on any engine with ``generate`` (the HF engine, the vLLM engine): the
    replies' budget is the engine's sampling's, the probes' ``probe_tokens``."""
    hist = [[t] for t in convs]
    replies = texts if texts is not None else []
    probes: list[GenRequest] = []
    for r in range(1, rounds + 1):
        if r > 1:
            users = [GenRequest(user_messages(USER, h), seed=i, key=f"{i}/u") for i, h in enumerate(hist)]
            out = eng.generate(probes + users)
            replies += [x for o in out for x in o]
            for h, o in zip(hist, out[len(probes):]):
                h.append(o[0])
        out = eng.generate([GenRequest(agent_messages(AGENT, h), seed=i, key=f"{i}/a") for i, h in enumerate(hist)])
        replies += [o[0] for o in out]
        for h, o in zip(hist, out):
            h.append(o[0])
        probes = [GenRequest(probe_messages(AGENT, h, PROBE), seed=i, key=f"{i}/a", n=runs, persist=False,
                             max_new_tokens=probe_tokens) for i, h in enumerate(hist)]
    replies += [x for o in eng.generate(probes) for x in o]


def run_upstream(model, tok, convs, rounds, tokens, runs, probe_tokens):
    """The released code's loop: one conversation at a time, its whole history encoded anew for
    every reply, ``generate`` sampling as the paper did (top-k 50 beside top-p 0.9: its
    pipeline kept transformers' default top-k), with the input on the model's first device."""
    chat = ChatFormat(tok)
    generated = 0
    device = model.get_input_embeddings().weight.device

    def reply(msgs, seed, n=tokens):
        nonlocal generated
        torch.manual_seed(seed)
        ids = torch.tensor([chat.render(msgs).ids], device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50, top_p=0.9,
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


def add_shape_args(ap) -> None:
    """--rounds, --tokens, --probe-tokens and --runs: the dialog's shape, the default config's unless
    given (``run_engine``'s arguments of the same names)."""
    sc = default_selfchat()
    ap.add_argument("--rounds", type=int, default=sc["turns"] // 2, help="default: the default config's")
    ap.add_argument("--tokens", type=int, default=sc["max_new_tokens"], help="reply tokens (default config's)")
    ap.add_argument("--probe-tokens", type=int, default=sc["probe_max_new_tokens"],
                    help="probe answer tokens (default config's)")
    ap.add_argument("--runs", type=int, default=2 * sc.get("runs", 1),
                    help="probe answers per round (default: the default config's two probes x runs)")


def default_selfchat() -> dict:
    """The default study's ``selfchat`` section (config.yaml): the benchmark's defaults."""
    from pathlib import Path

    import yaml

    config = Path(__file__).resolve().parents[1] / "config.yaml"
    return yaml.safe_load(config.read_text())["selfchat"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--shard-sizes", default="8,12,32,128", help="conversations advanced together by the engine")
    ap.add_argument("--upstream-conversations", type=int, default=2,
                    help="conversations of each upstream-style run (its rate does not depend on how many: "
                         "it handles one at a time); each pair runs other ones")
    ap.add_argument("--pairs", type=int, default=3,
                    help="upstream-style runs at the default shard, each between two engine runs")
    add_shape_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and activations of both loops (FLOPs are compared with float32 matmul rates)")
    args = ap.parse_args()
    if args.pairs < 1 or args.upstream_conversations < 1:
        ap.error("--pairs and --upstream-conversations must be at least 1: the ratio needs an upstream-style run")
    sys.stdout.reconfigure(line_buffering=True)  # each line as it is measured, also into a file
    torch.set_num_threads(args.threads)
    model, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    model = model.to(getattr(torch, args.dtype))
    kernel = set_linear_kernel(model, args.linear_kernel)  # after the dtype: oneDNN is float32 only
    sizes = [int(x) for x in args.shard_sizes.split(",")]
    default = int(default_selfchat()["shard_size"])
    n_up = args.upstream_conversations
    flops = model_flops_per_token(model)
    print(f"model={name} ({flops / 1e9:.3f} GFLOP/token in linear layers) rounds={args.rounds} "
          f"tokens/reply={args.tokens} probe answers={args.runs}x{args.probe_tokens} tokens threads={args.threads} "
          f"default shard={default} "
          f"dtype={args.dtype} engine's linear kernel={kernel}")
    ref = matmul_rate(2048, 2048, 2048)
    print(f"machine: 2048x2048 float32 matmul {ref:.1f} GFLOP/s")

    n_conv = max(sizes + [default, n_up * args.pairs])
    convs = [TOPICS[i % len(TOPICS)] for i in range(n_conv)]
    run_engine(model, tok, convs[:2], 1, 4, 1, 4)  # warm-up (allocator, kernels)

    def engine_run(size: int, k: str) -> Run:
        set_linear_kernel(model, k)
        return Run.timed(lambda: run_engine_timed(model, tok, convs[:size], args.rounds, args.tokens, args.runs,
                                                  args.probe_tokens))

    def upstream_run(first: int, k: str) -> Run:
        set_linear_kernel(model, k)
        return Run.timed(lambda: run_upstream(model, tok, convs[first:first + n_up], args.rounds, args.tokens,
                                              args.runs, args.probe_tokens))

    # The ratio at the default shard, side by side: upstream-style runs (torch's kernel, as the released
    # code runs) alternate with engine runs, each between two of them, so a drift of the machine's speed
    # (a quarter within minutes here) slows both sides of a pair alike instead of biasing the ratio.
    engine = [engine_run(default, kernel)]
    upstream = []
    for i in range(args.pairs):
        upstream.append(upstream_run(i * n_up, "torch"))
        engine.append(engine_run(default, kernel))
    ratios = []
    print(f"side by side at the default shard ({default} conversations, engine on {kernel}'s kernel; upstream-style "
          f"loop over {n_up} conversations, one at a time, torch's kernel), alternated:")
    for i, u in enumerate(upstream):
        before, after = engine[i], engine[i + 1]
        ratio = (before.rate + after.rate) / 2 / u.rate
        ratios.append(ratio)
        print(f"  pair {i + 1}: engine {before.rate:.1f} tokens/s before (matmul {before.mm_text}), upstream-style "
              f"{u.rate:.1f} (matmul {u.mm_text}), engine {after.rate:.1f} after (matmul {after.mm_text}): "
              f"{ratio:.1f}x")
    up_rate = Run.pooled(upstream)
    eng_rate = Run.pooled(engine)
    print(f"  ratio {statistics.median(ratios):.1f}x (median of {len(ratios)} pairs, range "
          f"{min(ratios):.1f}-{max(ratios):.1f}x); pooled: engine {eng_rate:.1f} tokens/s over {len(engine)} runs, "
          f"upstream-style {up_rate:.1f} over {len(upstream)}, {eng_rate / up_rate:.1f}x")
    up_same = up_rate
    if kernel != "torch":  # the upstream-style loop on the engine's kernel: the kernel's share of the ratio
        u = upstream_run(0, kernel)
        up_same = u.rate
        print(f"upstream-style on {kernel}'s kernel (one run, {n_up} conversations): {u.rate:.1f} tokens/s "
              f"(matmul {u.mm_text})")

    print(f"{'shard':>5} {'linears':>7} {'tokens/s':>9} {'x upstream':>10} {'x same':>6} {'GFLOP/s':>8} "
          f"{'mm2048':>8} {'% of it':>7} {'time s':>7} {'floor s':>7} {'floor %':>7}")
    rows = [(size, kernel) for size in sizes]
    if kernel != "torch":  # the engine at the default shard with torch's kernel: the kernel's share
        rows.append((default, "torch"))
    for size, k in rows:
        run = engine[-1] if (size, k) == (default, kernel) else engine_run(size, k)
        eng, dt, shapes = run.result
        floor = linear_floor(model, shapes)
        gen = eng.stats.generated_tokens / dt
        rate = (eng.stats.generated_tokens + eng.stats.prompt_tokens) * flops / dt / 1e9
        same = up_same if k == kernel else up_rate
        print(f"{size:>5} {k:>7} {gen:>9.1f} {gen / up_rate:>9.1f}x {gen / same:>5.1f}x {rate:>8.1f} "
              f"{run.mm:>8.1f} {100 * rate / run.mm:>6.0f}% {dt:>7.1f} {floor:>7.1f} {100 * floor / dt:>6.0f}%")
    print("GFLOP/s counts every token the engine's forwards processed (generated and prompt), at the linear "
          "layers' 2 x weights FLOPs per token; x upstream compares generated tokens per second with the "
          "pooled upstream-style runs on torch's kernel (the released code's), x same with that loop on the "
          "row's kernel; the default shard's row is its last alternated run; mm2048: torch's default kernel, "
          "the best of the rates measured just before and after the row; floor: the seconds the model's linear "
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


# from here on a linear layer's rate is flat (docs/measurements.md, Where a step's time goes): scale linearly
LEVEL_ROWS = 512


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
