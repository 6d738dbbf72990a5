"""Rows per forward that fit the device, and a call that halves itself when they do not.

A batch's KV cache dominates a job's device memory: every row holds keys and values for each
of its positions in every layer. Llama-2-7B has no grouped-query attention, so that is
32 layers x 32 heads x 128 x 2 x 2 bytes = 0.5 MiB per position: 128 rows of 4,496 slots would
need 281 GiB. Before each call the engine asks ``call_rows`` how many rows one forward may
hold, from each device's free memory and what a row needs (``row_bytes``): its KV cache for the
call's longest context (prompt + reply budget) and one layer's activations for the tokens its
prefill encodes (a decode step encodes one; a stored prefix is not encoded again), capped by
``model.max_batch``; on a host (CPU) the cap alone decides. The prefix store keeps only what
those rows leave (``PrefixStore.limit``): it spills rather than displace a row.

The estimate can still be wrong (fragmentation, another process on the GPU, attention's
scratch space), so a chunk that runs out of memory is split in two and each half run again, in
the same process, down to one request (a request's samples and guidance pair stay together: a
sample's seed is its index within its request); one request that does not fit raises. Rows
sample from their own seeded streams, so a halved call returns the same texts as a whole one.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from personadrift import job

log = logging.getLogger(__name__)

# the share of a device's free memory the batch may plan to use: the rest stays for what the
# estimate leaves out (the allocator's rounding, attention's scratch, sampling's sort)
USABLE_FRACTION = 0.85


def _layers(model) -> list:
    """The decoder layers (each holds one KV cache layer), or [] if the model hides them."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = getattr(model, "model", None)
    return list(getattr(decoder, "layers", []) or [])


def _dims(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a transformers text config."""
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one position takes in the whole model: layers x kv heads x
    head dim x 2 (keys, values) x the dtype's size."""
    layers, kv_heads, head_dim = _dims(config)
    return layers * kv_heads * head_dim * 2 * torch.empty((), dtype=dtype).element_size()


def kv_bytes_by_device(model) -> dict[torch.device, int]:
    """Bytes per position of KV cache on each device the model's layers live on (a layer's
    cache is created where its key projection's output is)."""
    config = getattr(model.config, "text_config", None) or model.config
    layers, kv_heads, head_dim = _dims(config)
    per_layer = kv_heads * head_dim * 2
    found = _layers(model)
    if len(found) != layers:  # a model whose layers are not where transformers keeps them
        p = next(model.parameters())
        return {p.device: kv_bytes_per_token(config, p.dtype)}
    out: dict[torch.device, int] = {}
    for layer in found:
        p = next(layer.parameters())
        out[p.device] = out.get(p.device, 0) + per_layer * p.element_size()
    return out


def activation_bytes_per_token(config, dtype: torch.dtype) -> int:
    """A bound on one prefilled position's transient activations in one layer: hidden states,
    queries, keys, values, attention output, and the MLP's gate, up and product."""
    config = getattr(config, "text_config", None) or config
    inner = getattr(config, "intermediate_size", 4 * config.hidden_size)
    return (5 * config.hidden_size + 3 * inner) * torch.empty((), dtype=dtype).element_size()


def free_bytes(device: torch.device) -> int | None:
    """Memory a new tensor can take on ``device``: the driver's free memory plus what torch's
    caching allocator holds unused; None on a host (no reliable figure: the cap decides)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def row_bytes(model, context: int, new_tokens: int | None = None) -> dict[torch.device, int]:
    """Bytes one row of a call needs on each device of ``model``: its KV cache for the whole
    ``context`` (prompt + reply budget), one layer's transient activations for the
    ``new_tokens`` positions its prefill encodes (the rest of its prompt comes from a stored
    prefix; a decode step encodes one), and float32 logits with the sampler's copies of them.
    ``new_tokens`` None: the whole context is encoded at once."""
    p = next(model.parameters())
    act = activation_bytes_per_token(model.config, p.dtype)
    vocab = (getattr(model.config, "text_config", None) or model.config).vocab_size
    new = context if new_tokens is None else max(1, min(new_tokens, context))
    return {device: context * kv + new * act + 4 * vocab * 4 for device, kv in kv_bytes_by_device(model).items()}


def plan_rows(model, context: int, cap: int, *, new_tokens: int | None = None,
              held: dict[torch.device, int] | None = None, free=None) -> tuple[int, dict[torch.device, int]]:
    """(rows, keep): rows of ``context`` positions one forward may hold on every device of
    ``model`` (at least 1, at most ``cap``; see :func:`row_bytes`), counting as available what
    the prefix store ``held`` there (it spills to make room: a batch row is worth more than a
    stored prefix, which is re-encoded if lost); and per device, the bytes the store may keep
    beside those rows."""
    free = free or free_bytes
    rows = cap
    usable: dict[torch.device, tuple[int, int]] = {}
    for device, per_row in row_bytes(model, context, new_tokens).items():
        avail = free(device)
        if avail is None:
            continue
        total = int((avail + (held or {}).get(device, 0)) * USABLE_FRACTION)
        usable[device] = (total, per_row)
        rows = min(rows, max(1, total // per_row))
    rows = max(1, rows)
    return rows, {device: max(0, total - rows * per_row) for device, (total, per_row) in usable.items()}


def rows_that_fit(model, context: int, cap: int, *, new_tokens: int | None = None, free=None) -> int:
    """Rows of ``context`` positions (prompt + reply budget) one forward may hold on every
    device of ``model`` (at least 1, at most ``cap``), each encoding ``new_tokens`` at once."""
    return plan_rows(model, context, cap, new_tokens=new_tokens, free=free)[0]


@dataclasses.dataclass
class MemoryState:
    """What one engine learned about its device: positions (rows x context) a forward ran out
    of memory at, halved; later calls stay below it."""

    oom_positions: int | None = None
    halvings: int = 0


def state_of(engine) -> MemoryState:
    st = getattr(engine, "_memory", None)
    if st is None:  # an earlier attempt of this job may have run out of memory: start below it
        note = job.memory_note()
        st = engine._memory = MemoryState(oom_positions=note.load() if note is not None else None)
    return st


def _on_device(model) -> bool:
    return any(d.type != "cpu" for d in kv_bytes_by_device(model))


def call_rows(engine, requests, budget: int) -> int:
    """Rows per forward for a call of ``requests`` that may each generate ``budget`` tokens:
    ``engine.max_batch`` on a host, else what the devices' free memory holds at the call's
    longest context, and below what ran out of memory before."""
    st = state_of(engine)
    cap = engine.max_batch
    if not requests or (st.oom_positions is None and not _on_device(engine.model)):
        return cap
    prompts = [(r, engine.chat.render(r.messages).ids) for r in requests]
    context = max(len(ids) for _, ids in prompts) + budget
    if engine.max_context:
        context = min(context, engine.max_context + budget)
    new_tokens = max(_new_tokens(engine.prefixes, r.key, ids) for r, ids in prompts)
    rows, keep = plan_rows(engine.model, context, cap, new_tokens=new_tokens, held=engine.prefixes.held_bytes())
    engine.prefixes.limit(keep)  # the store gives back what the call's rows need
    if st.oom_positions is not None:
        rows = min(rows, max(1, st.oom_positions // max(1, context)))
    if rows < cap:
        log.info("%d rows per forward (model.max_batch %d) for contexts of %d positions", rows, cap, context)
    return rows


def _new_tokens(store, key: str | None, ids: list[int]) -> int:
    """Tokens a request's prefill encodes: its prompt past the prefix stored under ``key``."""
    past = store.peek(key)
    if past is None:
        return len(ids)
    n = min(len(past.ids), len(ids) - 1)
    same = next((i for i in range(n) if past.ids[i] != ids[i]), n)
    return len(ids) - same


def _keys(requests) -> set[str]:
    keys = set()
    for r in requests:
        if r.key is not None:
            keys |= {r.key, r.key + "#uncond"}
    return keys


def halving_on_oom(engine, requests: list, run, *, budget: int = 0, items: list | None = None) -> list:
    """``run(items)`` (one result per request; ``items`` default to ``requests``, else one per
    request: a request with what it scores); if the device runs out of memory, the engine's
    stored prefixes and counters are put back as they were and each half runs on its own,
    recursively, down to one request (whose error is raised).

    ``budget`` (tokens each row may generate or score) sizes the failed rows' context, so that
    later calls stay below it, in this attempt and the job's next ones (``personadrift/job.py``: ``MemoryNote``)."""
    items = requests if items is None else items
    keys = _keys(requests)
    prefixes = {k: engine.prefixes.get(k) for k in keys}
    stats = dataclasses.replace(engine.stats)
    try:
        return run(items)
    except torch.OutOfMemoryError:
        if len(requests) == 1:
            raise
    # out of the except block: the error's traceback holds the failed forward's tensors
    for k, v in prefixes.items():  # a row that finished before the error stored its prefix
        if v is None:
            engine.prefixes.discard(k)
        else:
            engine.prefixes.put(k, v)
    engine.stats = stats
    engine.prefixes.spill_all()  # stored prefixes give their device memory to the halves
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    st = state_of(engine)
    st.halvings += 1
    rows = sum(engine._rows_needed(r) for r in requests)
    context = max(len(engine.chat.render(r.messages).ids) for r in requests) + budget
    failed = rows * context // 2
    st.oom_positions = failed if st.oom_positions is None else min(st.oom_positions, failed)
    note = job.memory_note()
    if note is not None:
        note.save(st.oom_positions)
    half = len(requests) // 2
    log.warning("out of device memory at %d rows: running the call as %d + %d requests",
                rows, half, len(requests) - half)
    return (halving_on_oom(engine, requests[:half], run, budget=budget, items=items[:half])
            + halving_on_oom(engine, requests[half:], run, budget=budget, items=items[half:]))


# rows whose whole context (the model's positions) a job's GPUs must hold beside the weights:
# fewer and the long late rounds of a paper dialog run a few rows per forward
MIN_FULL_ROWS = 16


def gpus_needed(parameters: float, dtype_bytes: int, kv_per_token: int, context: int, gpu_bytes: float,
                *, rows: int = MIN_FULL_ROWS) -> int:
    """GPUs of ``gpu_bytes`` one model job needs: the fewest, in a power of two (jobs then pack
    onto 4- and 8-GPU nodes without stranding GPUs), whose usable memory holds the weights and
    the KV cache of ``rows`` rows of ``context`` positions."""
    need = parameters * dtype_bytes + rows * context * kv_per_token
    gpus = 1
    while gpus * gpu_bytes * USABLE_FRACTION < need:
        gpus *= 2
    return gpus


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "bfloat16_if_native": 2}


def parameter_count(cfg: dict) -> int:
    """Parameters of a Llama-style decoder from its config.json (embeddings, attention with
    grouped keys, a gated MLP, norms; biases left out)."""
    cfg = cfg.get("text_config") or cfg
    hidden, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inner = cfg.get("intermediate_size") or 4 * hidden
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    per_layer = attention + 3 * hidden * inner + 2 * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden


def fit_problem(cfg: dict, dtype: str, gpus: int, gpu_memory_gb: float, context: int | None = None) -> str | None:
    """One line when a model of config.json ``cfg`` in ``dtype`` needs more GPUs of
    ``gpu_memory_gb`` than ``gpus`` (:func:`gpus_needed` at the model's positions, or
    ``context``), else None."""
    text = cfg.get("text_config") or cfg
    size = DTYPE_BYTES.get(dtype) or DTYPE_BYTES.get(str(cfg.get("torch_dtype") or cfg.get("dtype")), 4)
    heads = text["num_attention_heads"]
    kv = (text["num_hidden_layers"] * (text.get("num_key_value_heads") or heads)
          * (text.get("head_dim") or text["hidden_size"] // heads) * 2 * size)
    context = context or text.get("max_position_embeddings") or 4096
    params = parameter_count(cfg)
    need = gpus_needed(params, size, kv, context, gpu_memory_gb * 1e9)
    if need <= gpus:
        return None
    return (f"{gpus} GPU(s) of {gpu_memory_gb:g} GB (resources.gpu_memory_gb) cannot hold this model: "
            f"{params / 1e9:.1f}B parameters in {dtype} ({params * size / 1e9:.0f} GB) and the KV cache of "
            f"{MIN_FULL_ROWS} rows of {context} positions ({MIN_FULL_ROWS * context * kv / 1e9:.0f} GB) need {need}")
