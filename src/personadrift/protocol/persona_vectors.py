"""Persona vectors: one direction per persona in the residual stream at a chosen layer.

A persona's vector is the difference of mean activations with and without its system prompt
(Chen et al. 2025, "Persona vectors", arXiv 2507.21509), measured on answers the model already
gave in round-0 calibration (``protocol/calibration.py``): each persona's probe answered after its
system prompt, and the same probe answered with no system prompt.

* **Which activations.** The output of decoder layer ``L`` (``model.model.layers[L]``, before the
  final norm; ``hidden_states[L + 1]`` of a plain forward with ``output_hidden_states``) at every
  token of an answer, teacher-forced after the prompt that produced it (the rendered chat prompt
  with its generation prompt, then the answer's tokens). Per answer the token states are averaged,
  then answers are averaged per condition: v = mean(with persona) - mean(without).
* **Why teacher-forced calibration answers.** The answers are generated anyway to select the
  study's personas, so the vectors cost one forward per answer (seconds on the embedded model) and
  no generation; they are the model's own answers under each condition, as in Chen et al., who
  average over response tokens, not prompt tokens (the prompt tokens with and without a system
  prompt differ in length and content, so their means mostly measure the template).
* **Which answers.** As Chen et al. keep only responses whose judge shows the trait (and, without
  the trait prompt, those that do not), answers with the persona count if its judge scored them
  >= 0.5 and answers without it if scored < 0.5; a persona with no answer left on a side keeps all
  of that side's answers (the sidecar says so). Empty answers carry no tokens and are skipped.

Alongside the vectors, the file records what steering needs to put them in units that compare
across models: the mean norm of the residual stream over the same tokens (``residual_norm``), and
per persona the 25th percentile of its own answers' projections on its unit vector
(``cap_threshold``, the floor activation capping raises projections to; the assistant axis paper,
arXiv 2601.10387, caps at a low percentile of typical projections). For requests that name no
persona (MMLU), the threshold of the pool's mean direction is stored too (``pool_threshold``).

The file (``results/<study>/persona_vectors/layer<L>.safetensors``, :func:`vectors_path`) holds one
float32 tensor [hidden] per kept persona, keyed by persona id; its metadata has the layer and
the numbers above; the JSON sidecar beside it (``layer<L>.json``) has the provenance: model
identity, layer, the sha256 of the teacher-forced texts, the sha256 of the tensors file and the
answers used per persona. Read it with :func:`load_persona_vectors`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from personadrift.errors import InputError

SCORE_SPLIT = 0.5  # an answer with the persona counts if its judge scored at least this; without, below
CAP_QUANTILE = 0.25  # capping's floor: this quantile of a persona's own answers' projections


def vectors_path(results: str | Path, layer) -> str:
    """The vectors file of a study's results folder at ``layer`` (an int, or a wildcard string)."""
    return str(Path(results) / "persona_vectors" / f"layer{layer}.safetensors")


def sidecar_path(path: str | Path) -> Path:
    """The JSON provenance beside a vectors file."""
    return Path(path).with_suffix(".json")


@dataclass
class PersonaVectors:
    """What a vectors file holds: the layer, one float32 vector [hidden] per persona id, and the
    numbers steering uses (see the module docstring)."""

    layer: int
    vectors: dict  # persona id -> torch.Tensor [hidden], float32
    residual_norm: float
    cap_threshold: dict = field(default_factory=dict)  # persona id -> float
    pool_threshold: float = 0.0


def load_persona_vectors(path: str | Path):
    """``(layer, {persona_id: torch.Tensor [hidden] float32})`` of a vectors file."""
    pv = read_persona_vectors(path)
    return pv.layer, pv.vectors


def read_persona_vectors(path: str | Path) -> PersonaVectors:
    """The whole vectors file (vectors and steering's numbers)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "no persona vectors file here (rule persona_vectors writes it)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        vectors = {key: f.get_tensor(key).float() for key in f.keys()}
    try:
        return PersonaVectors(layer=int(meta["layer"]), vectors=vectors, residual_norm=float(meta["residual_norm"]),
                              cap_threshold={k: float(v) for k, v in json.loads(meta["cap_threshold"]).items()},
                              pool_threshold=float(meta["pool_threshold"]))
    except (KeyError, ValueError) as e:
        raise InputError(path, "metadata", f"not a persona vectors file ({type(e).__name__}: {e})") from None


def unit_directions(vectors: dict):
    """``(ids, U, pool)``: the persona ids sorted, their unit vectors as rows of U [P, hidden],
    and the pool's mean direction (the mean of the unit vectors, normalised): the direction of a
    request that names no persona."""
    import torch

    ids = sorted(vectors)
    units = torch.stack([vectors[i] / vectors[i].norm() for i in ids])
    mean = units.mean(0)
    return ids, units, mean / mean.norm()


# ---------------------------------------------------------------------------- computing them
@dataclass(frozen=True)
class Example:
    """One teacher-forced answer: the messages it answered and its text."""

    persona: str  # whose vector it counts towards
    with_persona: bool
    messages: tuple  # ((role, content), ...)
    answer: str


def examples(personas: Sequence, calibration) -> list[Example]:
    """The answers each persona's vector is computed from (the module docstring says which),
    from the calibration table (``protocol.calibration.calibration_table``'s columns)."""
    out: list[Example] = []
    for p in personas:
        rows = calibration[calibration["persona"] == p.id]
        for with_persona in (True, False):
            side = rows[rows["condition"] == ("persona" if with_persona else "no_persona")]
            side = side[side["answer"].fillna("").astype(str).str.len() > 0]
            scored = side[side["score"] >= SCORE_SPLIT] if with_persona else side[side["score"] < SCORE_SPLIT]
            chosen = scored if len(scored) else side
            msgs = ((("system", p.system_prompt),) if with_persona else ()) + (("user", p.probe),)
            out += [Example(p.id, with_persona, msgs, str(a)) for a in chosen["answer"]]
    return out


def examples_sha256(exs: Sequence[Example]) -> str:
    """A hash of the texts the vectors were computed from (prompts and answers, in order)."""
    blob = json.dumps([[e.persona, e.with_persona, list(map(list, e.messages)), e.answer] for e in exs],
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def answer_states(model, chat, tokenizer, exs: Sequence[Example], layer: int) -> list:
    """Per example, layer ``layer``'s output at its answer's tokens: float32 [tokens, hidden].
    One forward per example (no padding); the answer's tokens follow the rendered prompt as the
    engine would have fed them."""
    import torch

    # the decoder layers, as generation/residual.py finds them for the steering hook (not imported:
    # the protocol stage comes before generation)
    layers = (model.get_decoder() if hasattr(model, "get_decoder") else model).layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} does not exist: the model has {len(layers)} layers (0..{len(layers) - 1})")
    caught: list = []

    def keep(module, args, output):
        caught.append(output[0] if isinstance(output, tuple) else output)

    handle = layers[layer].register_forward_hook(keep)
    device = model.get_input_embeddings().weight.device
    out = []
    try:
        with torch.inference_mode():
            for e in exs:
                prompt = chat.render([{"role": r, "content": c} for r, c in e.messages]).ids
                answer = tokenizer(e.answer, add_special_tokens=False).input_ids
                if not answer:
                    out.append(torch.zeros(0, model.config.hidden_size))
                    continue
                caught.clear()
                model(input_ids=torch.tensor([list(prompt) + list(answer)], device=device), use_cache=False)
                out.append(caught[0][0, len(prompt):].float().cpu())
    finally:
        handle.remove()
    return out


def compute(model, chat, tokenizer, personas: Sequence, calibration, layer: int) -> tuple[PersonaVectors, dict]:
    """The persona vectors at ``layer`` and, per persona, how many answers each side used."""
    import torch

    exs = examples(personas, calibration)
    states = answer_states(model, chat, tokenizer, exs, layer)
    vectors, used = {}, {}
    for p in personas:
        means = {}
        for side in (True, False):
            per_answer = [s.mean(0) for e, s in zip(exs, states) if e.persona == p.id and e.with_persona == side
                          and len(s)]
            if not per_answer:
                raise InputError("calibration", f"persona {p.id}", "no non-empty answer "
                                 f"{'with' if side else 'without'} its system prompt to compute its vector from")
            means[side] = torch.stack(per_answer).mean(0)
        vectors[p.id] = (means[True] - means[False]).float()
        used[p.id] = {side: sum(1 for e in exs if e.persona == p.id and e.with_persona == (side == "with_persona"))
                      for side in ("with_persona", "without_persona")}
    tokens = torch.cat([s for s in states if len(s)])
    residual_norm = float(tokens.norm(dim=-1).mean())
    ids, units, pool = unit_directions(vectors)
    own = {pid: torch.cat([s for e, s in zip(exs, states) if e.persona == pid and e.with_persona and len(s)])
           for pid in ids}
    thresholds = {pid: float(torch.quantile(own[pid] @ units[i], CAP_QUANTILE)) for i, pid in enumerate(ids)}
    pool_threshold = float(torch.quantile(torch.cat(list(own.values())) @ pool, CAP_QUANTILE))
    for value in (residual_norm, pool_threshold, *thresholds.values()):
        if not math.isfinite(value):
            raise ValueError(f"a non-finite activation statistic at layer {layer}: {value}")
    return PersonaVectors(layer, vectors, residual_norm, thresholds, pool_threshold), {
        "answers": used, "examples_sha256": examples_sha256(exs)}


def write(pv: PersonaVectors, path: str | Path, *, provenance: dict) -> dict:
    """Write the vectors file and its sidecar (atomically each); the sidecar's record."""
    from safetensors.torch import save

    from personadrift.storage import atomic_write_bytes, atomic_write_json

    path = Path(path)
    meta = {"layer": str(pv.layer), "residual_norm": repr(pv.residual_norm),
            "cap_threshold": json.dumps(pv.cap_threshold, sort_keys=True), "pool_threshold": repr(pv.pool_threshold)}
    data = save({k: v.contiguous().float() for k, v in sorted(pv.vectors.items())}, metadata=meta)
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    record = {"layer": pv.layer, "tensors_file": path.name, "tensors_sha256": digest,
              "residual_norm": pv.residual_norm, "cap_quantile": CAP_QUANTILE, "cap_threshold": pv.cap_threshold,
              "pool_threshold": pv.pool_threshold, "score_split": SCORE_SPLIT, **provenance}
    atomic_write_json(sidecar_path(path), record)
    return record
