"""Helpers shared by the benchmarks: model loading, a long dialog with its prompt span, and the
machine's matmul rate (printed beside every speed ratio)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import personadrift  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from personadrift.generation.chat import ChatFormat

SYSTEM = "You love playing tennis and talk about it whenever you can."
TURNS = [
    "What is your favourite food? I think pizza is the best food in the world.",
    "Tell me about your hobbies. I like reading books, hiking and painting.",
    "Do you prefer cats or dogs? Why? Cats are calm; dogs are loyal friends!",
    "The quick brown fox jumps over the lazy dog.",
]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=None,
                   help="a model folder fetched by the workflow (manifest.json), a Hugging Face folder, "
                        "or a folder holding --gguf-file (default: the tiny model, built in a temp dir)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model-dir, if any")
    from personadrift.generation.linear_kernels import KERNELS

    p.add_argument("--linear-kernel", default="auto", choices=KERNELS,
                   help="the model's linear-layer kernel, as model.linear_kernel (default: auto, the config's)")


def load(args, **tiny_kwargs):
    """(model, tokenizer, name) for the benchmark's --model-dir, with its --linear-kernel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personadrift.generation.linear_kernels import set_linear_kernel

    d = args.model_dir
    kernel = args.linear_kernel
    if d and (Path(d) / "manifest.json").exists():
        from personadrift.generation.models import load_model

        lm = load_model(d, {"linear_kernel": kernel})
        return lm.model, lm.tokenizer, lm.manifest.get("name", d)
    name = d or "tiny"
    if d is None:
        from personadrift.generation.tiny import build_tiny_model

        d = str(build_tiny_model(tempfile.mkdtemp(prefix="pd-bench-"), **tiny_kwargs))
    kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(d, **kw)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kw).eval()
    set_linear_kernel(model, kernel)
    return model, tok, name


def dialog(tok, n_tokens: int):
    """input_ids [1, n_tokens] of a growing dialog, and the mask of its system-prompt tokens."""
    chat = ChatFormat(tok)
    msgs = [{"role": "system", "content": SYSTEM}]
    i = 0
    while True:
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": TURNS[i % len(TURNS)]})
        rendered = chat.render(msgs, add_generation_prompt=False)
        i += 1
        if len(rendered.ids) >= n_tokens:
            break
    ids = torch.tensor([rendered.ids[:n_tokens]])
    pm = torch.zeros_like(ids, dtype=torch.bool)
    s, e = rendered.prompt_span
    pm[0, s:e] = True
    return ids, pm


def matmul_rate(rows: int, inner: int, cols: int, min_time: float = 0.5) -> float:
    """GFLOP/s of a float32 [rows, inner] x [inner, cols] product (as ``F.linear``, the op the
    model's layers run) on this machine, now: the best of repeated ~20 ms timings, the least
    disturbed by other load."""
    x, w = torch.randn(rows, inner), torch.randn(cols, inner)
    flop = 2.0 * rows * inner * cols
    reps = max(1, int(0.02 * 50e9 // flop))  # ~20 ms at 50 GFLOP/s
    torch.nn.functional.linear(x, w)
    best, spent = float("inf"), 0.0
    while spent < min_time:
        t = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        dt = time.perf_counter() - t
        best, spent = min(best, dt / reps), spent + dt
    return flop / best / 1e9


def alternate(measure, reference: str, candidate: str, pairs: int) -> tuple[dict[str, list[float]], list[float]]:
    """Run ``measure(mode)`` as reference, (candidate, reference) x ``pairs``, printing each
    result, so every candidate run sits between two reference runs and a steady drift of the
    machine's speed cancels. Returns the runs per mode and, per candidate run, the mean of its two
    neighbours divided by it (the candidate's speed relative to the reference)."""
    runs, ratios = alternate_modes(measure, reference, [candidate], pairs)
    return runs, ratios[candidate]


def alternate_modes(measure, reference: str, candidates: list[str], pairs: int,
                    unit: str = "s per conversation") -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """:func:`alternate` with several candidates: reference, then (each candidate, reference) x
    ``pairs``, so every candidate run sits between two reference runs. ``measure`` returns a time
    (``unit``); each candidate's ratios are the mean of its neighbours divided by it."""
    runs: dict[str, list[float]] = {m: [] for m in [reference, *candidates]}
    ratios: dict[str, list[float]] = {c: [] for c in candidates}
    previous = None
    for mode in [reference] + [m for _ in range(pairs) for c in candidates for m in (c, reference)]:
        runs[mode].append(measure(mode))
        print(f"{mode}: {runs[mode][-1]:.4g} {unit}", flush=True)
        if mode == reference and previous is not None:  # closes the candidate run just before it
            ratios[previous].append((runs[reference][-2] + runs[reference][-1]) / 2 / runs[previous][-1])
        previous = mode if mode != reference else None
    return runs, ratios


def shape_runner(run_engine, tok, topics: list, convs: list, args):
    """``run(model, warm_up)`` for :func:`race`: the bench's conversations at its shape
    (``args.rounds``, ``tokens``, ``runs``, ``probe_tokens``), or two short ones to warm up; returns
    how many conversations ran."""
    def run(model, warm_up: bool) -> int:
        if warm_up:
            run_engine(model, tok, topics[:2], 1, 4, 1, 4)
            return 2
        run_engine(model, tok, convs, args.rounds, args.tokens, args.runs, args.probe_tokens)
        return len(convs)

    return run


def race(run, models: dict, reference: str, candidate: str, pairs: int, header: str) -> None:
    """The speed of two models side by side in one process: ``run(model)`` once on each as a
    warm-up, then the header with the matmul rate before, the alternated runs (:func:`alternate`),
    the rate after, and the candidate's speed relative to the reference (means, and each pair)."""
    for m in models.values():
        run(m, warm_up=True)
    print(f"{header}; matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s before")

    def per_conversation(mode: str) -> float:
        t = time.perf_counter()
        n = run(models[mode], warm_up=False)
        return (time.perf_counter() - t) / n

    runs, ratios = alternate(per_conversation, reference, candidate, pairs)
    print(f"matmul {matmul_rate(2048, 2048, 2048):.1f} GFLOP/s after")
    ref, cand = statistics.mean(runs[reference]), statistics.mean(runs[candidate])
    print(f"{candidate} against {reference}: {ref / cand:.2f}x the speed per conversation "
          f"(means {cand:.4g} s and {ref:.4g} s; pairs {', '.join(f'{r:.2f}x' for r in ratios)})")
