"""Self-chat throughput: this project's lock-step engine against an upstream-style loop.

Both run in one process, on the same model, the same conversations and the same token budget
(every reply is exactly ``--tokens`` tokens: end-of-turn is suppressed until then):

* upstream-style: one conversation at a time, the whole history re-rendered and re-encoded by
  ``model.generate`` for every turn and every probe sample (what the released code does);
* engine: all conversations in lock-step, one batched call per turn, each bot's KV cache kept
  across turns, probes forked from the cached prefix.

Prints tokens per second of each and their ratio. Run:  python bench/selfchat_throughput.py
[--model-dir resources/models/smollm2-135m-instruct] (default: the tiny random model).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import add_model_args, load  # noqa: E402  (bench/ is on sys.path)

from personadrift.generation.api import GenRequest, Sampling
from personadrift.generation.chat import ChatFormat
from personadrift.generation.dialog import agent_messages, probe_messages, user_messages
from personadrift.generation.engine import HFEngine

AGENT = "You love playing tennis and bring it up whenever you can."
USER = "You are a curious traveller who always asks about food."
TOPICS = ["Is remote work better than office work?", "Should cities ban cars?", "Are cats better than dogs?",
          "Is breakfast the most important meal?", "Should homework be abolished?", "Is social media good for us?",
          "Are e-books better than paper books?", "Should everyone learn to cook?"]
PROBE = "What do you like to do on weekends?"


def run_engine(model, tok, convs, rounds, tokens, runs):
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=tokens, min_new_tokens=tokens), max_batch=256)
    hist = [[t] for t in convs]
    for r in range(1, rounds + 1):
        if r > 1:
            out = eng.generate([GenRequest(user_messages(USER, h), seed=i, key=f"{i}/u") for i, h in enumerate(hist)])
            for h, o in zip(hist, out):
                h.append(o[0])
        out = eng.generate([GenRequest(agent_messages(AGENT, h), seed=i, key=f"{i}/a") for i, h in enumerate(hist)])
        for h, o in zip(hist, out):
            h.append(o[0])
        eng.generate([GenRequest(probe_messages(AGENT, h, PROBE), seed=i, key=f"{i}/a", n=runs, persist=False)
                      for i, h in enumerate(hist)])
    return eng.stats.generated_tokens


def run_upstream(model, tok, convs, rounds, tokens, runs):
    chat = ChatFormat(tok)
    generated = 0

    def reply(msgs, seed):
        nonlocal generated
        torch.manual_seed(seed)
        ids = torch.tensor([chat.render(msgs).ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9,
                             temperature=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
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
                reply(probe_messages(AGENT, h, PROBE), i * 100 + k)
    return generated


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, name = load(args, layers=4, hidden=256, heads=8, kv_heads=2)
    convs = [TOPICS[i % len(TOPICS)] for i in range(args.conversations)]
    print(f"model={name} conversations={args.conversations} rounds={args.rounds} tokens/reply={args.tokens} "
          f"probe runs={args.runs} threads={args.threads}")
    results = {}
    for label, fn in (("upstream-style", run_upstream), ("engine", run_engine)):
        t = time.perf_counter()
        n = fn(model, tok, convs, args.rounds, args.tokens, args.runs)
        dt = time.perf_counter() - t
        results[label] = n / dt
        print(f"{label:>15}: {n} tokens in {dt:.1f} s = {n / dt:.1f} tokens/s")
    print(f"ratio engine / upstream-style: {results['engine'] / results['upstream-style']:.1f}x")


if __name__ == "__main__":
    main()
