"""Time per generated token: split-softmax (k=0.5, all layers) vs plain SDPA, same model.

    python bench/split_softmax_speed.py [--model-dir D [--gguf-file F]] [--prompt-tokens 512]
                                        [--new-tokens 64] [--repeats 5] [--k 0.5] [--threads 1]

Greedy decoding with a KV cache, forced to exactly --new-tokens tokens; the two implementations
alternate and the minimum over --repeats is reported (robust to other load). Goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import add_model_args, dialog, load  # noqa: E402  (bench/ is on sys.path)
from personadrift.interventions.split_softmax import SplitSoftmaxHook


def main() -> None:
    from personadrift.attention import attention_context

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--k", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, _ = load(args)
    ids, pm = dialog(tok, args.prompt_tokens)
    am = torch.ones_like(ids)
    n = args.new_tokens
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def run(impl: str) -> float:
        model.set_attn_implementation(impl)
        t = time.perf_counter()
        with torch.no_grad():
            if impl == "split_softmax":
                with attention_context(pm, reweight=SplitSoftmaxHook(k=args.k)):
                    out = model.generate(input_ids=ids, attention_mask=am, **kw)
            else:
                out = model.generate(input_ids=ids, attention_mask=am, **kw)
        dt = time.perf_counter() - t
        assert out.shape[1] == ids.shape[1] + n
        return dt / n

    run("sdpa"), run("split_softmax")  # warm-up
    times = {"sdpa": [], "split_softmax": []}
    for _ in range(args.repeats):
        for impl in times:
            times[impl].append(run(impl))
    med = {k: min(v) for k, v in times.items()}  # min: robust to other load on a shared machine
    for k, v in med.items():
        print(f"{k:14s} {1000 * v:8.2f} ms/token  (runs: {', '.join(f'{1000 * x:.2f}' for x in times[k])})")
    print(f"ratio split_softmax/sdpa = {med['split_softmax'] / med['sdpa']:.3f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
