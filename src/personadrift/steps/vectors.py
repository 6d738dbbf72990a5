"""Steps of rules/vectors.smk: the persona vectors of a study's kept personas at one layer
(``protocol/persona_vectors.py``)."""

from __future__ import annotations

from pathlib import Path

from personadrift.command import Command, arg
from personadrift.errors import InputError
from personadrift.protocol.calibration import PoolPersona
from personadrift.provenance import provenance
from personadrift.runtime.factory import make_engine, model_identity
from personadrift.storage import read_json
from personadrift.tables import read_table


def persona_vectors(config: dict, *, layer: int, model_dir, pool_json, calibration_csv, out,
                    key: str = "layer", threads=None) -> dict:
    """Teacher-force the kept personas' calibration answers at ``layer``; write the vectors file
    and its sidecar. ``key``: the config key(s) that asked for this layer (an error names them)."""
    from personadrift.protocol import persona_vectors as pv
    from personadrift.runtime.backends import internals_backends

    records = read_json(pool_json)["personas"]
    personas = [PoolPersona(p) for p in records]
    engine = make_engine(config, model_dir, threads=threads, backend=internals_backends()[0])
    depth = engine.model.config.num_hidden_layers
    if not 0 <= layer < depth:
        raise InputError("config", key, f"layer {layer} does not exist: the model has {depth} layers (0..{depth - 1})")
    vectors, used = pv.compute(engine.model, engine.chat, engine.tokenizer, personas, read_table(calibration_csv),
                               layer)
    return pv.write(vectors, out, provenance={
        "model": model_identity(engine), "personas": [p["id"] for p in records], **used,
        **provenance(pool=str(pool_json), calibration=str(calibration_csv))})


COMMANDS = [
    Command("persona-vectors", "per kept persona, its direction in the residual stream at one layer",
            lambda config, a: persona_vectors(config, layer=a.layer, model_dir=a.model_dir, pool_json=a.pool,
                                              calibration_csv=a.calibration, out=Path(a.out), key=a.key,
                                              threads=a.threads),
            (arg("--layer", type=int, required=True), arg("--model-dir", required=True),
             arg("--pool", required=True, help="persona pool JSON from select-personas"),
             arg("--calibration", required=True, help="calibration table (its answers are teacher-forced)"),
             arg("--out", required=True, help="the vectors file (.safetensors; its .json sidecar beside it)"),
             arg("--key", default="layer", help="config key(s) that asked for this layer, for an error"))),
]
