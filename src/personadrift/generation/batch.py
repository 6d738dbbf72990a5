"""The live state of one batched forward of the engine: rows, KV cache, slot ids, masks, positions.

* Rows (a request's conditional row, and its unconditional row under guidance) are left-padded
  into one batch: re-used prefix, then new tokens, with position ids counted over real tokens
  only, so padding never shifts a row's positions.
* The KV cache is one :class:`~personadrift.generation.kv_buffers.BufferLayer` per layer (one
  column written per step, no concatenation); separately prefilled parts are merged into one
  batch, right-aligned; finished rows stay until few are left, then the batch is compacted once.
* Device placement: slot ids, the attention mask and positions are built on the host once per
  batch, then live on the inputs' device and are updated there (a decode step sends nothing but
  the rows' new token ids); the prompt masks of the attention hook are moved once per batch. Every
  other tensor is moved to the device of what it meets (each layer's device for its cache, the
  logits' device for picking rows).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache

from personadrift.generation.guidance import Pairing
from personadrift.generation.kv_buffers import BufferLayer, Prefix, left_padded

if TYPE_CHECKING:  # pragma: no cover
    from personadrift.generation.engine import HFEngine

# Finished rows stay in the batch (their tokens are ignored) until the live ones fall to this
# fraction of it; then the batch is compacted once. Removing rows every time one finishes
# copied the whole KV cache per finishing step.
COMPACT_BELOW = 0.75


@dataclass
class Row:
    """One prefilled sequence (before expansion to samples)."""

    target: list[int]  # the rendered prompt's token ids
    reuse: int  # leading tokens whose KV comes from ``past``
    past: Prefix | None
    span: tuple[int, int] | None  # the system prompt's token range (attention hooks, blanked branches)
    store_key: str | None  # where the finished row's prefix is stored (None: not stored)
    intervene: bool = False  # the attention and residual hooks act on this row
    persona: str | None = None  # its request's persona (residual hooks may act per persona)
    blank: bool = False  # its system-prompt tokens are blanked (a branch hook's row: Batch._forward)


@dataclass
class PickPlan:
    """Which rows are sampled this step (cached until rows retire), as indices on the logits'
    device."""

    sampled: list[int]  # live rows that draw tokens (physical indices)
    rows: torch.Tensor  # the same, as a tensor
    guided_pos: torch.Tensor | None  # positions within ``sampled`` of guided rows
    uncond: torch.Tensor | None  # their unconditional partners (physical indices)


class Batch:
    """One batch of rows through prefill and decoding (see the module docstring)."""

    # set by build() or merge()
    slot_ids: torch.Tensor  # [rows, capacity] token ids, pad where masked
    mask: torch.Tensor  # [rows, capacity] 1 where a slot holds a token
    prompt: torch.Tensor  # [rows, width] the system prompt's slots of intervened rows (attention hook)
    first: torch.Tensor  # [rows, width] each row's first slot
    blank: torch.Tensor | None  # [rows, width] slots whose token is blanked (None: none)
    width: int  # columns filled so far
    new_len: int
    logits: torch.Tensor  # [rows, vocab] each row's next-token logits, after the first forward

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.cache: Any = None  # a transformers Cache of BufferLayers, from build() or merge()
        self.owner: list[tuple[int, int]] = []
        self.seeds: list[int] = []
        self.live: list[int] = []
        self.rows: list[Row] = []
        self.pairing = Pairing()
        self._plan: PickPlan | None = None
        self._ctx_masks = None
        self._residual_rows = None
        self.blank = None

    @classmethod
    def build(cls, engine: HFEngine, rows: list[Row], pairing: Pairing, reserve: int = 0) -> Batch:
        """Left-pad the rows' re-used prefixes and new tokens into one batch, with room for
        ``reserve`` generated tokens per row."""
        self = cls(engine)
        self.rows, self.pairing = rows, pairing
        past_len = max(r.reuse for r in rows)
        new_len = max(len(r.target) - r.reuse for r in rows)
        n, width = len(rows), past_len + new_len
        cap = width + reserve
        self.cache = Cache(layer_class_to_replicate=functools.partial(BufferLayer, capacity=cap))  # type: ignore[arg-type]  # a factory of layers
        slot_ids = torch.full((n, cap), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((n, cap), dtype=torch.long)
        prompt = torch.zeros((n, width), dtype=torch.bool)
        first = torch.zeros((n, width), dtype=torch.bool)
        blank = torch.zeros((n, width), dtype=torch.bool) if any(r.blank for r in rows) else None
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
            if r.span is not None and r.intervene:
                s, e = r.span
                prompt[i, [slots[j] for j in range(s, e)]] = True
            if r.span is not None and r.blank:
                assert blank is not None
                s, e = r.span
                blank[i, [slots[j] for j in range(s, e)]] = True
            engine.stats.prompt_tokens += len(new)
            engine.stats.reused_tokens += r.reuse
        if past_len:
            # each layer's prefixes are stacked on that layer's device (where its keys are computed:
            # the layer's device under a device map); spilled ones come back from the host there
            like = next(r.past for r in rows if r.reuse)
            assert like is not None  # a row that re-uses a prefix has it
            for layer in range(len(like.kv)):
                ks = [left_padded(r.past, like, layer, 0, r.reuse, past_len) for r in rows]
                vs = [left_padded(r.past, like, layer, 1, r.reuse, past_len) for r in rows]
                self.cache.layers.append(BufferLayer(capacity=cap, pending=(torch.stack(ks), torch.stack(vs))))
        dev = engine.device
        self.slot_ids, self.mask, self.prompt, self.first = slot_ids.to(dev), mask.to(dev), prompt, first
        self.blank = blank
        self.width, self.new_len = width, new_len  # width: columns filled so far
        self.live = list(range(n))
        return self

    @classmethod
    def merge(cls, engine: HFEngine, parts: list[tuple[list[int], Batch]], rows: list[Row],
              pairing: Pairing, reserve: int = 0) -> Batch:
        """One batch from separately prefilled ``parts`` ((row indices, batch) each): every row
        back at its index, each part's columns right-aligned to the widest (left padding is
        masked, as in ``build``), with room for ``reserve`` generated tokens per row."""
        self = cls(engine)
        n = len(rows)
        width = max(p.width for _, p in parts)
        cap = width + reserve
        self.cache = Cache(layer_class_to_replicate=functools.partial(BufferLayer, capacity=cap))  # type: ignore[arg-type]  # a factory of layers
        for layer in range(len(parts[0][1].cache.layers)):
            self.cache.layers.append(
                BufferLayer.gather([(idx, p.cache.layers[layer]) for idx, p in parts], n, width, cap))
            for _, p in parts:  # free each part's layer once copied: the peak stays one layer above the batch
                p.cache.layers[layer] = None
        dev = engine.device
        self.slot_ids = torch.full((n, cap), engine.pad_id, dtype=torch.long, device=dev)
        self.mask = torch.zeros((n, cap), dtype=torch.long, device=dev)
        self.prompt = torch.zeros((n, width), dtype=torch.bool)
        self.first = torch.zeros((n, width), dtype=torch.bool)
        self.next_pos = torch.zeros(n, dtype=torch.long, device=dev)
        first_logits = parts[0][1].logits
        self.logits = first_logits.new_empty((n,) + tuple(first_logits.shape[1:]))
        for idx, p in parts:
            i, a = torch.tensor(idx, dtype=torch.long), width - p.width
            on_dev = i.to(dev)
            self.slot_ids[on_dev, a:width] = p.slot_ids[:, : p.width].to(dev)
            self.mask[on_dev, a:width] = p.mask[:, : p.width].to(dev)
            self.prompt[i, a:] = p.prompt
            self.first[i, a:] = p.first
            self.next_pos[on_dev] = p.next_pos.to(dev)
            self.logits[i.to(self.logits.device)] = p.logits.to(self.logits.device)
        self.rows, self.pairing = rows, pairing
        self.width, self.new_len = width, 0
        self.live = list(range(n))
        return self

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def _context(self):
        """The hooks' per-batch state for one forward: the attention hook's prompt slots, the
        residual hook's rows."""
        from personadrift.attention.blocked_decode import packed_beside

        hooks = contextlib.ExitStack()
        hooks.enter_context(packed_beside(self.cache))  # decode steps append to the packed keys
        iv = self.engine.intervention
        reweight = iv.hook("attention")
        if reweight is not None and bool(self.prompt.any()):
            from personadrift.attention.context import attention_context

            if self._ctx_masks is None:  # slots past the prompt mask are never prompt, never first
                self._ctx_masks = (self.prompt.to(self.engine.device), self.first.to(self.engine.device))
            prompt, first = self._ctx_masks
            hooks.enter_context(attention_context(
                prompt,
                first_mask=first,
                reweight=reweight,
                cache=self.cache,  # sliding-window caches drop old keys; the context needs the offset
            ))
        if iv.hook("residual") is not None and any(r.intervene for r in self.rows):
            from personadrift.generation.residual import residual_rows

            if self._residual_rows is None:
                self._residual_rows = ([r.persona for r in self.rows],
                                       torch.tensor([r.intervene for r in self.rows], dtype=torch.bool))
            hooks.enter_context(residual_rows(*self._residual_rows))
        return hooks

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, keep: int = 1,
                 blank: torch.Tensor | None = None) -> None:
        """One forward over ``input_ids`` (the newest columns); keeps the logits of the last
        ``keep`` positions ([batch, vocab] when keep == 1, else [batch, keep, vocab]). Tokens
        where ``blank`` ([batch, columns]) is set enter as the engine's blank token (its
        embedding, scaled as the model scales any token's) or, without one, as zero embeddings.
        The slot ids keep the real tokens: the prefix store matches the text, not the blank."""
        dev = self.engine.device
        inputs: dict = {"input_ids": input_ids.to(dev)}
        if blank is not None and bool(blank.any()):
            if self.engine.blank_id is not None:
                inputs["input_ids"] = inputs["input_ids"].masked_fill(blank.to(dev), self.engine.blank_id)
            else:
                embeds = self.engine.model.get_input_embeddings()(inputs.pop("input_ids"))
                inputs["inputs_embeds"] = embeds.masked_fill(blank.to(embeds.device)[..., None], 0.0)
        with self._context():
            out = self.engine.model(
                **inputs,
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
        new = slice(self.width - self.new_len, self.width)
        self._forward(self.slot_ids[:, new], positions[:, -self.new_len :], keep,
                      None if self.blank is None else self.blank[:, new])

    def forward_step(self, tokens: torch.Tensor | list[int]) -> None:
        """Append one token per row (finished rows get a placeholder) and run one forward."""
        tok = torch.as_tensor(tokens, dtype=torch.long).to(self.engine.device)
        if self.width == self.mask.shape[1]:  # more steps than reserved: grow the buffers
            extra = max(16, self.width // 2)
            pads = self.slot_ids.new_full((self.size, extra), self.engine.pad_id)
            self.slot_ids = torch.cat([self.slot_ids, pads], 1)
            self.mask = torch.cat([self.mask, self.mask.new_zeros((self.size, extra))], 1)
        self.slot_ids[:, self.width] = tok
        self.mask[:, self.width] = 1
        self.width += 1
        positions = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        self._forward(tok[:, None], positions)

    # ----------------------------------------------------------------- rows
    def expand(self, sizes: list[int]) -> None:
        """Repeat row i ``sizes[i]`` times (samples share the prefilled prefix)."""
        idx = [i for i, s in enumerate(sizes) for _ in range(s)]
        rows = [self.rows[i] for i in idx]
        pairing = self.pairing.select(idx)
        if idx != list(range(self.size)):
            self._select(torch.tensor(idx, dtype=torch.long))
        self.rows, self.pairing = rows, pairing
        self.live = list(range(len(idx)))

    def _select(self, idx: torch.Tensor) -> None:
        for layer in self.cache.layers:
            layer.batch_select_indices(idx)
        on_dev = idx.to(self.slot_ids.device)
        self.slot_ids = self.slot_ids.index_select(0, on_dev)
        self.mask = self.mask.index_select(0, on_dev)
        self.prompt = self.prompt.index_select(0, idx)
        self.first = self.first.index_select(0, idx)
        self.next_pos = self.next_pos.index_select(0, on_dev)
        self.logits = self.logits.index_select(0, idx.to(self.logits.device))
        self._ctx_masks = None
        self._residual_rows = None
        self._plan = None

    def retire(self, finished: list[int], store) -> list[int] | None:
        """Stop sampling the ``finished`` rows, storing the prefixes of those that have a store
        key in ``store`` (a :class:`~personadrift.generation.kv_buffers.PrefixStore`); compact
        the batch when few rows are left. Returns the old indices of the rows kept when it
        compacted (the caller re-indexes its per-row values), else None."""
        if not finished:
            return None
        done = set(finished)
        for i in finished:
            key = self.rows[i].store_key
            if key is not None:
                store.put(key, self.extract(i))  # on each layer's device: the store places it
        self.live = [i for i in self.live if i not in done]
        self._plan = None
        if self.live and len(self.live) < COMPACT_BELOW * self.size:
            keep = self.live
            self.pairing = self.pairing.select(keep)
            self.rows = [self.rows[i] for i in keep]
            self.owner = [self.owner[i] for i in keep]
            self.seeds = [self.seeds[i] for i in keep]
            self._select(torch.tensor(keep, dtype=torch.long))
            self.live = list(range(len(keep)))
            return keep
        return None

    def extract(self, i: int, device: torch.device | None = None) -> Prefix:
        """Row ``i``'s token ids and KV (its real slots only), copied to ``device`` (None: each
        layer's own)."""
        valid = self.mask[i, : self.width].bool()
        ids = self.slot_ids[i, : self.width][valid].tolist()
        return Prefix(ids, [layer.row(i, valid, device) for layer in self.cache.layers])

    # ----------------------------------------------------------------- scores
    def pick_plan(self) -> PickPlan:
        if self._plan is None:
            dev = self.logits.device
            sampled = self.pairing.sampled(self.live)
            guided = [j for j, i in enumerate(sampled) if self.pairing.partner(i) is not None]
            self._plan = PickPlan(
                sampled=sampled,
                rows=torch.tensor(sampled, dtype=torch.long, device=dev),
                guided_pos=torch.tensor(guided, dtype=torch.long, device=dev) if guided else None,
                uncond=torch.tensor([self.pairing.partner(sampled[j]) for j in guided], dtype=torch.long, device=dev)
                if guided else None,
            )
        return self._plan

    def row_tokens(self, picked: torch.Tensor, pad_id: int) -> torch.Tensor:
        """The next token of every row [size] from the tokens ``picked`` for the sampled rows (on
        the logits' device): unconditional rows follow their partner's, finished rows get
        ``pad_id``."""
        plan = self.pick_plan()
        tokens = torch.full((self.size,), pad_id, dtype=torch.long, device=picked.device)
        tokens[plan.rows] = picked
        if plan.guided_pos is not None:
            assert plan.uncond is not None
            tokens[plan.uncond] = picked.index_select(0, plan.guided_pos)  # follows the sampled text
        return tokens

    def sampling_scores(self, branch) -> torch.Tensor:
        """float32 scores [sampled rows, vocab] of the live sampled rows (``pick_plan().sampled``):
        the raw logits of plain rows, the ``branch`` hook's mix of paired ones."""
        plan = self.pick_plan()
        scores = self.logits.index_select(0, plan.rows).float()
        if plan.guided_pos is not None:
            assert plan.uncond is not None and branch is not None  # paired rows come from a branch hook
            mixed = branch.mix(scores.index_select(0, plan.guided_pos), self.logits.index_select(0, plan.uncond))
            scores = scores.index_copy(0, plan.guided_pos, mixed)
        return scores

    def next_token_logprobs(self, branch) -> torch.Tensor:
        """float32 log-probabilities [sampled rows, vocab] of every sampled row's next token (the
        ``branch`` hook's mix, not renormalised, for paired rows), in row order."""
        logp = torch.log_softmax(self.logits.float(), dim=-1)
        sampled = self.pairing.sampled(list(range(self.size)))
        for i in sampled:
            p = self.pairing.partner(i)
            if p is not None:
                assert branch is not None  # a row has a partner only under a branch hook
                logp[i] = branch.mix(self.logits[i], self.logits[p])
        return logp.index_select(0, torch.tensor(sampled, dtype=torch.long, device=logp.device))
