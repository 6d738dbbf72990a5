"""Lock-step batched generation with per-conversation KV-cache reuse, for Hugging Face models.

Why not ``model.generate``: a self-chat shard advances many conversations together, and each
bot must keep its KV cache across turns so that only the new tokens of a turn are encoded, and
probes must fork from that cached prefix. ``generate`` takes one shared prefix per call and one
global random stream (so a conversation's text would depend on its batch-mates). This engine:

* keeps, per cache key (e.g. ``"c0007/agent"``), the token ids and compact KV tensors of the
  last prefix it saw; a new request re-uses the longest common token prefix and encodes only
  the rest (templates that are not prefix-stable, or replies re-tokenised after the stored
  text was normalised, simply re-use less);
* left-pads the re-used prefixes and the new tokens of all rows into one batch, with position
  ids counted over real tokens only, so padding never shifts a row's positions;
* keeps the batch's KV cache in pre-allocated buffers (one column written per step, no
  concatenation) and compacts the batch only when a quarter of its rows have finished;
* samples each row from one uniform number per step drawn from its own seeded stream
  (``generation/sampling.py``), so a conversation's text is fixed by its seed, whatever else
  shares the batch, on any device;
* runs classifier-free guidance as paired rows (with and without the system prompt) whose
  log-probabilities are mixed before sampling, and split-softmax through the registered
  attention function with a per-row mask of system-prompt key slots.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from personadrift.generation.api import Completion, GenRequest, Intervention, Sampling
from personadrift.generation.chat import ChatFormat
from personadrift.generation.sampling import (  # noqa: F401  (nucleus: tests)
    NUCLEUS_CANDIDATES,
    nucleus,
    row_uniforms,
    sample_tokens,
)
from personadrift.seeding import derive_seed


@dataclass
class _Prefix:
    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [kv_heads, length, head_dim]


@dataclass
class _Row:
    """One prefilled sequence (before expansion to samples)."""

    target: list[int]
    reuse: int
    past: _Prefix | None
    span: tuple[int, int] | None
    store_key: str | None


@dataclass
class EngineStats:
    prompt_tokens: int = 0  # tokens encoded (not re-used from cache)
    reused_tokens: int = 0
    generated_tokens: int = 0
    forward_calls: int = 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# An extra prefill forward costs about as much as this many more token positions in one (its
# weights are streamed once more and small matmuls run below the CPU's rate): splitting a
# prefill by length pays when it saves more padding than that (bench/selfchat_throughput.py).
PREFILL_FORWARD_TOKENS = 64


def prefill_groups(new_tokens: list[int], rows: list[int], forward_tokens: int = PREFILL_FORWARD_TOKENS) -> list[list[int]]:
    """Units (requests: ``rows[u]`` rows of ``new_tokens[u]`` new tokens each) grouped into
    prefill forwards so that the positions computed, padding included, plus
    ``forward_tokens`` per forward, are fewest: units sorted by length, cut where it pays
    (exact, by dynamic programming over the cut points)."""
    order = sorted(range(len(new_tokens)), key=lambda u: (new_tokens[u], u))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of the first i units in sorted order
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = new_tokens[order[i - 1]]
        size = 0
        for j in range(i, 0, -1):  # the last group is order[j - 1 : i]
            size += rows[order[j - 1]]
            cost = best[j - 1] + forward_tokens + size * longest
            if cost < best[i]:
                best[i], cut[i] = cost, j - 1
    groups, i = [], n
    while i > 0:
        groups.append(order[cut[i] : i])
        i = cut[i]
    return groups[::-1]


class HFEngine:
    """Batched, cache-reusing generation on one Hugging Face causal LM."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        chat: ChatFormat | None = None,
        sampling: Sampling = Sampling(),
        intervention: Intervention = Intervention(),
        max_batch: int = 64,
        progress: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.chat = chat or ChatFormat(tokenizer)
        self.sampling = sampling
        self.intervention = intervention
        self.max_batch = max_batch
        self.progress = progress  # a tqdm bar per generate call of several batches (rule logs)
        self.nucleus_candidates = NUCLEUS_CANDIDATES  # top tokens sorted before the full-sort fallback
        self.prefill_forward_tokens = PREFILL_FORWARD_TOKENS  # see prefill_groups
        # Cached prefixes live in host memory: a 70B model's KV for 50 dialogs of 4k tokens
        # would not fit beside the weights on the GPU; they are copied over per turn.
        self.prefix_device = torch.device("cpu")
        self.stats = EngineStats()
        self._prefixes: dict[str, _Prefix] = {}
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        # the longest prompt + reply the model was trained for (None if its config does not say)
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        # the batch-invariant attention already wraps split-softmax (generation/batch_invariance.py)
        if intervention.split_k is not None and model.config._attn_implementation != "batch_invariant":
            from personadrift.attention import split_softmax  # noqa: F401  (registers the function)

            model.set_attn_implementation("split_softmax")

    # ----------------------------------------------------------------- public API
    def forget(self, prefix: str = "") -> None:
        """Drop cached prefixes whose key starts with ``prefix`` (all by default)."""
        for key in [k for k in self._prefixes if k.startswith(prefix)]:
            del self._prefixes[key]

    def generate(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[str]]:
        """Sample ``n`` replies for each request; returns the texts in request order."""
        return [[c.text for c in per] for per in self.complete(requests, max_new_tokens=max_new_tokens)]

    @torch.inference_mode()
    def complete(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """Sample ``n`` replies for each request, with token counts and why each ended."""
        limit = max_new_tokens or self.sampling.max_new_tokens
        out: list[list[Completion]] = [[] for _ in requests]
        chunks = list(self._chunks(requests, by_length=True))
        if self.progress and len(chunks) > 1:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="batches", unit="batch", mininterval=0)
        for chunk in chunks:
            reqs = [requests[i] for i in chunk]
            for i, texts in zip(chunk, self._generate_chunk(reqs, [r.max_new_tokens or limit for r in reqs])):
                out[i] = texts
        return out

    @torch.inference_mode()
    def next_token_logprobs(self, requests: list[GenRequest]) -> torch.Tensor:
        """Log-probabilities of the first reply token, [len(requests), vocab] (no sampling).

        Interventions apply as in generation (guidance mixes the two branches' log-probs).
        """
        rows: list[torch.Tensor] = []
        for chunk in self._chunks(requests):
            reqs = [requests[i] for i in chunk]
            batch = self._prefill(reqs, expand=False)
            rows.append(self._guided_logprobs(batch))
        return torch.cat(rows)

    # positions (rows x continuation tokens) whose full-vocabulary logits one forward may hold
    CONTINUATION_POSITIONS = 2048

    @torch.inference_mode()
    def continuation_logprobs(self, requests: list[GenRequest], continuations: list[list[int]]) -> torch.Tensor:
        """Sum of the log-probabilities of each continuation's tokens, teacher-forced as the reply
        after its request's rendered prompt (generation prompt included); float64 [len(requests)].

        Interventions apply as in generation: split-softmax on intervened rows' system-prompt
        keys; guidance as paired rows, each token scored by the renormalised mix
        ``log_softmax(u + g (c - u))``, the distribution generation samples from at temperature
        1 before top-p. Requests with the same prompt share one encoding of it: the prompts of a
        chunk are encoded in one forward (re-using a cached prefix under ``key``, storing
        nothing), then all continuations after them in one more. ``n`` and ``seed`` are unused.
        """
        if len(requests) != len(continuations):
            raise ValueError(f"{len(requests)} requests but {len(continuations)} continuations")
        if any(len(c) == 0 for c in continuations):
            raise ValueError("a continuation has no tokens")
        g = self.intervention.guidance_scale
        prompt_of: dict[tuple, int] = {}  # one entry per distinct prompt
        reps: list[int] = []  # representative request of each prompt
        which: list[int] = []  # prompt index of each request
        for i, r in enumerate(requests):
            sig = (repr(r.messages), repr(r.negative_messages) if self._guided(r) else None, r.intervene, r.key)
            if sig not in prompt_of:
                prompt_of[sig] = len(reps)
                reps.append(i)
            which.append(prompt_of[sig])
        out = torch.zeros(len(requests), dtype=torch.float64)

        def mixed(logits: torch.Tensor, partner: list[int]) -> torch.Tensor:
            logp = torch.log_softmax(logits.float(), dim=-1)
            for i, p in enumerate(partner):
                if p >= 0:
                    logp[i] = torch.log_softmax(logp[p] + g * (logp[i] - logp[p]), dim=-1)
            return logp

        by_prompt: dict[int, list[int]] = {}
        for i, p in enumerate(which):
            by_prompt.setdefault(p, []).append(i)
        for chunk in self._chunks([requests[i] for i in reps]):  # chunk: prompt indices
            # 1. the prompts; the last position's logits score every continuation's first token
            rows, intervene, partner, row_of = [], [], [], {}
            for p in chunk:
                r = requests[reps[p]]
                row_of[p] = len(rows)
                rows.append(self._make_row(r.messages, r.key, False))
                intervene.append(r.intervene)
                partner.append(-1)
                if self._guided(r):
                    ukey = None if r.key is None else r.key + "#uncond"
                    rows.append(self._make_row(r.negative_messages, ukey, False))
                    intervene.append(False)
                    partner.append(-2)
                    partner[-2] = len(rows) - 1
            batch = _Batch.build(self, rows, intervene, partner)
            batch.forward_prefill()
            first = mixed(batch.logits, partner)
            prefixes = [batch._extract(i) for i in range(batch.size)]
            del batch
            # 2. the continuations after their prompt's cached KV (all but the last token)
            tail: list[tuple[int, list[_Row], list[bool], list[int]]] = []  # (request, rows, ...)
            for p in chunk:
                ci = row_of[p]
                for i in by_prompt[p]:
                    cont = [int(t) for t in continuations[i]]
                    out[i] = float(first[ci, cont[0]])
                    if len(cont) == 1:
                        continue
                    own = [_Row(rows[ci].target + cont[:-1], len(rows[ci].target), prefixes[ci],
                                rows[ci].span, None)]
                    flags, pair = [intervene[ci]], [-1]
                    if partner[ci] >= 0:
                        ui = partner[ci]
                        own.append(_Row(rows[ui].target + cont[:-1], len(rows[ui].target), prefixes[ui],
                                        None, None))
                        flags.append(False)
                        pair = [1, -2]
                    tail.append((i, own, flags, pair))
            tail.sort(key=lambda t: len(continuations[t[0]]))  # little padding within a forward
            start = 0
            while start < len(tail):
                # as many requests as fit max_batch rows and the positions cap
                stop, n_rows, width = start, 0, 0
                while stop < len(tail):
                    need = len(tail[stop][1])
                    w = max(width, len(continuations[tail[stop][0]]) - 1)
                    if stop > start and (n_rows + need > self.max_batch
                                         or (n_rows + need) * w > self.CONTINUATION_POSITIONS):
                        break
                    n_rows, width, stop = n_rows + need, w, stop + 1
                rows2, flags2, pair2, first_row = [], [], [], []
                for i, own, flags, pair in tail[start:stop]:
                    first_row.append(len(rows2))
                    pair2 += [q + len(rows2) if q >= 0 else q for q in pair]
                    rows2 += own
                    flags2 += flags
                batch = _Batch.build(self, rows2, flags2, pair2)
                batch.forward_prefill(keep=width)
                logits = batch.logits if width > 1 else batch.logits[:, None, :]
                for (i, *_), j in zip(tail[start:stop], first_row):
                    cont = torch.tensor([int(t) for t in continuations[i]], device=logits.device)
                    c = len(cont) - 1  # position m of the last c predicts cont[m + 1]
                    lp = torch.log_softmax(logits[j, width - c:].float(), dim=-1)
                    if pair2[j] >= 0:
                        lu = torch.log_softmax(logits[pair2[j], width - c:].float(), dim=-1)
                        lp = torch.log_softmax(lu + g * (lp - lu), dim=-1)
                    out[i] += float(lp.gather(1, cont[1:, None]).sum())
                start = stop
        return out

    # ----------------------------------------------------------------- batching
    def _rows_needed(self, r: GenRequest) -> int:
        return r.n * (2 if self._guided(r) else 1)

    def _guided(self, r: GenRequest) -> bool:
        return (
            r.intervene
            and self.intervention.guidance_scale is not None
            and r.negative_messages is not None
        )

    def _chunks(self, requests: list[GenRequest], by_length: bool = False):
        """Request indices in batches of at most ``max_batch`` rows. With ``by_length``, requests
        of similar prompt length share a batch (less padding); sampling is per row, so the
        grouping never changes a reply."""
        order = range(len(requests))
        if by_length and sum(self._rows_needed(r) for r in requests) > self.max_batch:
            order = sorted(order, key=lambda i: len(self.chat.render(requests[i].messages).ids))
        chunk, size = [], 0
        for i in order:
            r = requests[i]
            need = self._rows_needed(r)
            if chunk and size + need > self.max_batch:
                yield chunk
                chunk, size = [], 0
            chunk.append(i)
            size += need
        if chunk:
            yield chunk

    def _make_row(self, messages: list[dict], key: str | None, store: bool) -> _Row:
        rendered = self.chat.render(messages)
        target = rendered.ids
        past = self._prefixes.get(key) if key is not None else None
        reuse = 0
        if past is not None:
            # at least one new token must be encoded to get next-token logits
            reuse = min(_common_prefix(past.ids, target), len(target) - 1)
        return _Row(target, reuse, past, rendered.prompt_span, key if store else None)

    def _prefill(self, requests: list[GenRequest], *, expand: bool, reserve: int = 0):
        """Encode all rows' new tokens in one forward; returns the live batch state."""
        rows: list[_Row] = []
        intervene: list[bool] = []
        partner: list[int] = []  # index of the unconditional row, or -1
        units: list[list[int]] = []  # the row indices of each request
        for r in requests:
            guided = self._guided(r)
            first = len(rows)
            if expand and r.persist and r.n > 1:
                raise ValueError("a persisted request must ask for one sample")
            rows.append(self._make_row(r.messages, r.key, r.persist and expand))
            intervene.append(r.intervene)
            partner.append(-1)
            if guided:
                ukey = None if r.key is None else r.key + "#uncond"
                rows.append(self._make_row(r.negative_messages, ukey, r.persist and expand))
                intervene.append(False)
                partner.append(-2)  # marks an unconditional row
                partner[-2] = len(rows) - 1
            units.append(list(range(first, len(rows))))
        # Generating: rows of very different new-token counts prefill in separate forwards (a
        # forward costs rows x its longest row), then decode as one batch; a request's rows (a
        # guided pair) stay together. Scoring keeps its one forward.
        groups = None
        if expand:
            new_tokens = [max(len(rows[i].target) - rows[i].reuse for i in u) for u in units]
            groups = prefill_groups(new_tokens, [len(u) for u in units], self.prefill_forward_tokens)
        if groups is None or len(groups) == 1:
            batch = _Batch.build(self, rows, intervene, partner, reserve)
            batch.forward_prefill()
        else:
            parts = []
            for g in groups:
                idx = [i for u in g for i in units[u]]
                local = {old: new for new, old in enumerate(idx)}
                part = _Batch.build(self, [rows[i] for i in idx], [intervene[i] for i in idx],
                                    [local[partner[i]] if partner[i] >= 0 else partner[i] for i in idx], reserve)
                part.forward_prefill()
                parts.append((idx, part))
            batch = _Batch.merge(self, parts, rows, partner, reserve)
        if expand:
            batch.expand([r.n for r, u in zip(requests, units) for _ in u])
        return batch

    def _guided_logprobs(self, batch: _Batch) -> torch.Tensor:
        logp = torch.log_softmax(batch.logits.float(), dim=-1)
        g = self.intervention.guidance_scale
        keep = []
        for i, p in enumerate(batch.partner):
            if p == -2:
                continue
            if p >= 0:
                logp[i] = logp[p] + g * (logp[i] - logp[p])
            keep.append(i)
        return logp[keep]

    def _generate_chunk(self, requests: list[GenRequest], limits: list[int]) -> list[list[Completion]]:
        """Sample every request of one batch; request ``q`` stops after ``limits[q]`` tokens (its
        rows retire then, like rows that ended their turn)."""
        limit = max(limits)
        batch = self._prefill(requests, expand=True, reserve=limit)
        # the seed of each sampled (conditional) row, in the expanded order; unconditional
        # guidance rows follow their partner's token and draw nothing
        owner: list[tuple[int, int]] = []  # (request index, sample index) of each expanded row
        seeds: list[int] = []
        for qi, r in enumerate(requests):
            copies = 2 if self._guided(r) else 1
            for _c in range(copies):
                for s in range(r.n):
                    owner.append((qi, s))
                    seeds.append(derive_seed(r.seed, s))
        batch.owner, batch.seeds = owner, seeds
        first_rows, first_owner = list(batch.rows), list(owner)  # before rows retire
        texts: list[list[list[int]]] = [[[] for _ in range(r.n)] for r in requests]
        for step in range(limit):
            tokens = self._pick(batch, step, suppress_eos=step < self.sampling.min_new_tokens)
            finished = []
            for i in batch.live:
                tok = tokens[i]
                qi, s = batch.owner[i]
                if batch.partner[i] != -2:
                    texts[qi][s].append(tok)
                    self.stats.generated_tokens += 1
                if step == limits[qi] - 1 or tok in self.eos_ids:
                    finished.append(i)
            kept = batch.retire(finished)
            if not batch.live:
                break
            if kept is not None:  # the batch was compacted: rows were renumbered
                tokens = [tokens[i] for i in kept]
            batch.forward_step(tokens)
        prompt_len = {}  # request index -> rendered prompt length (the conditional row)
        for row, (qi, _s) in zip(first_rows, first_owner):
            prompt_len.setdefault(qi, len(row.target))
        out = []
        for qi, per in enumerate(texts):
            comps = []
            for t in per:
                ended = bool(t) and t[-1] in self.eos_ids
                body = _strip_eos(t, self.eos_ids)
                comps.append(Completion(text=self.tokenizer.decode(body, skip_special_tokens=True),
                                        prompt_tokens=prompt_len[qi], new_tokens=len(body),
                                        finish_reason="stop" if ended else "length"))
            out.append(comps)
        return out

    def _pick(self, batch: _Batch, step: int, suppress_eos: bool = False) -> list[int]:
        """The next token of every row of ``batch`` (finished rows get a placeholder).

        Only live conditional rows are scored; each draws one uniform number from its own
        counter-based stream at ``step`` (see ``generation/sampling.py``), so its token does not
        depend on the rows beside it. Guided rows mix their log-probabilities with their
        unconditional partner's; unguided rows sample from raw logits (softmax is shift-invariant).
        """
        plan = batch.pick_plan()
        logits = batch.logits
        scores = logits.index_select(0, plan.cond).float()
        if plan.guided_pos is not None:
            g = self.intervention.guidance_scale
            lp_c = torch.log_softmax(scores.index_select(0, plan.guided_pos), dim=-1)
            lp_u = torch.log_softmax(logits.index_select(0, plan.uncond).float(), dim=-1)
            scores = scores.index_copy(0, plan.guided_pos, lp_u + g * (lp_c - lp_u))
        if suppress_eos:  # after guidance: -inf in both branches would mix to nan
            scores[:, sorted(self.eos_ids)] = float("-inf")
        s = self.sampling
        if s.do_sample:
            u = row_uniforms([batch.seeds[i] for i in plan.cond_list], step)
            picked = sample_tokens(scores, u, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                   candidates=self.nucleus_candidates).tolist()
        else:
            picked = scores.argmax(dim=-1).tolist()
        tokens = [self.pad_id] * batch.size
        for i, tok in zip(plan.cond_list, picked):
            tokens[i] = tok
            p = batch.partner[i]
            if p >= 0:
                tokens[p] = tok  # the unconditional branch follows the sampled text
        return tokens


def _strip_eos(tokens: list[int], eos: set[int]) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in eos else tokens


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(x) for x in src)
    return ids


class _BufferLayer(DynamicLayer):
    """A layer cache in a pre-allocated [batch, kv_heads, capacity, head_dim] buffer.

    Lock-step decoding writes one column per step for all rows, so the keys are a view of the
    filled columns; nothing is concatenated per step (``DynamicLayer`` copies the whole cache
    every step, which at 128 rows and 600 positions moves gigabytes per token).
    """

    def __init__(self, capacity: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.length = 0
        self.buf_k = self.buf_v = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        need = self.length + n
        if self.buf_k is None or self.buf_k.shape[-2] < need:
            self._grow(key_states, max(need, self.capacity, 2 * self.length))
        self.buf_k[:, :, self.length : need] = key_states
        self.buf_v[:, :, self.length : need] = value_states
        self.length = need
        self.keys, self.values = self.buf_k[:, :, :need], self.buf_v[:, :, :need]
        return self.keys, self.values

    def _grow(self, like: torch.Tensor, capacity: int) -> None:
        b, h, _, d = like.shape
        k = like.new_empty((b, h, capacity, d))
        v = like.new_empty((b, h, capacity, d))
        if self.buf_k is not None and self.length:
            k[:, :, : self.length] = self.buf_k[:, :, : self.length]
            v[:, :, : self.length] = self.buf_v[:, :, : self.length]
        self.buf_k, self.buf_v = k, v

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buf_k is None:
            return
        n = self.length
        k = self.buf_k.new_empty((len(indices),) + self.buf_k.shape[1:])
        v = self.buf_v.new_empty((len(indices),) + self.buf_v.shape[1:])
        k[:, :, :n] = self.buf_k[:, :, :n].index_select(0, indices)
        v[:, :, :n] = self.buf_v[:, :, :n].index_select(0, indices)
        self.buf_k, self.buf_v = k, v
        self.keys, self.values = k[:, :, :n], v[:, :, :n]

    @classmethod
    def gather(cls, parts: list[tuple[list[int], _BufferLayer]], n: int, width: int, capacity: int) -> _BufferLayer:
        """One layer of ``n`` rows from ``parts`` ((row indices, layer) each), each part's filled
        columns right-aligned at ``width``; the columns before them are zeros (masked: zeros,
        not the buffer's garbage, so a masked score is never NaN)."""
        ref = parts[0][1]
        layer = cls(capacity=capacity)
        layer.lazy_initialization(ref.buf_k, ref.buf_v)
        layer.buf_k = ref.buf_k.new_empty((n, ref.buf_k.shape[1], capacity, ref.buf_k.shape[3]))
        layer.buf_v = ref.buf_v.new_empty((n, ref.buf_v.shape[1], capacity, ref.buf_v.shape[3]))
        for idx, part in parts:
            i = torch.tensor(idx, dtype=torch.long, device=ref.buf_k.device)
            a = width - part.length
            for buf, src in ((layer.buf_k, part.buf_k), (layer.buf_v, part.buf_v)):
                buf[i, :, :a] = 0
                buf[i, :, a:width] = src[:, :, : part.length]
        layer.length = width
        layer.keys, layer.values = layer.buf_k[:, :, :width], layer.buf_v[:, :, :width]
        return layer


@dataclass
class _PickPlan:
    """Which rows are sampled this step (cached until rows retire)."""

    cond_list: list[int]  # live conditional rows (physical indices)
    cond: torch.Tensor  # the same, on the device
    guided_pos: torch.Tensor | None  # positions within cond_list of guided rows
    uncond: torch.Tensor | None  # their unconditional partners (physical indices)


# Finished rows stay in the batch (their tokens are ignored) until the live ones fall to this
# fraction of it; then the batch is compacted once. Removing rows every time one finishes
# copied the whole KV cache per finishing step.
COMPACT_BELOW = 0.75


class _Batch:
    """The live state of one batched forward: KV cache, slot ids, masks, positions."""

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.cache = None
        self.logits: torch.Tensor | None = None
        self.owner: list[tuple[int, int]] = []
        self.seeds: list[int] = []
        self.live: list[int] = []
        self._plan: _PickPlan | None = None
        self._ctx_masks = None

    @classmethod
    def build(cls, engine: HFEngine, rows: list[_Row], intervene: list[bool], partner: list[int], reserve: int = 0):
        """Left-pad the rows' re-used prefixes and new tokens into one batch, with room for
        ``reserve`` generated tokens per row."""
        self = cls(engine)
        dev = engine.device
        self.rows, self.partner = rows, partner
        past_len = max(r.reuse for r in rows)
        new_len = max(len(r.target) - r.reuse for r in rows)
        n, width = len(rows), past_len + new_len
        cap = width + reserve
        self.cache = Cache(layer_class_to_replicate=functools.partial(_BufferLayer, capacity=cap))
        slot_ids = torch.full((n, cap), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((n, cap), dtype=torch.long)
        prompt = torch.zeros((n, width), dtype=torch.bool)
        first = torch.zeros((n, width), dtype=torch.bool)
        for i, r in enumerate(rows):
            new = r.target[r.reuse :]
            a = past_len - r.reuse  # first slot of the re-used prefix
            b = width - len(new)  # first slot of the new tokens
            slot_ids[i, a:past_len] = torch.tensor(r.target[: r.reuse], dtype=torch.long)
            slot_ids[i, b:width] = torch.tensor(new, dtype=torch.long)
            mask[i, a:past_len] = 1
            mask[i, b:width] = 1
            slots = list(range(a, past_len)) + list(range(b, width))
            first[i, slots[0]] = True
            if r.span is not None and intervene[i]:
                s, e = r.span
                prompt[i, [slots[j] for j in range(s, e)]] = True
            engine.stats.prompt_tokens += len(new)
            engine.stats.reused_tokens += r.reuse
        if past_len:
            like = next(r.past for r in rows if r.reuse)
            for layer in range(len(like.kv)):
                ks = [_left_pad(r.past, like, layer, 0, r.reuse, past_len) for r in rows]
                vs = [_left_pad(r.past, like, layer, 1, r.reuse, past_len) for r in rows]
                self.cache.update(torch.stack(ks).to(dev), torch.stack(vs).to(dev), layer)
        self.slot_ids, self.mask, self.prompt, self.first = slot_ids, mask, prompt, first
        self.width, self.new_len = width, new_len  # width: columns filled so far
        self.live = list(range(n))
        return self

    @classmethod
    def merge(cls, engine: HFEngine, parts: list[tuple[list[int], _Batch]], rows: list[_Row],
              partner: list[int], reserve: int = 0):
        """One batch from separately prefilled ``parts`` ((row indices, batch) each): every row
        back at its index, each part's columns right-aligned to the widest (left padding is
        masked, as in ``build``), with room for ``reserve`` generated tokens per row."""
        self = cls(engine)
        n = len(rows)
        width = max(p.width for _, p in parts)
        cap = width + reserve
        self.cache = Cache(layer_class_to_replicate=functools.partial(_BufferLayer, capacity=cap))
        for layer in range(len(parts[0][1].cache.layers)):
            self.cache.layers.append(
                _BufferLayer.gather([(idx, p.cache.layers[layer]) for idx, p in parts], n, width, cap))
            for _, p in parts:  # free each part's layer once copied: the peak stays one layer above the batch
                p.cache.layers[layer] = None
        self.slot_ids = torch.full((n, cap), engine.pad_id, dtype=torch.long)
        self.mask = torch.zeros((n, cap), dtype=torch.long)
        self.prompt = torch.zeros((n, width), dtype=torch.bool)
        self.first = torch.zeros((n, width), dtype=torch.bool)
        self.next_pos = torch.zeros(n, dtype=torch.long)
        first_logits = parts[0][1].logits
        self.logits = first_logits.new_empty((n,) + tuple(first_logits.shape[1:]))
        for idx, p in parts:
            i, a = torch.tensor(idx, dtype=torch.long), width - p.width
            self.slot_ids[i, a:width] = p.slot_ids[:, : p.width]
            self.mask[i, a:width] = p.mask[:, : p.width]
            self.prompt[i, a:] = p.prompt
            self.first[i, a:] = p.first
            self.next_pos[i] = p.next_pos
            self.logits[i.to(self.logits.device)] = p.logits
        self.rows, self.partner = rows, partner
        self.width, self.new_len = width, 0
        self.live = list(range(n))
        return self

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def _context(self):
        iv = self.engine.intervention
        if iv.split_k is None or not bool(self.prompt.any()):
            return contextlib.nullcontext()
        from personadrift.attention.context import attention_context

        if self._ctx_masks is None:  # slots past the prompt mask are never prompt, never first
            self._ctx_masks = (self.prompt.to(self.engine.device), self.first.to(self.engine.device))
        prompt, first = self._ctx_masks
        return attention_context(
            prompt,
            first_mask=first,
            split_k=iv.split_k,
            layers=iv.split_layers,
            cache=self.cache,  # sliding-window caches drop old keys; the context needs the offset
        )

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, keep: int = 1):
        """One forward over ``input_ids`` (the newest columns); keeps the logits of the last
        ``keep`` positions ([batch, vocab] when keep == 1, else [batch, keep, vocab])."""
        dev = self.engine.device
        with self._context():
            out = self.engine.model(
                input_ids=input_ids.to(dev),
                attention_mask=self.mask[:, : self.width].to(dev),
                position_ids=positions.to(dev),
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=keep,
            )
        self.engine.stats.forward_calls += 1
        self.logits = out.logits[:, -1, :] if keep == 1 else out.logits[:, -keep:, :]

    def forward_prefill(self, keep: int = 1) -> None:
        positions = (self.mask[:, : self.width].cumsum(-1) - 1).clamp(min=0)
        self.next_pos = positions[:, -1] + 1
        self._forward(self.slot_ids[:, self.width - self.new_len : self.width],
                      positions[:, -self.new_len :], keep)

    def expand(self, sizes: list[int]) -> None:
        """Repeat row i ``sizes[i]`` times (samples share the prefilled prefix)."""
        idx = [i for i, s in enumerate(sizes) for _ in range(s)]
        new_index = {}
        for j, i in enumerate(idx):
            new_index.setdefault(i, []).append(j)
        partner = []
        for j, i in enumerate(idx):
            p = self.partner[i]
            if p >= 0:
                rank = new_index[i].index(j)
                p = new_index[p][rank]
            partner.append(p)
        rows = [self.rows[i] for i in idx]
        if idx != list(range(self.size)):
            self._select(torch.tensor(idx, dtype=torch.long))
        self.rows, self.partner = rows, partner
        self.live = list(range(len(idx)))

    def _select(self, idx: torch.Tensor) -> None:
        dev_idx = idx.to(self.engine.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(dev_idx)
        self.slot_ids = self.slot_ids.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        self.prompt = self.prompt.index_select(0, idx)
        self.first = self.first.index_select(0, idx)
        self.next_pos = self.next_pos.index_select(0, idx)
        self.logits = self.logits.index_select(0, dev_idx)
        self._ctx_masks = None
        self._plan = None

    def pick_plan(self) -> _PickPlan:
        if self._plan is None:
            dev = self.engine.device
            cond = [i for i in self.live if self.partner[i] != -2]
            guided = [j for j, i in enumerate(cond) if self.partner[i] >= 0]
            self._plan = _PickPlan(
                cond_list=cond,
                cond=torch.tensor(cond, dtype=torch.long, device=dev),
                guided_pos=torch.tensor(guided, dtype=torch.long, device=dev) if guided else None,
                uncond=torch.tensor([self.partner[cond[j]] for j in guided], dtype=torch.long, device=dev)
                if guided else None,
            )
        return self._plan

    def retire(self, finished: list[int]) -> list[int] | None:
        """Persist finished rows' prefixes and stop sampling them; compact the batch when
        few rows are left. Returns the old indices of the rows kept when it compacted (the
        caller re-indexes its per-row values), else None."""
        if not finished:
            return None
        done = set(finished)
        for i in finished:
            key = self.rows[i].store_key
            if key is not None:
                self.engine._prefixes[key] = self._extract(i)
        self.live = [i for i in self.live if i not in done]
        self._plan = None
        if self.live and len(self.live) < COMPACT_BELOW * self.size:
            keep = self.live
            remap = {old: new for new, old in enumerate(keep)}
            partner = [self.partner[i] for i in keep]
            self.partner = [remap[p] if p >= 0 else p for p in partner]
            self.rows = [self.rows[i] for i in keep]
            self.owner = [self.owner[i] for i in keep]
            self.seeds = [self.seeds[i] for i in keep]
            self._select(torch.tensor(keep, dtype=torch.long))
            self.live = list(range(len(keep)))
            return keep
        return None

    def _extract(self, i: int) -> _Prefix:
        valid = self.mask[i, : self.width].bool()
        ids = self.slot_ids[i, : self.width][valid].tolist()
        dev_valid = valid.to(self.engine.device)
        host = self.engine.prefix_device
        kv = [
            (layer.keys[i][:, dev_valid].to(host, copy=True), layer.values[i][:, dev_valid].to(host, copy=True))
            for layer in self.cache.layers
        ]
        return _Prefix(ids, kv)

    def forward_step(self, tokens: list[int]) -> None:
        """Append one token per row (finished rows get a placeholder) and run one forward."""
        tok = torch.tensor(tokens, dtype=torch.long)
        if self.width == self.mask.shape[1]:  # more steps than reserved: grow the host buffers
            extra = max(16, self.width // 2)
            self.slot_ids = torch.cat([self.slot_ids, self.slot_ids.new_full((self.size, extra), self.engine.pad_id)], 1)
            self.mask = torch.cat([self.mask, self.mask.new_zeros((self.size, extra))], 1)
        self.slot_ids[:, self.width] = tok
        self.mask[:, self.width] = 1
        self.width += 1
        positions = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        self._forward(tok[:, None], positions)


def _left_pad(prefix: _Prefix | None, like: _Prefix, layer: int, which: int, reuse: int, length: int):
    """The first ``reuse`` cached positions of a row, left-padded with zeros to ``length``."""
    ref = like.kv[layer][which]
    if prefix is None or reuse == 0:
        return ref.new_zeros((ref.shape[0], length, ref.shape[2]))
    t = prefix.kv[layer][which][:, :reuse]
    if reuse == length:
        return t
    pad = t.new_zeros((t.shape[0], length - reuse, t.shape[2]))
    return torch.cat([pad, t], dim=1)
