"""Steps of rules/selfchat.smk: one self-chat shard under one setting."""

from __future__ import annotations

import json
from pathlib import Path

from personadrift.command import METHOD_INPUTS, Command, arg
from personadrift.errors import InputError
from personadrift.numerics import record as numerics_record
from personadrift.protocol.calibration import PoolPersona
from personadrift.provenance import provenance
from personadrift.runtime.backends import backend_of
from personadrift.runtime.factory import make_engine, model_identity
from personadrift.storage import read_json


def selfchat_shard(config: dict, *, setting_name: str, shard: int, model_dir, pool_json, out_dir,
                   checkpoint_dir, threads=None, method_inputs: dict | None = None) -> None:
    from personadrift.generation.selfchat import (
        ShardRun,
        plan_conversation,
        sampling_record,
        shard_conversations,
        write_outputs,
    )
    from personadrift.interventions.settings import setting_by_name

    pool = read_json(pool_json)
    personas = [PoolPersona(p) for p in pool["personas"]]
    sc = config["selfchat"]
    convs = shard_conversations(sc["conversations"], sc["shard_size"], shard)
    if not convs:
        raise InputError("config", "selfchat.shard_size", f"shard {shard} is empty")
    plans = [plan_conversation(s, config["seed"], personas, pool["topics"]) for s in convs]
    setting = setting_by_name(config["interventions"], setting_name).with_inputs(method_inputs or {})
    engine = make_engine(config, model_dir, setting, threads=threads)
    # the CPU numerics in force (numerics.py) belong to the checkpoints' fingerprint when the model runs here
    on_cpu = getattr(getattr(engine, "device", None), "type", None) == "cpu"
    prov = provenance(model=model_identity(engine), sampling=sampling_record(sc), seed=config["seed"],
                      setting=setting.describe(), backend=backend_of(config, setting).name,
                      **({"cpu_numerics": numerics_record()} if on_cpu else {}))
    run = ShardRun(engine, config=config, setting=setting, plans=plans,
                   checkpoint_dir=Path(checkpoint_dir), provenance=prov)
    write_outputs(run.run(), out_dir)


COMMANDS = [
    Command("selfchat", "run one shard of self-chats under one setting",
            lambda config, a: selfchat_shard(config, setting_name=a.setting, shard=a.shard, model_dir=a.model_dir,
                                             pool_json=a.pool, out_dir=a.out, checkpoint_dir=a.checkpoints,
                                             threads=a.threads, method_inputs=json.loads(a.method_inputs)),
            (arg("--setting", default="none"), arg("--shard", type=int, default=0), arg("--model-dir", required=True),
             arg("--pool", required=True, help="persona pool JSON from select-personas"),
             arg("--out", required=True, help="output folder of conv-*.json"),
             arg("--checkpoints", required=True, help="folder of per-round checkpoints"), METHOD_INPUTS)),
]
