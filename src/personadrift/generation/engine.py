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
* samples each row with its own ``torch.Generator`` seeded from the request, so a
  conversation's text is fixed by its seed, whatever else shares the batch;
* drops rows from the batch as they finish;
* runs classifier-free guidance as paired rows (with and without the system prompt) whose
  log-probabilities are mixed before sampling, and split-softmax through the registered
  attention function with a per-row mask of system-prompt key slots.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from personadrift.generation.api import Completion, GenRequest, Intervention, Sampling
from personadrift.generation.chat import ChatFormat
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
        if intervention.split_k is not None:
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
        chunks = list(self._chunks(requests))
        if self.progress and len(chunks) > 1:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="batches", unit="batch", mininterval=0)
        for chunk in chunks:
            for i, texts in zip(chunk, self._generate_chunk([requests[i] for i in chunk], limit)):
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

    def _chunks(self, requests: list[GenRequest]):
        chunk, size = [], 0
        for i, r in enumerate(requests):
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

    def _prefill(self, requests: list[GenRequest], *, expand: bool):
        """Encode all rows' new tokens in one forward; returns the live batch state."""
        rows: list[_Row] = []
        intervene: list[bool] = []
        partner: list[int] = []  # index of the unconditional row, or -1
        for r in requests:
            guided = self._guided(r)
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
        batch = _Batch.build(self, rows, intervene, partner)
        batch.forward_prefill()
        if expand:
            sizes = []
            for r in requests:
                sizes += [r.n] * (2 if self._guided(r) else 1)
            batch.expand(sizes)
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

    def _generate_chunk(self, requests: list[GenRequest], limit: int) -> list[list[Completion]]:
        batch = self._prefill(requests, expand=True)
        # generators, one per sampled (conditional) row, in the expanded order
        gens: list[torch.Generator | None] = []
        owner: list[tuple[int, int]] = []  # (request index, sample index) of each expanded row
        for qi, r in enumerate(requests):
            copies = 2 if self._guided(r) else 1
            for c in range(copies):
                for s in range(r.n):
                    owner.append((qi, s))
                    g = None
                    if self.sampling.do_sample and c == 0:
                        g = torch.Generator(device="cpu").manual_seed(derive_seed(r.seed, s))
                    gens.append(g)
        batch.owner, batch.gens = owner, gens
        first_rows, first_owner = list(batch.rows), list(owner)  # before rows retire
        texts: list[list[list[int]]] = [[[] for _ in range(r.n)] for r in requests]
        for step in range(limit):
            tokens = self._pick(batch, suppress_eos=step < self.sampling.min_new_tokens)
            finished = []
            for i, tok in enumerate(tokens):
                qi, s = batch.owner[i]
                if batch.partner[i] != -2:
                    texts[qi][s].append(tok)
                    self.stats.generated_tokens += 1
                last = step == limit - 1
                if tok in self.eos_ids or last:
                    finished.append(i)
            batch.retire(finished)
            if not batch.size:
                break
            batch.forward_step([tokens[i] for i in batch.alive_from_previous])
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

    def _pick(self, batch: _Batch, suppress_eos: bool = False) -> list[int]:
        logits = batch.logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        g = self.intervention.guidance_scale
        scores = logp.clone()
        for i, p in enumerate(batch.partner):
            if p >= 0:
                scores[i] = logp[p] + g * (logp[i] - logp[p])
        if suppress_eos:  # after guidance: -inf in both branches would mix to nan
            scores[:, sorted(self.eos_ids)] = float("-inf")
        picked = [0] * batch.size
        if self.sampling.do_sample:
            cand, probs = nucleus(scores, self.sampling.temperature, self.sampling.top_p)
        for i in range(batch.size):
            if batch.partner[i] == -2:
                continue
            if batch.gens[i] is None:
                picked[i] = int(torch.argmax(scores[i]))
            else:
                j = torch.multinomial(probs[i], 1, generator=batch.gens[i])
                picked[i] = int(cand[i, j])
        for i, p in enumerate(batch.partner):
            if p >= 0:
                picked[p] = picked[i]  # the unconditional branch follows the sampled text
        return picked


NUCLEUS_CANDIDATES = 512


def nucleus(scores: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate token ids [B, K] and their sampling probabilities [B, K] under temperature and
    nucleus (top-p) sampling, with HF's rule: a token is kept if the tokens ranked above it hold
    less than ``top_p`` of the mass.

    Sorting the whole vocabulary every step costs more than the model's forward at small batch,
    so only the top ``NUCLEUS_CANDIDATES`` are sorted; a row whose nucleus is not complete within
    them (a very flat distribution) falls back to the full sort, so the result is exact.
    """
    scores = scores / temperature
    k = min(NUCLEUS_CANDIDATES, scores.shape[-1])
    log_z = torch.logsumexp(scores, dim=-1, keepdim=True)
    top, cand = scores.topk(k, dim=-1)
    p = torch.exp(top - log_z)
    keep = (torch.cumsum(p, dim=-1) - p) < top_p
    if k < scores.shape[-1] and bool(keep[:, -1].any()):
        return nucleus_full(scores, top_p, log_z)
    p = p * keep
    return cand, p / p.sum(dim=-1, keepdim=True)


def nucleus_full(scores: torch.Tensor, top_p: float, log_z: torch.Tensor):
    top, cand = scores.sort(dim=-1, descending=True)
    p = torch.exp(top - log_z)
    p = p * ((torch.cumsum(p, dim=-1) - p) < top_p)
    return cand, p / p.sum(dim=-1, keepdim=True)


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


class _Batch:
    """The live state of one batched forward: KV cache, slot ids, masks, positions."""

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.cache = DynamicCache()
        self.logits: torch.Tensor | None = None
        self.owner: list[tuple[int, int]] = []
        self.gens: list = []
        self.alive_from_previous: list[int] = []

    @classmethod
    def build(cls, engine: HFEngine, rows: list[_Row], intervene: list[bool], partner: list[int]):
        self = cls(engine)
        dev = engine.device
        self.rows, self.partner = rows, partner
        past_len = max(r.reuse for r in rows)
        new_len = max(len(r.target) - r.reuse for r in rows)
        n = len(rows)
        slot_ids = torch.full((n, past_len + new_len), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((n, past_len + new_len), dtype=torch.long)
        prompt = torch.zeros((n, past_len + new_len), dtype=torch.bool)
        first = torch.zeros((n, past_len + new_len), dtype=torch.bool)
        for i, r in enumerate(rows):
            new = r.target[r.reuse :]
            a = past_len - r.reuse  # first slot of the re-used prefix
            b = past_len + new_len - len(new)  # first slot of the new tokens
            slot_ids[i, a:past_len] = torch.tensor(r.target[: r.reuse], dtype=torch.long)
            slot_ids[i, b:] = torch.tensor(new, dtype=torch.long)
            mask[i, a:past_len] = 1
            mask[i, b:] = 1
            slots = list(range(a, past_len)) + list(range(b, past_len + new_len))
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
        self.new_len = new_len
        return self

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def _context(self):
        iv = self.engine.intervention
        if iv.split_k is None or not bool(self.prompt.any()):
            return contextlib.nullcontext()
        from personadrift.attention.context import attention_context

        return attention_context(
            self.prompt.to(self.engine.device),
            first_mask=self.first.to(self.engine.device),
            split_k=iv.split_k,
            layers=iv.split_layers,
            cache=self.cache,  # sliding-window caches drop old keys; the context needs the offset
        )

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, keep: int = 1):
        """One forward; ``self.logits`` holds the last position's logits [rows, vocab], or with
        ``keep`` > 1 the last ``keep`` positions' [rows, keep, vocab]."""
        dev = self.engine.device
        with self._context():
            out = self.engine.model(
                input_ids=input_ids.to(dev),
                attention_mask=self.mask.to(dev),
                position_ids=positions.to(dev),
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=keep,
            )
        self.engine.stats.forward_calls += 1
        self.logits = out.logits[:, -1, :] if keep == 1 else out.logits[:, -keep:, :]

    def forward_prefill(self, keep: int = 1) -> None:
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next_pos = positions[:, -1] + 1
        self._forward(self.slot_ids[:, -self.new_len :], positions[:, -self.new_len :], keep)

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
        self._select(torch.tensor(idx, dtype=torch.long))
        self.rows, self.partner = rows, partner

    def _select(self, idx: torch.Tensor) -> None:
        dev_idx = idx.to(self.engine.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, dev_idx)
            layer.values = layer.values.index_select(0, dev_idx)
        self.slot_ids = self.slot_ids.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        self.prompt = self.prompt.index_select(0, idx)
        self.first = self.first.index_select(0, idx)
        self.next_pos = self.next_pos.index_select(0, idx)
        self.logits = self.logits.index_select(0, dev_idx)

    def retire(self, finished: list[int]) -> None:
        """Persist finished rows' prefixes and drop them from the batch."""
        done = set(finished)
        for i in finished:
            key = self.rows[i].store_key
            if key is not None:
                self.engine._prefixes[key] = self._extract(i)
        keep = [i for i in range(self.size) if i not in done]
        self.alive_from_previous = keep
        if len(keep) == self.size:
            return
        remap = {old: new for new, old in enumerate(keep)}
        partner = [self.partner[i] for i in keep]
        partner = [remap[p] if p >= 0 else p for p in partner]
        rows = [self.rows[i] for i in keep]
        owner = [self.owner[i] for i in keep]
        gens = [self.gens[i] for i in keep]
        if keep:
            self._select(torch.tensor(keep, dtype=torch.long))
        else:
            self.mask = self.mask[:0]
        self.rows, self.partner, self.owner, self.gens = rows, partner, owner, gens

    def _extract(self, i: int) -> _Prefix:
        valid = self.mask[i].bool()
        ids = self.slot_ids[i][valid].tolist()
        dev_valid = valid.to(self.engine.device)
        host = self.engine.prefix_device
        kv = [
            (layer.keys[i][:, dev_valid].to(host, copy=True), layer.values[i][:, dev_valid].to(host, copy=True))
            for layer in self.cache.layers
        ]
        return _Prefix(ids, kv)

    def forward_step(self, tokens: list[int]) -> None:
        tok = torch.tensor(tokens, dtype=torch.long)[:, None]
        self.slot_ids = torch.cat([self.slot_ids, tok], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(tok)], dim=1)
        self.prompt = torch.cat([self.prompt, torch.zeros_like(tok, dtype=torch.bool)], dim=1)
        self.first = torch.cat([self.first, torch.zeros_like(tok, dtype=torch.bool)], dim=1)
        positions = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        self._forward(tok, positions)


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
