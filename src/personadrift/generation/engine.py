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
* applies the intervention's hooks (``generation/hooks.py``) to intervened requests without
  knowing the methods that made them: a branch hook as paired rows (the request's and its
  second branch's) whose logits are mixed before sampling (``generation/guidance.py``), an
  attention hook through the registered attention function with a per-row mask of system-prompt
  key slots, a residual hook as forward hooks on its decoder layers (``generation/residual.py``).

The batch (``generation/batch.py``) and the KV buffers and prefix store
(``generation/kv_buffers.py``) live in their own modules; this one schedules requests into
batches, runs the decode loop and scores continuations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from personadrift.generation import memory
from personadrift.generation.api import Completion, GenRequest, Intervention, Sampling
from personadrift.generation.batch import Batch, Row
from personadrift.generation.chat import ChatFormat
from personadrift.generation.guidance import Pairing
from personadrift.generation.kv_buffers import PrefixStore
from personadrift.generation.sampling import NUCLEUS_CANDIDATES, row_uniforms, sample_tokens
from personadrift.seeding import derive_seed


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


def prefill_groups(new_tokens: list[int], rows: list[int],
                   forward_tokens: int = PREFILL_FORWARD_TOKENS) -> list[list[int]]:
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
        identity: dict | None = None,
    ):
        self.model = model
        # provenance of what generated (weights, chat template); runtime/factory.py fills it
        self.identity = identity or {}
        self.tokenizer = tokenizer
        self.chat = chat or ChatFormat(tokenizer)
        self.sampling = sampling
        self.intervention = intervention
        self.branch = intervention.hook("branch")  # mixes a second row's logits with each intervened request's
        self.max_batch = max_batch
        self.progress = progress  # a tqdm bar per generate call of several batches (rule logs)
        self.nucleus_candidates = NUCLEUS_CANDIDATES  # top tokens sorted before the full-sort fallback
        self.prefill_forward_tokens = PREFILL_FORWARD_TOKENS  # see prefill_groups
        self.stats = EngineStats()
        self.prefixes = PrefixStore("cpu")  # see PrefixStore: on the layers' devices within a budget
        # where input ids go: the embeddings' device (under a device map each layer's inputs
        # are moved to that layer's device by accelerate's hooks; its KV cache lives there)
        self.device = model.get_input_embeddings().weight.device
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        # the token a branch row's blanked prompt tokens enter as (None: zero embeddings)
        self.blank_id = _blank_id(self.branch, tokenizer, self.pad_id)
        self._eos_index: dict[torch.device, torch.Tensor] = {}  # eos_ids as a tensor, per device
        # the longest prompt + reply the model was trained for (None if its config does not say)
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        if intervention.hook("residual") is not None:
            from personadrift.generation.residual import install_residual_hook

            install_residual_hook(model, intervention.hook("residual"))
        # the batch-invariant attention already wraps the hooked attention (generation/batch_invariance.py)
        from personadrift.attention.invariant import NAMES as INVARIANT

        if intervention.hook("attention") is not None and model.config._attn_implementation not in INVARIANT:
            from personadrift.attention import split_softmax  # noqa: F401  (registers the function)

            model.set_attn_implementation("split_softmax")
        else:  # grouped-query models attend to their KV heads unrepeated (attention/grouped.py)
            from personadrift.attention.grouped import use_grouped_keys

            use_grouped_keys(model)

    # ----------------------------------------------------------------- public API
    def forget(self, prefix: str = "") -> None:
        """Drop cached prefixes whose key starts with ``prefix`` (all by default)."""
        self.prefixes.forget(prefix)

    def generate(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[str]]:
        """Sample ``n`` replies for each request; returns the texts in request order."""
        return [[c.text for c in per] for per in self.complete(requests, max_new_tokens=max_new_tokens)]

    @torch.inference_mode()
    def complete(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """Sample ``n`` replies for each request, with token counts and why each ended."""
        limit = max_new_tokens or self.sampling.max_new_tokens
        out: list[list[Completion]] = [[] for _ in requests]
        # memory hook: rows per forward from the device's free memory (generation/memory.py)
        rows = memory.call_rows(self, requests, max(r.max_new_tokens or limit for r in requests) if requests else 0)
        chunks = list(self._chunks(requests, by_length=True, rows=rows))
        if self.progress and len(chunks) > 1:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="batches", unit="batch", mininterval=0)
        for chunk in chunks:
            reqs = [requests[i] for i in chunk]
            # memory hook: a chunk that runs out of device memory runs again in halves
            done = memory.halving_on_oom(
                self, reqs, lambda part: self._generate_chunk(part, [r.max_new_tokens or limit for r in part]),
                budget=max(r.max_new_tokens or limit for r in reqs))
            for i, texts in zip(chunk, done):
                out[i] = texts
        return out

    @torch.inference_mode()
    def next_token_logprobs(self, requests: list[GenRequest]) -> torch.Tensor:
        """Log-probabilities of the first reply token, [len(requests), vocab] (no sampling).

        Interventions apply as in generation (guidance mixes the two branches' log-probs).
        """
        rows: list[torch.Tensor] = []
        for chunk in self._chunks(requests, rows=memory.call_rows(self, requests, 1)):  # memory hook
            reqs = [requests[i] for i in chunk]
            rows += memory.halving_on_oom(  # memory hook
                self, reqs,
                lambda part: list(
                    self._prefill(part, expand=False).next_token_logprobs(self.branch)),
                budget=1)
        return torch.stack(rows)

    # positions (rows x continuation tokens) whose full-vocabulary logits one forward may hold
    CONTINUATION_POSITIONS = 2048

    @torch.inference_mode()
    def continuation_logprobs(self, requests: list[GenRequest], continuations: list[list[int]]) -> torch.Tensor:
        """:meth:`_continuation_logprobs` in calls of the rows the device holds at the longest
        continuation (``memory.call_rows``), each run again in halves if it runs out of memory."""
        if len(requests) != len(continuations):
            raise ValueError(f"{len(requests)} requests but {len(continuations)} continuations")
        if any(len(c) == 0 for c in continuations):
            raise ValueError("a continuation has no tokens")
        budget = max((len(c) for c in continuations), default=0)
        rows = memory.call_rows(self, requests, budget)  # memory hook
        # at most ``rows`` rows of distinct prompts per call
        chunks: list[list[int]] = [[]]
        seen: set = set()
        size = 0
        for i, r in enumerate(requests):
            sig = self._prompt_signature(r)
            if sig not in seen:
                if chunks[-1] and size + self._rows_needed(r) > rows:
                    chunks.append([])
                    seen, size = set(), 0
                seen.add(sig)
                size += self._rows_needed(r)
            chunks[-1].append(i)
        out: list[torch.Tensor] = []
        for chunk in chunks if requests else []:
            part = [(requests[i], continuations[i]) for i in chunk]
            out += memory.halving_on_oom(  # memory hook
                self, [r for r, _ in part],
                lambda pairs: list(self._continuation_logprobs([r for r, _ in pairs], [c for _, c in pairs])),
                budget=budget, items=part)
        return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)

    def _continuation_logprobs(self, requests: list[GenRequest], continuations: list[list[int]]) -> torch.Tensor:
        """Sum of the log-probabilities of each continuation's tokens, teacher-forced as the reply
        after its request's rendered prompt (generation prompt included); float64 [len(requests)].

        Interventions apply as in generation: the hooks on intervened rows; a branch hook as
        paired rows, each token scored by the renormalised mix (guidance:
        ``log_softmax(u + g (c - u))``), the distribution generation samples from at temperature
        1 before top-p. Requests with the same prompt share one encoding of it: the prompts of a
        chunk are encoded in one forward (re-using a cached prefix under ``key``, storing
        nothing), then all continuations after them in one more. ``n`` and ``seed`` are unused.
        """
        branch = self.branch  # rows have partners only when there is one
        prompt_of: dict[tuple, int] = {}  # one entry per distinct prompt
        reps: list[int] = []  # representative request of each prompt
        which: list[int] = []  # prompt index of each request
        for i, r in enumerate(requests):
            sig = self._prompt_signature(r)
            if sig not in prompt_of:
                prompt_of[sig] = len(reps)
                reps.append(i)
            which.append(prompt_of[sig])
        out = torch.zeros(len(requests), dtype=torch.float64)
        by_prompt: dict[int, list[int]] = {}
        for i, p in enumerate(which):
            by_prompt.setdefault(p, []).append(i)
        for chunk in self._chunks([requests[i] for i in reps]):  # chunk: prompt indices
            # 1. the prompts; the last position's logits score every continuation's first token
            rows, pairing = self._request_rows([requests[reps[p]] for p in chunk], store=False)
            row_of = {p: j for p, j in zip(chunk, self._first_rows(rows, pairing))}
            batch = Batch.build(self, rows, pairing)
            batch.forward_prefill()
            last = batch.logits
            first = torch.log_softmax(last.float(), dim=-1)
            prefixes = [batch.extract(i) for i in range(batch.size)]  # on each layer's device
            del batch
            # 2. the continuations after their prompt's cached KV (all but the last token)
            tail: list[tuple[int, list[Row]]] = []  # (request, its rows: conditional first)
            for p in chunk:
                ci = row_of[p]
                ui = pairing.partner(ci)
                lp0 = first[ci] if ui is None else torch.log_softmax(
                    branch.mix(last[ci], last[ui]), dim=-1)
                for i in by_prompt[p]:
                    cont = [int(t) for t in continuations[i]]
                    out[i] = float(lp0[cont[0]])
                    if len(cont) == 1:
                        continue
                    own = [dataclasses.replace(rows[j], target=rows[j].target + cont[:-1],
                                               reuse=len(rows[j].target), past=prefixes[j], store_key=None)
                           for j in ([ci] if ui is None else [ci, ui])]
                    tail.append((i, own))
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
                rows2: list[Row] = []
                pairs: dict[int, int] = {}
                first_row: list[int] = []
                for _i, own in tail[start:stop]:
                    first_row.append(len(rows2))
                    if len(own) == 2:
                        pairs[len(rows2)] = len(rows2) + 1
                    rows2 += own
                pairing2 = Pairing(pairs)
                batch = Batch.build(self, rows2, pairing2)
                batch.forward_prefill(keep=width)
                logits = batch.logits if width > 1 else batch.logits[:, None, :]
                for (i, _own), j in zip(tail[start:stop], first_row):
                    cont_ids = torch.tensor([int(t) for t in continuations[i]], device=logits.device)
                    c = len(cont_ids) - 1  # position m of the last c predicts cont_ids[m + 1]
                    u = pairing2.partner(j)
                    if u is None:
                        lp = torch.log_softmax(logits[j, width - c:].float(), dim=-1)
                    else:
                        lp = torch.log_softmax(branch.mix(logits[j, width - c:], logits[u, width - c:]), dim=-1)
                    out[i] += float(lp.gather(1, cont_ids[1:, None]).sum())
                start = stop
        return out

    @torch.inference_mode()
    def continuation_states(self, requests: list[GenRequest], continuations: list[list[int]], *,
                            layer: int | None = None, store: bool = False):
        """Teacher-forced, request by request: yields ``(i, logprobs, hidden)`` for request ``i``
        with ``logprobs`` float32 [len(cont), vocab] (row m: the next-token distribution after
        the prompt and ``cont[:m]``, the one :meth:`continuation_logprobs` scores ``cont[m]``
        from, interventions applied the same way) and ``hidden`` float32 [len(cont), hidden] the
        output of decoder layer ``layer`` at the continuation's own tokens (after any residual
        hook on that layer), or None without ``layer``.

        Full distributions are large (vocab floats per position), so requests go in forwards of
        at most ``max_batch`` rows and ``CONTINUATION_POSITIONS // 2`` kept positions, and each
        forward's tensors are dropped once its requests were yielded: the caller keeps what it
        reduces them to. Prompts are encoded with their continuation, re-using the longest
        prefix cached under the request's ``key`` when the call starts, requests with similar
        counts of tokens to encode sharing a forward; they are yielded in that order, not in
        ``requests`` order. With ``store``, each persisted request's prompt and continuation are
        cached under its key, so a later call's request that extends them (the next round of the
        same dialog) encodes only the rest.
        """
        if len(requests) != len(continuations):
            raise ValueError(f"{len(requests)} requests but {len(continuations)} continuations")
        if any(len(c) == 0 for c in continuations):
            raise ValueError("a continuation has no tokens")
        captured: list[torch.Tensor] = []
        handle = None
        if layer is not None:
            from personadrift.generation.residual import decoder_layers

            layers = decoder_layers(self.model)
            if not 0 <= layer < len(layers):
                raise ValueError(f"layer {layer}: the model has {len(layers)} decoder layers")

            def keep_output(module, args, output):
                captured.append(output[0] if isinstance(output, tuple) else output)

            handle = layers[layer].register_forward_hook(keep_output)
        try:
            # every request's rows now (a later forward's stores serve the next call, not this one),
            # then forwards of requests of similar new-token counts: little padding in each
            built = []
            for r, c in zip(requests, continuations):
                own, pairing = self._request_rows([r], store=store)
                cont = [int(t) for t in c]
                built.append(([dataclasses.replace(row, target=row.target + cont) for row in own],
                              pairing.partner(0) is not None))
            new_tokens = [max(len(row.target) - row.reuse for row in own) for own, _ in built]
            order = sorted(range(len(requests)), key=lambda i: (new_tokens[i], len(continuations[i])))
            cap = self.CONTINUATION_POSITIONS // 2
            start = 0
            while start < len(order):
                stop, n_rows, keep = start, 0, 0
                while stop < len(order):
                    need = len(built[order[stop]][0])
                    k = max(keep, len(continuations[order[stop]]) + 1)
                    if stop > start and (n_rows + need > self.max_batch or (n_rows + need) * k > cap):
                        break
                    n_rows, keep, stop = n_rows + need, k, stop + 1
                chunk = order[start:stop]
                rows: list[Row] = []
                pairs: dict[int, int] = {}
                first_row: list[int] = []
                for i in chunk:
                    own, paired = built[i]
                    first_row.append(len(rows))
                    if paired:
                        pairs[len(rows)] = len(rows) + 1
                    rows += own
                pairing = Pairing(pairs)
                captured.clear()
                batch = Batch.build(self, rows, pairing)
                batch.forward_prefill(keep=keep)
                logits = batch.logits
                hidden = captured[-1] if captured else None
                for j, row in enumerate(rows):
                    if row.store_key is not None:
                        self.prefixes.put(row.store_key, batch.extract(j))
                for i, j in zip(chunk, first_row):
                    n = len(continuations[i])
                    own_logits = logits[j, keep - 1 - n : keep - 1]  # position m predicts cont[m]
                    u = pairing.partner(j)
                    if u is None:
                        lp = torch.log_softmax(own_logits.float(), dim=-1)
                    else:
                        lp = torch.log_softmax(self.branch.mix(own_logits, logits[u, keep - 1 - n : keep - 1]), dim=-1)
                    h = None if hidden is None else hidden[j, -n:].float()
                    yield i, lp, h
                del batch, logits, hidden
                captured.clear()
                start = stop
        finally:
            if handle is not None:
                handle.remove()

    # ----------------------------------------------------------------- batching
    def _prompt_signature(self, r: GenRequest) -> tuple:
        """What makes two scoring requests share one encoding of their prompt."""
        return (repr(r.messages), repr(r.negative_messages) if self._guided(r) else None, r.intervene, r.key,
                r.persona)  # a residual hook may act per persona

    def _rows_needed(self, r: GenRequest) -> int:
        return r.n * (2 if self._guided(r) else 1)

    def _guided(self, r: GenRequest) -> bool:
        return r.intervene and self.branch is not None and r.negative_messages is not None

    def _chunks(self, requests: list[GenRequest], by_length: bool = False, rows: int | None = None):
        """Request indices in batches of at most ``rows`` rows (default ``max_batch``). With
        ``by_length``, requests of similar prompt length share a batch (less padding); sampling
        is per row, so the grouping never changes a reply."""
        rows = rows or self.max_batch
        order: list[int] = list(range(len(requests)))
        if by_length and sum(self._rows_needed(r) for r in requests) > rows:
            order = sorted(order, key=lambda i: len(self.chat.render(requests[i].messages).ids))
        chunk: list[int] = []
        size = 0
        for i in order:
            r = requests[i]
            need = self._rows_needed(r)
            if chunk and size + need > rows:
                yield chunk
                chunk, size = [], 0
            chunk.append(i)
            size += need
        if chunk:
            yield chunk

    def _make_row(self, messages: list[dict], key: str | None, store: bool, intervene: bool,
                  persona: str | None = None, blank: bool = False) -> Row:
        rendered = self.chat.render(messages)
        target = rendered.ids
        past = self.prefixes.get(key)
        reuse = 0
        if past is not None:
            # at least one new token must be encoded to get next-token logits
            reuse = min(_common_prefix(past.ids, target), len(target) - 1)
        return Row(target, reuse, past, rendered.prompt_span, key if store else None, intervene, persona, blank)

    def _request_rows(self, requests: list[GenRequest], *, store: bool) -> tuple[list[Row], Pairing]:
        """The rows of ``requests`` in order: each request's conditional row, followed, when it
        has a branch, by the branch's row (its ``negative_messages``, cached under
        ``key#uncond``, never intervened on, its system prompt blanked if the branch hook says
        so); with ``store``, persisted requests' rows store their prefixes when they finish."""
        rows: list[Row] = []
        pairs: dict[int, int] = {}
        for r in requests:
            rows.append(self._make_row(r.messages, r.key, store and r.persist, r.intervene, r.persona))
            if self._guided(r):
                assert r.negative_messages is not None and self.branch is not None  # _guided checks it
                ukey = None if r.key is None else r.key + "#uncond"
                pairs[len(rows) - 1] = len(rows)
                rows.append(self._make_row(r.negative_messages, ukey, store and r.persist, False,
                                           blank=self.branch.blank_prompt))
        return rows, Pairing(pairs)

    @staticmethod
    def _first_rows(rows: list[Row], pairing: Pairing) -> list[int]:
        """The index of each request's first (conditional) row."""
        return pairing.sampled(list(range(len(rows))))

    def _prefill(self, requests: list[GenRequest], *, expand: bool, reserve: int = 0) -> Batch:
        """Encode all rows' new tokens in one forward; returns the live batch state."""
        if expand and any(r.persist and r.n > 1 for r in requests):
            raise ValueError("a persisted request must ask for one sample")
        rows, pairing = self._request_rows(requests, store=expand)
        starts = self._first_rows(rows, pairing) + [len(rows)]
        units = [list(range(a, b)) for a, b in zip(starts, starts[1:])]  # the row indices of each request
        # Generating: rows of very different new-token counts prefill in separate forwards (a
        # forward costs rows x its longest row), then decode as one batch; a request's rows (a
        # guided pair) stay together. Scoring keeps its one forward.
        groups = None
        if expand:
            new_tokens = [max(len(rows[i].target) - rows[i].reuse for i in u) for u in units]
            groups = prefill_groups(new_tokens, [len(u) for u in units], self.prefill_forward_tokens)
        if groups is None or len(groups) == 1:
            batch = Batch.build(self, rows, pairing, reserve)
            batch.forward_prefill()
        else:
            parts = []
            for g in groups:
                idx = [i for u in g for i in units[u]]
                part = Batch.build(self, [rows[i] for i in idx], pairing.select(idx), reserve)
                part.forward_prefill()
                parts.append((idx, part))
            batch = Batch.merge(self, parts, rows, pairing, reserve)
        if expand:
            batch.expand([r.n for r, u in zip(requests, units) for _ in u])
        return batch

    def _guided_logprobs(self, batch: Batch) -> torch.Tensor:
        """float32 next-token log-probabilities of each request's row (guided: the mix)."""
        return batch.next_token_logprobs(self.branch)

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
            host = tokens.tolist()  # the one transfer of a decode step: the rows' token ids
            finished = []
            for i in batch.live:
                tok = host[i]
                qi, s = batch.owner[i]
                if not batch.pairing.is_unconditional(i):
                    texts[qi][s].append(tok)
                    self.stats.generated_tokens += 1
                if step == limits[qi] - 1 or tok in self.eos_ids:
                    finished.append(i)
            kept = batch.retire(finished, self.prefixes)
            if not batch.live:
                break
            if kept is not None:  # the batch was compacted: rows were renumbered
                tokens = tokens.index_select(0, torch.tensor(kept, dtype=torch.long, device=tokens.device))
            batch.forward_step(tokens)
        prompt_len: dict[int, int] = {}  # request index -> rendered prompt length (the conditional row)
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

    def _pick(self, batch: Batch, step: int, suppress_eos: bool = False) -> torch.Tensor:
        """The next token of every row of ``batch`` [size], on the logits' device (finished rows
        get a placeholder).

        Only live sampled rows are scored; each draws one uniform number from its own
        counter-based stream at ``step`` (see ``generation/sampling.py``), so its token does not
        depend on the rows beside it. Guided rows mix their log-probabilities with their
        unconditional partner's; unguided rows sample from raw logits (softmax is shift-invariant).
        """
        plan = batch.pick_plan()
        scores = batch.sampling_scores(self.branch)
        if suppress_eos:  # after guidance: -inf in both branches would mix to nan
            eos = self._eos_index.get(scores.device)
            if eos is None:
                eos = self._eos_index[scores.device] = torch.tensor(sorted(self.eos_ids), device=scores.device)
            scores.index_fill_(1, eos, float("-inf"))
        s = self.sampling
        if s.do_sample:
            u = row_uniforms([batch.seeds[i] for i in plan.sampled], step)
            picked = sample_tokens(scores, u, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                   candidates=self.nucleus_candidates)
        else:
            picked = scores.argmax(dim=-1)
        return batch.row_tokens(picked, self.pad_id)


def _strip_eos(tokens: list[int], eos: set[int]) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in eos else tokens


def _blank_id(branch, tokenizer, pad_id: int) -> int | None:
    """The id of the special token the branch hook blanks with (None: zero embeddings)."""
    name = getattr(branch, "blank_token", None) if branch is not None and branch.blank_prompt else None
    if name is None:
        return None
    tid = pad_id if name == "pad" else getattr(tokenizer, f"{name}_token_id", None)
    if not isinstance(tid, int):
        raise ValueError(f"the branch hook blanks the prompt with the tokenizer's {name!r} token, but this "
                         f"tokenizer has none ({name}_token_id is {tid!r}); choose another token or zero embeddings")
    return tid


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(x) for x in src)
    return ids
