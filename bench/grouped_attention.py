"""Self-chat speed with grouped keys as they are ("grouped_sdpa", the engine's default on a
grouped-query model) against a reference, on one model, alternated in one process:

* ``--reference sdpa``: transformers' own, which repeats a layer's keys and values for every
  query head in each masked prefill and packs the query heads per KV head when decoding;
* ``--reference repeat``: keys and values repeated in every forward, decoding included (what a
  masked decode step costs where nothing packs the queries).

    python bench/grouped_attention.py [--model-dir D] [--reference sdpa|repeat] [--conversations 16]
                                      [--rounds 2] [--tokens 32] [--history 200] [--pairs 3] [--threads 1]

Each run is a fresh engine's dialog of ``--rounds`` rounds: each round appends about
``--history`` tokens of history to every conversation (a masked prefill after its cached prefix),
then decodes ``--tokens`` tokens (greedy, forced to the full length). The matmul rate is printed
before and after. First, the attention call alone at the model's head shape and the workload's
late prefill and decode shapes, grouped against repeated, alternated.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from _common import TURNS, add_model_args, load, matmul_rate, race  # noqa: E402  (bench/ is on sys.path)
from personadrift.attention.grouped import NAME, query_groups
from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.engine import HFEngine


def repeating_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA over keys and values repeated for every query head, in every forward."""
    n_rep = query.shape[1] // key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), attn_mask=attention_mask, scale=scaling,
        is_causal=attention_mask is None and query.shape[2] > 1)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("repeat", repeating_attention)
AttentionMaskInterface.register("repeat", sdpa_mask)


def attention_op(model, rows: int, q: int, kv: int, pairs: int) -> None:
    """The attention call alone at the model's head shape, alternated: grouped keys as they are
    (``enable_gqa``; one query per row: packed per KV head) against keys repeated per query head,
    with a left-padded causal mask; median of 5 timings each, per pair."""
    import statistics
    import time

    cfg = model.config
    h, hk = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    n_rep = h // hk
    query, key, value = torch.randn(rows, h, q, d), torch.randn(rows, hk, kv, d), torch.randn(rows, hk, kv, d)
    mask = torch.ones(rows, 1, q, kv, dtype=torch.bool).tril(kv - q)
    mask[1:, :, :, :20] = False  # left padding
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if q == 1:
        grouped = lambda: sdpa(query.reshape(rows, hk, n_rep, d), key, value, attn_mask=mask)  # noqa: E731
    else:
        grouped = lambda: sdpa(query, key, value, attn_mask=mask, enable_gqa=True)  # noqa: E731
    repeated = lambda: sdpa(query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), attn_mask=mask)  # noqa: E731

    def median(f):
        f()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    ratios = [median(repeated) / median(grouped) for _ in range(pairs)]
    kind = "decode step" if q == 1 else "prefill"
    print(f"attention op, {kind} ({rows} rows, {q} queries over {kv} keys): grouped {statistics.mean(ratios):.2f}x "
          f"the repeated speed (pairs {', '.join(f'{r:.2f}x' for r in ratios)})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--reference", choices=["sdpa", "repeat"], default="sdpa")
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--history", type=int, default=200, help="tokens of history added per round (about)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, name = load(args, heads=8, kv_heads=2)
    groups = query_groups(model.config)
    if groups == 1:
        raise SystemExit(f"{name} has one query head per KV head: nothing to compare")
    filler = " ".join(TURNS)
    words = max(1, args.history // max(1, len(tok.encode(filler))))

    def run(mode: str, warm_up: bool) -> int:
        n, rounds, tokens = (2, 1, 4) if warm_up else (args.conversations, args.rounds, args.tokens)
        model.set_attn_implementation(mode)
        eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False),
                       max_batch=max(n, 1))
        model.set_attn_implementation(mode)  # the engine switches sdpa to grouped_sdpa: undone for the reference
        msgs = [[{"role": "system", "content": f"You are persona {i}."}] for i in range(n)]
        for _ in range(rounds):
            for i, m in enumerate(msgs):
                m.append({"role": "user", "content": f"{i}: " + " ".join([filler] * words)})
            out = eng.generate([GenRequest(m, seed=i, key=f"c{i}") for i, m in enumerate(msgs)])
            for m, t in zip(msgs, out):
                m.append({"role": "assistant", "content": t[0]})
        return n

    print(f"matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s before the attention op", flush=True)
    history = args.history * args.rounds
    for q, kv in ((args.history, history + args.tokens), (1, history + 2 * args.tokens)):
        attention_op(model, args.conversations, q, kv, args.pairs)
    ref = args.reference
    race(run, {ref: ref, NAME: NAME}, ref, NAME, args.pairs,
         f"{name}: {groups} query heads per KV head, {args.conversations} conversations x {args.rounds} rounds "
         f"(+~{args.history} tokens, {args.tokens} decoded per round), {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
