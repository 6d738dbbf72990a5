"""GPU readiness: every code path of a self-chat shard on a random-weight Llama-2-shaped model,
then the numbers that size a paper run, all in one process. No download.

    python bench/gpu_check.py                     # Llama-2-7B's shape, bfloat16, one GPU
    python bench/gpu_check.py --shape 70b         # 13B / 70B shapes sharded over the GPUs present
    python bench/gpu_check.py --device cpu --tiny # a tiny shape on the CPU (what the tests run)

1. Code paths, each on a small shard with the real ``ShardRun``: dialog and probes (round 0
   included) under ``none``, split-softmax, repetition (with the Llama-2 template's fallback to
   ``user_prefix``) and guidance; the attention recorder on one stored conversation; MMLU letter
   scoring through the engine. The tokenizer is the tiny model's with the Llama-2-chat format
   written for this project (its text is gibberish: these are code paths, not results).
2. Engine throughput (tokens/s) at shard sizes 8, 32 and 128 against the upstream-style loop
   (one conversation at a time, history re-encoded each turn; bench/selfchat_throughput.py), whose
   rate does not depend on the shard size and is measured once on the smallest shard.
3. Split-softmax's time per generated token against SDPA (greedy, KV cache, 512-token prompt).
4. Peak GPU memory, and the bfloat16 matmul rate.
5. The expected wall time of one paper setting (200 conversations, 8 rounds, 2 probe samples of
   the agent's and the user persona's probe, 400-token replies) on one node of 8 GPUs, from the
   measured engine rate. Measured on short dialogs: late rounds with 4k-token prompts run slower,
   so the estimate is a lower bound, and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers

SHAPES = {  # Llama-2 shapes (hidden, intermediate, layers, heads, kv heads); tiny for CPU tests
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8),
}
PAPER = dict(conversations=200, rounds=8, probe_samples=2, probe_kinds=2, reply_tokens=400, gpus_per_node=8)


def build_model(shape: str, device: str, dtype: torch.dtype, tokenizer):
    """A random-weight Llama of ``shape``, materialised layer by layer on its device (a 70B model
    never exists whole in host memory); several GPUs share it through accelerate's device map."""
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000 if shape != "tiny" else len(tokenizer), max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    model = model.to(dtype)
    n_gpu = torch.cuda.device_count() if device == "cuda" else 0
    if n_gpu > 1:
        device_map = infer_auto_device_map(model, no_split_module_classes=["LlamaDecoderLayer"], dtype=dtype,
                                           max_memory={i: torch.cuda.get_device_properties(i).total_memory * 0.85
                                                       for i in range(n_gpu)})
    else:
        device_map = {"": 0 if device == "cuda" else "cpu"}
    gen = torch.Generator().manual_seed(0)
    for name, dev in device_map.items():
        module = model.get_submodule(name) if name else model
        module.to_empty(device=dev)
        for pname, p in module.named_parameters():
            with torch.no_grad():
                if "norm" in pname:
                    p.fill_(1.0)
                else:  # N(0, 0.02) as Llama's initialiser, drawn on the CPU in chunks
                    flat = p.view(-1)
                    for i in range(0, flat.numel(), 1 << 26):
                        chunk = flat[i:i + (1 << 26)]
                        chunk.copy_(torch.randn(chunk.numel(), generator=gen) * 0.02)
    for mod in model.modules():  # rotary frequencies are computed buffers: rebuild them where they live
        if type(mod).__name__.endswith("RotaryEmbedding"):
            where = next((b.device for b in mod.buffers()), torch.device("cpu"))
            where = where if where.type != "meta" else torch.device(device_map.get("", "cpu"))
            fresh = type(mod)(config=config)
            mod.inv_freq = fresh.inv_freq.to(where)
            mod.original_inv_freq = fresh.original_inv_freq.to(where)
    model.tie_weights()
    if n_gpu > 1:
        model = dispatch_model(model, device_map=device_map)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), device_map


def code_paths(model, tok, args, log) -> dict:
    """Every code path of a shard: the real ShardRun under each setting family, the recorder, MMLU."""
    from personadrift.analysis.attention import record_conversation
    from personadrift.benchmark.personas import load_personas, load_topics
    from personadrift.capability.mmlu import EngineScorer, Question, evaluate
    from personadrift.config import validate_config
    from personadrift.generation.api import Sampling
    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.engine import HFEngine
    from personadrift.generation.selfchat import (
        ShardRun,
        persona_record,
        plan_conversation,
    )
    from personadrift.interventions.settings import expand_settings

    repo = Path(__file__).resolve().parents[1]
    cfg = validate_config({
        "model": {"name": "gpu-check", "source": "local", "path": "unused", "max_context": 4096},
        "selfchat": {"turns": 4, "runs": 2, "max_new_tokens": args.tokens, "probe_max_new_tokens": args.tokens,
                     "top_k": 50, "context_policy": "drop_oldest"},
        "interventions": {"none": {"method": "none"}, "split": {"method": "split_softmax", "k": [0.5]},
                          "repeat": {"method": "repetition", "every": [1]}, "cfg": {"method": "cfg", "guidance_scale": [1.5]}},
    })
    personas = load_personas(sorted((repo / "personas/benchmark").glob("*.yaml")))
    topics = load_topics(repo / "personas/topics.yaml")
    plans = json.loads(json.dumps([plan_conversation(s, 0, personas, topics) for s in range(args.path_conversations)]))
    chat = ChatFormat(tok)
    sampling = Sampling(top_k=50, max_new_tokens=args.tokens)
    out, stored = {}, None
    for setting in expand_settings(cfg["interventions"]):
        t = time.perf_counter()
        engine = HFEngine(model, tok, chat=chat, sampling=sampling, intervention=setting.engine_intervention(),
                          max_batch=256)
        with tempfile.TemporaryDirectory() as ckpt:
            recs = ShardRun(engine, config=cfg, setting=setting, plans=plans, checkpoint_dir=Path(ckpt),
                            provenance={}).run()
        model.set_attn_implementation("sdpa")
        rounds = sorted({p["round"] for r in recs for p in r["probes"]})
        assert all(r["complete"] and len(r["history"]) == 4 for r in recs) and rounds == [0, 1, 2], rounds
        out[setting.name] = {"seconds": time.perf_counter() - t,
                             "repetition_placement": recs[0]["provenance"]["protocol"]["repetition_placement"]}
        log(f"  shard under {setting.name:<10} ok  ({out[setting.name]['seconds']:.1f} s)")
        stored = stored or recs[0]
    t = time.perf_counter()
    table = record_conversation(model, chat, stored)
    out["attention_recorder"] = {"rows": len(table), "seconds": time.perf_counter() - t}
    log(f"  attention recorder ok  ({len(table)} rows)")
    qs = [Question(i, "astronomy", f"Question {i}?", ("one", "two", "three", "four"), "ABCD"[i % 4]) for i in range(8)]
    engine = HFEngine(model, tok, chat=chat, sampling=sampling, max_batch=256)
    scorer = EngineScorer(engine, share_key="mmlu/shared")  # the workflow's MMLU scorer, both forms
    system = persona_record(personas[0])["system_prompt"]
    t = time.perf_counter()
    scorer.prime(system)
    df = evaluate(qs, system_prompt=system, letter_logprobs=scorer.letters, cloze_logprobs=scorer.cloze)
    out["mmlu"] = {"questions": len(df), "seconds": time.perf_counter() - t,
                   "forms": [f for f in ("letter", "cloze") if f"{f}_correct" in df]}
    log(f"  MMLU letter and cloze scoring ok  ({len(df)} questions)")
    return out


def throughput(model, tok, args, log) -> dict:
    from selfchat_throughput import TOPICS, run_engine, run_upstream

    rates = {}
    for n in args.shards:
        convs = [TOPICS[i % len(TOPICS)] for i in range(n)]
        t = time.perf_counter()
        tokens = run_engine(model, tok, convs, args.rounds, args.tokens, 2, args.tokens)
        rates[n] = tokens / (time.perf_counter() - t)
        log(f"  engine, shard of {n:>3}: {rates[n]:10.1f} tokens/s")
    n = min(args.shards)
    convs = [TOPICS[i % len(TOPICS)] for i in range(n)]
    t = time.perf_counter()
    tokens = run_upstream(model, tok, convs, args.rounds, args.tokens, 2, args.tokens)
    upstream = tokens / (time.perf_counter() - t)
    log(f"  upstream-style loop:  {upstream:10.1f} tokens/s (one conversation at a time; any shard size)")
    for k, v in rates.items():
        log(f"  ratio engine/upstream at {k:>3}: {v / upstream:.1f}x")
    return {"engine_tokens_per_s": rates, "upstream_tokens_per_s": upstream}


def split_cost(model, tok, args, device) -> dict:
    from _common import dialog

    from personadrift.attention import (
        attention_context,
        split_softmax,  # noqa: F401  (registers the function)
    )

    ids, pm = dialog(tok, args.prompt_tokens)
    ids, pm = ids.to(device), pm.to(device)
    n = args.tokens
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def run(impl):
        model.set_attn_implementation(impl)
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            if impl == "split_softmax":
                with attention_context(pm, split_k=0.5):
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            else:
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        sync(device)
        return (time.perf_counter() - t) / n

    run("sdpa"), run("split_softmax")  # warm-up
    best = {impl: min(run(impl) for _ in range(3)) for impl in ("sdpa", "split_softmax")}
    model.set_attn_implementation("sdpa")
    return {"sdpa_ms_per_token": 1000 * best["sdpa"], "split_ms_per_token": 1000 * best["split_softmax"],
            "ratio": best["split_softmax"] / best["sdpa"]}


def matmul_rate(device, dtype, size) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t) / 1e12


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def paper_estimate(rate: float, gpus_per_replica: int) -> dict:
    """Hours for one setting of the paper on one 8-GPU node, from an engine rate (tokens/s)."""
    p = PAPER
    per_conv = p["rounds"] * p["reply_tokens"]  # agent turns
    per_conv += (p["rounds"] - 1) * p["reply_tokens"]  # user-bot turns
    per_conv += (p["rounds"] + 1) * p["probe_kinds"] * p["probe_samples"] * p["reply_tokens"]  # probes, round 0 too
    tokens = p["conversations"] * per_conv
    replicas = max(1, p["gpus_per_node"] // gpus_per_replica)
    return {"tokens": tokens, "replicas": replicas, "hours": tokens / (rate * replicas) / 3600}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="7b", choices=["7b", "13b", "70b"])
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (CPU tests)")
    ap.add_argument("--shards", default="8,32,128", help="shard sizes for the throughput comparison")
    ap.add_argument("--tokens", type=int, default=64, help="reply length in the measurements")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--path-conversations", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    args.shards = [int(x) for x in args.shards.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny")
    shape = "tiny" if args.tiny else args.shape
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    log = print
    from transformers import AutoTokenizer

    from personadrift.generation.tiny import LLAMA2_TEMPLATE, build_tiny_model

    tok = AutoTokenizer.from_pretrained(build_tiny_model(tempfile.mkdtemp(prefix="pd-gpu-check-"), template=LLAMA2_TEMPLATE))
    where = (torch.cuda.get_device_name(0) + f" x{torch.cuda.device_count()}") if args.device == "cuda" else "CPU"
    log(f"gpu_check: shape={shape} dtype={str(dtype).split('.')[-1]} device={where} torch={torch.__version__}")
    t = time.perf_counter()
    model, device_map = build_model(shape, args.device, dtype, tok)
    gpus = sorted({v for v in device_map.values() if isinstance(v, int)}) or [None]
    log(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters in {time.perf_counter() - t:.0f} s "
        f"on {len(gpus) if gpus != [None] else 0} GPU(s)")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"device": where, "shape": shape, "dtype": str(dtype)}
    log("1. code paths of a shard")
    result["paths"] = code_paths(model, tok, args, log)
    log("2. throughput")
    result["throughput"] = throughput(model, tok, args, log)
    log("3. split-softmax vs SDPA")
    result["split_softmax"] = split_cost(model, tok, args, "cuda" if args.device == "cuda" else "cpu")
    s = result["split_softmax"]
    log(f"  sdpa {s['sdpa_ms_per_token']:.2f} ms/token, split-softmax {s['split_ms_per_token']:.2f} ms/token, "
        f"ratio {s['ratio']:.2f}")
    log("4. memory and matmul rate")
    if args.device == "cuda":
        peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**30
        result["peak_gpu_memory_gib"] = peak
        log(f"  peak GPU memory {peak:.1f} GiB (all GPUs)")
    else:
        log("  peak GPU memory: n/a on the CPU")
    result["matmul_tflops"] = matmul_rate("cuda" if args.device == "cuda" else "cpu", dtype,
                                          8192 if args.device == "cuda" else 256)
    log(f"  {str(dtype).split('.')[-1]} matmul: {result['matmul_tflops']:.2f} TFLOP/s")
    log("5. one paper setting on one 8-GPU node")
    rates = result["throughput"]["engine_tokens_per_s"]
    near = min(rates, key=lambda n: abs(n - 25))  # the paper config's shard size is 25
    est = paper_estimate(rates[near], gpus_per_replica=max(1, len(gpus) if gpus != [None] else 1))
    result["paper_setting"] = {**est, "rate_at_shard": near}
    log(f"  {est['tokens']:,} tokens at {rates[near]:.0f} tokens/s per replica (shard {near}) x {est['replicas']} "
        f"replicas: about {est['hours']:.1f} h (a lower bound: measured on {args.rounds}-round dialogs; "
        "4k-token prompts in late rounds decode slower)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
