"""GPU rehearsal: every code path of a paper job on a random-weight Llama-2-shaped model, loaded
the way the workflow loads it, then the numbers that size a paper run; one JSON. No download.

    python bench/gpu_check.py --json gpu.json        # Llama-2-7B's shape, bfloat16, one GPU (< 8 min on an H200)
    python bench/gpu_check.py --device cpu --tiny    # a tiny shape on the CPU (what the tests run)

What makes it a rehearsal of the paper's run rather than a smoke test:

* the vocabulary is the model's (32,000 entries: the most frequent English words, a word-level
  tokenizer built offline with ``tokenizers``, under the Llama-2-chat prompt format written for
  this project), so sampled ids decode to words and histories grow as real ones do;
* the end-of-turn token's output row points along the model's mean final hidden state, scaled
  so that it is sampled about once in 15 steps: replies end early, rows retire and the batch
  compacts;
* topics long enough that prompts reach the model's context limit (4,096 positions; 1,100 with
  ``--tiny``) within a few turns, under the paper config's ``context_policy: stop``;
* more conversations than ``model.max_batch`` rows, so every call is split into chunks;
* the model is written to a checkpoint folder and loaded by ``models.load_model`` (manifest,
  dtype, device map) into engines built by ``runtime.factory.hf_engine_for``, as jobs do;
* each shard runs under ``none``, split-softmax, repetition and guidance; MMLU letter and cloze
  scoring under ``none``, split-softmax and guidance; the attention recorder on a stored dialog;
* on CUDA every setting's shard and MMLU, and split-softmax's timed prefill and decoding, run
  with SDPA restricted to its flash and memory-efficient kernels
  (``torch.nn.attention.sdpa_kernel``): a silent fallback to the math kernel (which
  materialises every score) fails the step, split-softmax's padded prefill included; and a smaller
  model runs a shard and
  MMLU under a device map split between the GPU and the CPU, so every cross-device path runs
  on one GPU;
* the upstream-style loop (one conversation at a time, history re-encoded each turn) samples as
  the paper did (top-k 50, top-p 0.9) on the model's device;
* memory per step and per device: the reserved peak beside ``torch.cuda.mem_get_info``;
* Llama-2-70B's grouped-query layer (8192 wide, 64 query heads over 8 KV heads) in 4 layers,
  loaded on a two-device map (the job's placement check included) under the fused-kernel guard:
  two left-padded rows prefill, score and decode at contexts up to 4,096 positions, plainly and
  under split-softmax, every logit (a hook on the output layer) and score checked for NaN and
  infinity; grouped keys against repeated ones on the longest prefill; decode steps timed at 64
  rows and 4,096 positions;
* vLLM's offline engine on the same checkpoint and workload as the engine's throughput, where
  ``vllm`` is importable (skipped, saying why, elsewhere);
* the paper config's plan: per setting, the engine that runs it (settings needing model
  internals on HF, the others could run on vLLM) and its GPU-hours, from the slice's decode step
  scaled to 80 layers, split-softmax's measured cost, guidance's two rows per sample and vLLM's
  measured rate relative to the engine's;
* the temporary folder of checkpoints is removed at the end, whatever failed.

Each step is recorded (ok, or its error) and the run goes on to the next; the exit status is 1
if any step failed. Throughput numbers are measured for sizing only; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import personadrift  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from personadrift.interventions.split_softmax import SplitSoftmaxHook

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers

SHAPES = {  # Llama-2 shapes (hidden, intermediate, layers, heads, kv heads); tiny for CPU tests
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1100),
    # the device-map rehearsal's model: Llama-2's head size, a few layers on each device
    "split": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, max_position_embeddings=1100),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, max_position_embeddings=4096),
    # Llama-2-70B's layer (64 query heads over 8 KV heads) in a few layers: the grouped-query
    # check's model, spread over two GPUs; gqa_tiny is its CPU stand-in (4 query heads per KV head)
    "70b_slice": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=4, num_attention_heads=64,
                      num_key_value_heads=8, max_position_embeddings=4096),
    "gqa_tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, max_position_embeddings=1100),
}
LLAMA2_70B_LAYERS = 80
VOCAB = 32000  # Llama-2's
EOS_PROBABILITY = 1 / 15  # per step, roughly: replies end early, rows retire
PAPER = dict(conversations=200, rounds=8, probe_samples=2, probe_kinds=2, reply_tokens=400, gpus_per_node=8)


# ------------------------------------------------------------------ tokenizer and model
def word_tokenizer(out_dir: Path, vocab_size: int = VOCAB):
    """A word-level tokenizer of ``vocab_size`` entries (Llama-2's special tokens, punctuation,
    digits, letters, then English words by frequency, from wordfreq) with the Llama-2-chat
    prompt format, saved to ``out_dir``. Lower-cases its input; unknown words become <unk>."""
    import string

    import wordfreq
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from personadrift.generation.tiny import LLAMA2_TEMPLATE

    specials = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as Llama-2's
    entries = specials + list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    entries += ["inst", "sys"]  # the prompt format's [INST] and <<SYS>>
    seen = set(entries)
    for w in wordfreq.top_n_list("en", 3 * vocab_size):
        if len(entries) == vocab_size:
            break
        if w.isalpha() and w.isascii() and w not in seen:
            seen.add(w)
            entries.append(w)
    if len(entries) != vocab_size:
        raise SystemExit(f"wordfreq gave only {len(entries)} entries; need {vocab_size}")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(entries)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = LLAMA2_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def random_llama(shape: str, device: str, dtype: torch.dtype, tok, seed: int = 0):
    """A random-weight Llama of ``shape`` with ``tok``'s vocabulary, built on ``device`` (N(0, 0.02)
    as Llama's initialiser; norms at 1), its end-of-turn row set by ``bias_eos``."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         **SHAPES[shape])
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for mod in model.modules():  # computed buffers (rotary frequencies): rebuild them
            if type(mod).__name__.endswith("RotaryEmbedding"):
                fresh = type(mod)(config=config)
                mod.inv_freq = fresh.inv_freq.to(device)
                mod.original_inv_freq = fresh.original_inv_freq.to(device)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.eos_token_id
    model.eval()
    bias_eos(model, tok)
    return model


@torch.no_grad()
def bias_eos(model, tok, p: float = EOS_PROBABILITY) -> float:
    """Point the end-of-turn token's output row along the mean final hidden state of some text,
    scaled so that it takes about ``p`` of the top-50 mass (random weights never sample it
    otherwise). Returns the scale."""
    from personadrift.generation.chat import ChatFormat

    text = " ".join(tok.convert_ids_to_tokens(list(range(100, 612))))
    ids = ChatFormat(tok).render([{"role": "user", "content": text}]).ids
    dev = model.get_input_embeddings().weight.device
    out = model(input_ids=torch.tensor([ids], device=dev), output_hidden_states=True)
    h = out.hidden_states[-1][0].float()  # after the final norm: what the output layer sees
    logits = out.logits[0].float()
    u = h.mean(0)
    u = u / u.norm()
    along = h @ u
    top = torch.logsumexp(logits.topk(50, dim=-1).values, dim=-1)
    need = (top + math.log(p / (1 - p))) / along
    scale = float(need[along > 0].median())
    head = model.get_output_embeddings().weight
    head[tok.eos_token_id] = (scale * u).to(head.device, head.dtype)
    return scale


def save_and_load(model, tok, folder: Path, spec: dict):
    """Write ``model`` as a checkpoint, fetch it as a ``local`` model (manifest) and load it with
    ``models.load_model`` and ``spec`` (dtype, device map), as a workflow job does."""
    from personadrift.generation.models import fetch_model, load_model

    ckpt = folder / "checkpoint"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    fetch_model({"name": "gpu-check", "source": "local", "path": str(ckpt), "verify": "size"}, folder / "model")
    return load_model(folder / "model", spec)


# ------------------------------------------------------------------ bookkeeping
class Steps:
    """Runs named steps, recording each one's outcome, seconds and per-device memory."""

    def __init__(self, cuda: bool, log=print):
        self.cuda, self.log = cuda, log
        self.record: dict[str, dict] = {}

    def run(self, name: str, fn, *args, **kwargs):
        if self.cuda:
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
        t = time.perf_counter()
        entry: dict = {}
        value = None
        try:
            value = fn(*args, **kwargs)
            if isinstance(value, (dict, list, float, int, str)):  # a model or a loaded model is not recorded
                entry["result"] = value
            entry["ok"] = True
            self.log(f"  {name}: ok ({time.perf_counter() - t:.1f} s)")
        except Exception as exc:  # noqa: BLE001 (each step's failure is recorded; the others still run)
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=12)
            self.log(f"  {name}: FAILED {entry['error']}")
        entry["seconds"] = time.perf_counter() - t
        entry["memory"] = device_memory() if self.cuda else None
        self.record[name] = entry
        return value

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.record.items() if not v["ok"]]


def device_memory() -> dict:
    """Per GPU: the step's reserved peak and what the driver reports free and in total (GiB)."""
    out = {}
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out[f"cuda:{i}"] = {"reserved_peak_gib": torch.cuda.max_memory_reserved(i) / 2**30,
                            "allocated_peak_gib": torch.cuda.max_memory_allocated(i) / 2**30,
                            "free_gib": free / 2**30, "total_gib": total / 2**30}
    return out


class RowsPerForward:
    """Rows of every forward the model runs (a forward pre-hook; the model is unchanged)."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows.append(int(ids.shape[0]))

    def close(self):
        self.handle.remove()


def fused_sdpa_only(cuda: bool):
    """On CUDA: SDPA may use its flash and memory-efficient kernels only (a fallback to the math
    kernel raises instead of running silently); elsewhere nothing."""
    import contextlib

    if not cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


# ------------------------------------------------------------------ the paths of a paper job
def study_config(args, limit: int) -> dict:
    from personadrift.config import validate_config

    return validate_config({
        "model": {"name": "gpu-check", "source": "local", "path": "unused", "max_batch": args.max_batch,
                  "max_context": limit},
        "selfchat": {"conversations": args.conversations, "shard_size": args.conversations, "turns": args.turns,
                     "runs": 2, "max_new_tokens": args.tokens, "probe_max_new_tokens": args.tokens, "top_k": 50,
                     "top_p": 0.9, "context_policy": "stop"},
        "interventions": {"none": {"method": "none"}, "split": {"method": "split_softmax", "k": [0.5]},
                          "repeat": {"method": "repetition", "every": [1]},
                          "cfg": {"method": "cfg", "guidance_scale": [1.5]}},
    })


def long_topics(tok, personas, limit: int, reply: int, n: int = 4) -> list[str]:
    """Topics whose first agent prompt leaves room for about two more turns of ``reply`` tokens
    before ``limit``: the later turns reach the model's context limit."""
    import random

    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.dialog import agent_messages
    from personadrift.protocol.personas import persona_record

    chat = ChatFormat(tok)
    longest = max((persona_record(p)["system_prompt"] for p in personas), key=len)
    base = chat.count(agent_messages(longest, ["x"]))
    words = [w for w in tok.convert_ids_to_tokens(list(range(100, 5000))) if w.isalpha()]
    budget = limit - base - 3 * (reply + 8)  # the first turns fit; later ones reach the limit
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(budget)) + "?" for _ in range(n)]


def shard_paths(lm, args, log, *, cuda: bool, conversations: int | None = None) -> dict:
    """A shard under each setting family, MMLU under none, split-softmax and guidance, and the
    attention recorder, on engines built as jobs build them. Returns what each path showed."""
    from personadrift.analysis.attention import record_conversation
    from personadrift.capability.mmlu import EngineScorer, Question, evaluate
    from personadrift.generation.selfchat import ShardRun, plan_conversation
    from personadrift.interventions.settings import expand_settings
    from personadrift.protocol.personas import load_personas, persona_record
    from personadrift.runtime.factory import hf_engine_for

    repo = Path(__file__).resolve().parents[1]
    model, tok = lm.model, lm.tokenizer
    limit = model.config.max_position_embeddings
    cfg = study_config(args, limit)
    n = conversations or args.conversations
    personas = load_personas(sorted((repo / "personas/benchmark").glob("*.yaml")))
    topics = long_topics(tok, personas, limit, args.tokens)
    plans = json.loads(json.dumps([plan_conversation(s, 0, personas, topics) for s in range(n)]))
    qs = [Question(i, "astronomy", f"Question {i} about the stars?", ("one", "two", "three", "four"), "ABCD"[i % 4])
          for i in range(8)]
    out, stored = {}, None
    for setting in expand_settings(cfg["interventions"]):
        engine = hf_engine_for(lm, cfg, setting, progress=False)
        rows = RowsPerForward(model)
        try:
            with fused_sdpa_only(cuda), tempfile.TemporaryDirectory() as ckpt:
                recs = ShardRun(engine, config=cfg, setting=setting, plans=plans, checkpoint_dir=Path(ckpt),
                                provenance={}).run()
                mmlu = None
                if setting.method in ("none", "split_softmax", "cfg"):  # repetition: the baseline's MMLU
                    scorer = EngineScorer(engine, intervene=setting.intervenes("mmlu"),  # as steps/mitigation.py
                                          negative=setting.negative_messages, share_key="mmlu/shared")
                    system = persona_record(personas[0])["system_prompt"]
                    scorer.prime(system)
                    df = evaluate(qs, system_prompt=system, letter_logprobs=scorer.letters,
                                  cloze_logprobs=scorer.cloze)
                    mmlu = {"questions": len(df), "forms": [f for f in ("letter", "cloze") if f"{f}_correct" in df]}
        finally:
            rows.close()
            model.set_attn_implementation("sdpa")
        turns = [t for r in recs for t in r["turns"][1:]]
        answers = [c for r in recs for p in r["probes"] for c in p["completions"]]
        used = [t["prompt_tokens"] + t["new_tokens"] for t in turns]
        out[setting.name] = {
            "conversations": len(recs),
            "max_rows_per_forward": max(rows.rows),
            "max_batch": args.max_batch,
            "longest_context": max(used),
            "context_limit": limit,
            "stopped_at_the_limit": sum(1 for r in recs if r.get("stopped")),
            "ended_by_eos": sum(1 for c in turns + answers if c["finish_reason"] == "stop"),
            "generated_words": sum(t["new_tokens"] for t in turns),
            "repetition_placement": recs[0]["provenance"]["protocol"]["repetition_placement"],
            "mmlu": mmlu,
            "memory_halvings": getattr(getattr(engine, "_memory", None), "halvings", 0),
            # stored prefixes: bytes held on each device at most (none on a host) and spills to the host
            "prefix_store": {"stored": len(engine.prefixes), "spills": engine.prefixes.spills,
                             "peak_bytes": dict(engine.prefixes.peak)},
        }
        o = out[setting.name]
        log(f"    {setting.name:<14} longest context {o['longest_context']}/{limit}, {o['stopped_at_the_limit']} "
            f"dialogs stopped at the limit, {o['ended_by_eos']} replies ended by EOS, rows per forward <= "
            f"{o['max_rows_per_forward']}" + (f", MMLU {mmlu['forms']}" if mmlu else ""))
        stored = stored or recs[0]
    table = record_conversation(model, engine.chat, stored)
    out["attention_recorder"] = {"rows": len(table)}
    return out


def check_paths(paths: dict, args) -> None:
    """What the rehearsal must have shown (raises AssertionError otherwise)."""
    for name in ("none", "split-k0.5", "repeat-every1", "cfg-g1.5"):
        p = paths[name]
        assert p["longest_context"] > p["context_limit"] - 2 * args.tokens, (name, p)  # reached the limit
        assert p["stopped_at_the_limit"] > 0, (name, p)  # the paper's context policy ran
        assert p["ended_by_eos"] > 0, (name, p)  # rows retired early
        assert p["max_rows_per_forward"] <= p["max_batch"] < p["conversations"], (name, p)  # calls in chunks
        if name != "repeat-every1":
            assert p["mmlu"]["forms"] == ["letter", "cloze"] and p["mmlu"]["questions"] == 8, (name, p)
    assert paths["repeat-every1"]["repetition_placement"] == "user_prefix"  # the Llama-2 format's fallback
    assert paths["attention_recorder"]["rows"] > 0


def split_device_map(tok, args, work: Path, log) -> dict:
    """A shard and MMLU on a model whose first half of layers lives on the GPU and the rest
    (with the final norm and the output layer) on the CPU."""
    model = random_llama("split", "cuda", torch.bfloat16, tok, seed=1)
    layers = model.config.num_hidden_layers
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": 0 if i < layers // 2 else "cpu" for i in range(layers)})
    lm = save_and_load(model, tok, work / "split", {"dtype": "bfloat16", "device_map": device_map})
    del model
    devices = sorted({str(p.device) for p in lm.model.parameters()})
    assert len(devices) == 2, devices
    paths = shard_paths(lm, args, log, cuda=False, conversations=args.max_batch + 2)
    check_paths(paths, args)
    assert paths["none"]["prefix_store"]["peak_bytes"].get("cuda:0", 0) > 0, paths["none"]  # kept on the GPU
    return {"devices": devices, "paths": paths}


# ------------------------------------------------------------------ grouped-query attention
class FiniteLogits:
    """Counts the output layer's calls and those whose logits hold a NaN or an infinity (a
    forward hook; the model is unchanged)."""

    def __init__(self, model):
        self.calls = self.bad = 0
        self.handle = model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, _module, _args, out):
        self.calls += 1
        self.bad += int(not bool(torch.isfinite(out).all()))

    def close(self):
        self.handle.remove()


def two_device_map(layers: int, cuda: bool) -> tuple[dict, int]:
    """(device map, GPUs): the first half of the layers with the embeddings on the first GPU,
    the rest with the final norm and the output layer on the second (one GPU: all on it; the
    CPU stand-in: all on the CPU)."""
    gpus = min(2, torch.cuda.device_count()) if cuda else 0
    first, second = (0, 1) if gpus == 2 else (0, 0) if gpus else ("cpu", "cpu")
    device_map = {"model.embed_tokens": first, "model.rotary_emb": first, "model.norm": second, "lm_head": second}
    device_map.update({f"model.layers.{i}": first if i < layers // 2 else second for i in range(layers)})
    return device_map, gpus


def grouped_query_check(tok, args, work: Path, log, *, cuda: bool) -> dict:
    """Llama-2-70B's layer shape (8192 wide, 64 query heads over 8 KV heads; ``gqa_tiny`` with
    ``--tiny``) in a few layers, loaded as jobs load it on a two-device map (the placement
    check of ``models.check_placement`` included), under the fused-kernel guard on CUDA: at
    each context up to the model's 4,096 positions, two left-padded rows prefill, score and
    decode under plain attention and split-softmax with every logit and score finite; the
    grouped keys give the logits the repeated ones give; the decode step timed at the longest
    context sizes the full model (``LLAMA2_70B_LAYERS`` layers run one after the other)."""
    from personadrift.generation.api import GenRequest, Intervention, Sampling
    from personadrift.generation.models import check_placement
    from personadrift.interventions.split_softmax import SplitSoftmaxHook
    from personadrift.runtime.factory import engine_on

    shape = "gqa_tiny" if args.tiny else "70b_slice"
    model = random_llama(shape, "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32, tok, seed=2)
    layers = model.config.num_hidden_layers
    device_map, gpus = two_device_map(layers, cuda)
    lm = save_and_load(model, tok, work / "gqa", {"dtype": "bfloat16" if cuda else "float32",
                                                   "device_map": device_map})
    del model
    if cuda:
        torch.cuda.empty_cache()
    m = lm.model
    if gpus:
        check_placement(m, gpus)  # the job's own refusal check: no layer on the CPU or disk
    devices = sorted({str(p.device) for p in m.parameters()})
    limit = m.config.max_position_embeddings
    contexts = [c for c in (512, 1024, 2048, 4096) if c < limit] + [limit - args.tokens - 8]
    words = list(range(100, 30000))
    out = {"shape": shape, "layers": layers, "devices": devices, "device_map_gpus": gpus,
           "query_groups": m.config.num_attention_heads // m.config.num_key_value_heads, "contexts": {}}
    logits = FiniteLogits(m)
    try:
        for ctx in contexts:
            rec = {}
            for name, iv in (("plain", Intervention()), ("split", Intervention((SplitSoftmaxHook(k=0.5),)))):
                eng = engine_on(m, tok, sampling=Sampling(max_new_tokens=4, min_new_tokens=4, top_k=50),
                                intervention=iv, max_batch=args.max_batch)
                rows = []
                for r in range(2):  # two rows of different lengths: a left-padded, masked batch
                    n = ctx - 40 - 17 * r
                    user = " ".join(tok.convert_ids_to_tokens(words[(i * 7 + r) % len(words)] for i in range(n)))
                    rows.append(GenRequest([{"role": "system", "content": "You love tennis."},
                                            {"role": "user", "content": user}], seed=r, intervene=True))
                with fused_sdpa_only(cuda):
                    lp = eng.next_token_logprobs(rows)
                    answer = tok.encode("the answer is yes", add_special_tokens=False)
                    cont = eng.continuation_logprobs(rows, [answer] * 2)
                    texts = eng.generate(rows)
                rec[name] = {"prompt_tokens": [len(eng.chat.render(r.messages).ids) for r in rows],
                             "finite_logprobs": bool(torch.isfinite(lp).all()),
                             "finite_continuation_scores": bool(torch.isfinite(cont).all()),
                             "replies": sum(1 for t in texts if t[0] is not None)}
                assert rec[name]["finite_logprobs"] and rec[name]["finite_continuation_scores"], (ctx, name, rec)
            assert m.config._attn_implementation in ("grouped_sdpa", "split_softmax"), m.config._attn_implementation
            out["contexts"][ctx] = rec
            log(f"    context {ctx}: plain and split-softmax finite, {logits.calls} logits checked")
        assert logits.bad == 0, f"{logits.bad} of {logits.calls} forwards gave a NaN or an infinity"
        out["logit_forwards"] = logits.calls
        # grouped keys against repeated ones, on the longest masked prefill
        ids = torch.tensor([[w % 30000 + 100 for w in range(contexts[-1])]] * 2)
        mask = torch.ones_like(ids)
        mask[1, :64] = 0
        dev = m.get_input_embeddings().weight.device
        got = {}
        for impl in ("grouped_sdpa", "sdpa"):
            m.set_attn_implementation(impl)
            with torch.no_grad(), fused_sdpa_only(cuda and impl == "grouped_sdpa"):
                got[impl] = m(input_ids=ids.to(dev), attention_mask=mask.to(dev), logits_to_keep=1).logits.float().cpu()
        out["grouped_vs_repeated_max_abs_logit_difference"] = float((got["grouped_sdpa"] - got["sdpa"]).abs().max())
        # decode steps at the longest context, timed, at the paper config's rows per forward
        rows = args.decode_rows
        eng = engine_on(m, tok, sampling=Sampling(max_new_tokens=args.tokens, min_new_tokens=args.tokens, top_k=50),
                        max_batch=rows)
        user = " ".join(tok.convert_ids_to_tokens(words[: contexts[-1] - 40]))
        reqs = [GenRequest([{"role": "user", "content": user}], seed=i) for i in range(rows)]
        with fused_sdpa_only(cuda):
            eng.generate(reqs[:1], max_new_tokens=2)  # warm-up
            calls = eng.stats.forward_calls
            sync(dev)
            t = time.perf_counter()
            eng.generate(reqs)
            sync(dev)
        seconds = time.perf_counter() - t
        steps = eng.stats.forward_calls - calls - 1  # the prefill is one forward
        # the prefill is timed with the steps: the per-step figure (and the plan) errs on the long side
        out["decode"] = {"rows": rows, "context": contexts[-1], "steps": steps,
                         "seconds_per_step": seconds / max(1, steps), "layers": layers}
        log(f"    decode at {contexts[-1]} positions, {rows} rows: "
            f"{1000 * seconds / max(1, steps):.1f} ms per step over {layers} layers on {devices}")
    finally:
        logits.close()
        m.set_attn_implementation("sdpa")
    return out


def vllm_throughput(checkpoint: Path, args, log, *, cuda: bool) -> dict:
    """vLLM's offline engine on the same checkpoint and workload as the engine's throughput
    step (prompts of the throughput dialogs, ``--tokens`` tokens each, top-k 50, top-p 0.9),
    where vllm is importable and a GPU is here; else skipped, saying why."""
    if not cuda:
        return {"skipped": "no GPU (vLLM's GPU engine is what a 70B study would run)"}
    try:
        import vllm
    except ImportError as e:
        return {"skipped": f"vllm is not importable ({e})"}
    import gc

    from selfchat_throughput import TOPICS

    gc.collect()
    torch.cuda.empty_cache()  # vLLM sizes its cache from the memory the driver reports free
    n = max(args.shards)
    llm = vllm.LLM(model=str(checkpoint), dtype="bfloat16", tensor_parallel_size=1, enable_prefix_caching=True,
                   gpu_memory_utilization=0.35, max_model_len=4096, seed=0)
    params = vllm.SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=args.tokens,
                                 min_tokens=args.tokens, seed=0)
    prompts = [TOPICS[i % len(TOPICS)] for i in range(n)]
    llm.generate(prompts[:2], params)  # warm-up (graph capture)
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    logits_finite = all(len(o.outputs[0].token_ids) > 0 for o in outs)
    del llm
    torch.cuda.empty_cache()
    log(f"    vLLM {vllm.__version__}, {n} prompts: {tokens / seconds:10.1f} tokens/s")
    return {"version": vllm.__version__, "prompts": n, "tokens_per_s": tokens / seconds, "replied": logits_finite}


def paper_plan(result: dict, log) -> dict:
    """Per setting of configs/paper.yaml: which engine runs it (settings that need model
    internals on the HF engine, the others could run on vLLM) and its estimated GPU-hours, from
    the rates measured here: the 70B slice's decode step scaled to Llama-2-70B's 80 layers (the
    layers of a device map run one after the other), split-softmax's measured cost, guidance's
    two rows per sample, and vLLM's rate relative to the engine's on the same model where
    measured. A plan, not a measurement of the full model."""
    import yaml

    from personadrift.interventions.settings import expand_settings

    repo = Path(__file__).resolve().parents[1]
    paper = yaml.safe_load((repo / "configs/paper.yaml").read_text())
    decode = (result["steps"].get("grouped_query", {}).get("result") or {}).get("decode")
    if not decode:
        return {"skipped": "no decode timing of the grouped-query slice"}
    step_70b = decode["seconds_per_step"] * LLAMA2_70B_LAYERS / decode["layers"]
    rows = decode["rows"]
    split = (result["steps"].get("split_softmax", {}).get("result") or {}).get("ratio") or 1.0
    engine_rate = (result["steps"].get("throughput", {}).get("result") or {}).get("engine_tokens_per_s") or {}
    vllm_rate = (result["steps"].get("vllm", {}).get("result") or {}).get("tokens_per_s")
    vllm_speedup = vllm_rate / engine_rate[max(engine_rate)] if vllm_rate and engine_rate else None
    gpus = paper["resources"]["gpus"]
    tokens = paper_estimate(1.0, 1)["tokens"]
    plan = {}
    for s in expand_settings(paper["interventions"]):
        rate = rows / s.rows_per_sample() / step_70b  # sampled tokens per second at model.max_batch rows
        if s.method == "split_softmax":
            rate /= split
        hours = tokens / rate / 3600
        entry = {"engine": "hf" if s.needs_internals else "vllm (or hf)", "hf_gpu_hours": hours * gpus}
        if not s.needs_internals:
            entry["vllm_gpu_hours"] = hours * gpus / vllm_speedup if vllm_speedup else None
        plan[s.name] = entry
    total_hf = sum(e["hf_gpu_hours"] for e in plan.values())
    log(f"    Llama-2-70B decode step from the slice: {1000 * step_70b:.0f} ms at {rows} rows, "
        f"{decode['context']} positions; {gpus} GPUs per job; split-softmax x{split:.2f}; vLLM "
        + (f"x{vllm_speedup:.2f} the engine's rate" if vllm_speedup else "not measured"))
    for name, e in plan.items():
        v = e.get("vllm_gpu_hours")
        log(f"    {name:<16} {e['engine']:<13} HF {e['hf_gpu_hours']:8.1f} GPU-h"
            + (f", vLLM {v:8.1f} GPU-h" if v else ""))
    log(f"    all {len(plan)} settings on the HF engine: {total_hf:.0f} GPU-hours")
    return {"step_seconds_70b": step_70b, "rows": rows, "gpus_per_job": gpus, "split_softmax_cost": split,
            "vllm_speedup": vllm_speedup, "tokens_per_setting": tokens, "settings": plan,
            "hf_gpu_hours_all": total_hf}


# ------------------------------------------------------------------ numbers
def throughput(model, tok, args, log) -> dict:
    from selfchat_throughput import TOPICS, run_engine, run_upstream

    rates = {}
    for n in args.shards:
        convs = [TOPICS[i % len(TOPICS)] for i in range(n)]
        t = time.perf_counter()
        tokens = run_engine(model, tok, convs, args.rounds, args.tokens, 2, args.tokens, top_k=50)  # the paper's
        rates[n] = tokens / (time.perf_counter() - t)
        log(f"    engine, shard of {n:>3}: {rates[n]:10.1f} tokens/s")
    convs = TOPICS[: args.upstream_conversations]
    t = time.perf_counter()
    tokens = run_upstream(model, tok, convs, args.rounds, args.tokens, 2, args.tokens)
    upstream = tokens / (time.perf_counter() - t)
    log(f"    upstream-style loop (top-k 50, top-p 0.9): {upstream:10.1f} tokens/s (one conversation at a time)")
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
                with attention_context(pm, reweight=SplitSoftmaxHook(k=0.5)):
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            else:
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        sync(device)
        return (time.perf_counter() - t) / n

    try:
        with fused_sdpa_only(device == "cuda"):  # split-softmax's prefill on a fused kernel too
            run("sdpa"), run("split_softmax")  # warm-up
            best = {impl: min(run(impl) for _ in range(2)) for impl in ("sdpa", "split_softmax")}
    finally:
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
    if str(device).startswith("cuda"):
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


# ------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (CPU tests)")
    ap.add_argument("--conversations", type=int, default=10, help="conversations of each rehearsal shard")
    ap.add_argument("--max-batch", type=int, default=8,
                    help="model.max_batch of the rehearsal shards (< conversations)")
    ap.add_argument("--turns", type=int, default=6, help="dialog turns of the rehearsal shards")
    ap.add_argument("--shards", default="8,32,128", help="shard sizes for the throughput comparison")
    ap.add_argument("--upstream-conversations", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=40, help="reply length in the rehearsal and the measurements")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the throughput dialogs")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-rows", type=int, default=64,
                    help="rows of the grouped-query slice's timed decoding (the paper config's model.max_batch)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    args.shards = [int(x) for x in args.shards.split(",")]
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny")
    shape = "tiny" if args.tiny else "7b"
    dtype = torch.bfloat16 if cuda else torch.float32
    log = print
    work = Path(tempfile.mkdtemp(prefix="pd-gpu-check-"))  # checkpoints: removed at the end
    where = (torch.cuda.get_device_name(0) + f" x{torch.cuda.device_count()}") if cuda else "CPU"
    log(f"gpu_check: shape={shape} dtype={str(dtype).split('.')[-1]} device={where} torch={torch.__version__}")
    steps = Steps(cuda, log)
    result = {"device": where, "shape": shape, "dtype": str(dtype), "steps": steps.record}
    try:
        tok = word_tokenizer(work / "tokenizer")
        model = steps.run("build", random_llama, shape, "cuda" if cuda else "cpu", dtype, tok)
        spec = {"dtype": "bfloat16" if cuda else "float32"}
        lm = steps.run("save_and_load", save_and_load, model, tok, work / "main", spec)
        del model
        if lm is None:  # nothing else can run
            raise SystemExit(f"gpu_check: {steps.failed} failed:\n" + "\n".join(
                steps.record[k]["traceback"] for k in steps.failed))
        if cuda:
            torch.cuda.empty_cache()
        log("1. the paths of a paper job")
        paths = steps.run("paths", shard_paths, lm, args, log, cuda=cuda)
        if paths is not None:
            steps.run("paths_check", check_paths, paths, args)
        if cuda:
            steps.run("split_device_map", split_device_map, tok, args, work, log)
        log("1b. grouped-query attention on a two-device map, contexts to the model's limit")
        steps.run("grouped_query", grouped_query_check, tok, args, work, log, cuda=cuda)
        log("2. throughput")
        steps.run("throughput", throughput, lm.model, tok, args, log)
        log("2b. vLLM on the same checkpoint")
        steps.run("vllm", vllm_throughput, work / "main" / "checkpoint", args, log, cuda=cuda)
        log("3. split-softmax against SDPA")
        steps.run("split_softmax", split_cost, lm.model, tok, args, "cuda" if cuda else "cpu")
        log("4. matmul rate")
        steps.run("matmul", matmul_rate, "cuda" if cuda else "cpu", dtype, 8192 if cuda else 256)
        rates = (steps.record["throughput"].get("result") or {}).get("engine_tokens_per_s", {})
        if rates:
            near = min(rates, key=lambda n: abs(n - 50))  # the paper config's shard size is 50
            result["paper_setting"] = {**paper_estimate(rates[near], 1), "rate_at_shard": near}
        log("5. the paper config's plan")
        result["plan"] = steps.run("plan", paper_plan, result, log)
        result["failed"] = steps.failed
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # the checkpoints (13.5 GB for the 7B shape)
        result["work_dir"], result["work_dir_removed"] = str(work), not work.exists()
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    log("failed steps: " + (", ".join(steps.failed) or "none"))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
