"""Steps of rules/attention.smk: record prompt shares; join them with stability."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from personadrift.provenance import provenance
from personadrift.storage import atomic_write_json, atomic_write_text, read_json
from personadrift.tables import read_table, write_table


def attention(config: dict, model_dir, transcript_dirs: list, out_dir, *, threads=None) -> None:
    """Record prompt shares over stored baseline conversations; write the tidy and small tables."""
    import torch

    from personadrift.analysis import attention as aa
    from personadrift.analysis.theory import synthetic_check
    from personadrift.benchmark.scoring import transcript_paths
    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.models import load_model
    from personadrift.interventions.settings import layers_spec

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(model_dir, config["model"])
    chat = ChatFormat(lm.tokenizer, fold=config["model"].get("fold_system_prompt"))
    paths = transcript_paths(transcript_dirs)[: config["attention"]["conversations"]]
    tidy = pd.concat([aa.record_conversation(lm.model, chat, read_json(p)) for p in paths], ignore_index=True)
    layers = layers_spec(config["attention"]["layers"])
    extra = {"model": lm.identity, "chat_template_sha256": chat.template_sha256, "layers": layers,
             "conversations": [str(p) for p in paths]}
    atomic_write_text(out / "tokens.csv.gz.provenance.json", json.dumps(provenance(**extra), indent=1))
    tidy.to_csv(out / "tokens.csv.gz", index=False, compression={"method": "gzip", "mtime": 0})
    write_table(aa.per_token(tidy, layers), out / "per_token.csv", **extra)
    write_table(aa.per_layer_round(tidy), out / "per_layer_round.csv", **extra)
    write_table(aa.per_round(tidy, layers), out / "per_round.csv", **extra)
    curve, fits = aa.dilution_fit(tidy, layers)
    write_table(curve, out / "theory_curve.csv", **extra)
    write_table(fits, out / "theory_fits.csv", **extra)
    ns = (0, 4, 16, 64, 256, 1024)
    pred, meas, err = synthetic_check(seed=config["seed"], ns=ns)
    atomic_write_json(out / "theory_synthetic.json", {
        "n": list(ns),
        "predicted": pred.tolist(), "measured": meas.tolist(), "stated_error": err.tolist(),
        "holds": bool(((pred - meas).abs() <= err).all()),
    })


def attention_vs_stability(config: dict, per_round_csv, scores_csv, out_csv, out_json) -> None:
    """Join per-round prompt share with per-round stability of the same conversations."""
    import numpy as np

    att = pd.read_csv(per_round_csv)
    sc = read_table(scores_csv)
    stab = sc[sc["kind"] == "agent"].groupby(["conversation", "round"], as_index=False)["score"].mean()
    joined = att.merge(stab, on=["conversation", "round"], how="inner")
    write_table(joined, out_csv)
    r = float(np.corrcoef(joined["prompt_share"], joined["score"])[0, 1]) if len(joined) > 2 else float("nan")
    # bootstrap over conversations: rows of one conversation move together
    rng = np.random.default_rng(config["seed"])
    convs = joined["conversation"].unique()
    boots = []
    for _ in range(config["scoring"]["resamples"]):
        pick = rng.choice(convs, size=len(convs), replace=True)
        d = pd.concat([joined[joined["conversation"] == c] for c in pick])
        if d["prompt_share"].std() > 0 and d["score"].std() > 0:
            boots.append(np.corrcoef(d["prompt_share"], d["score"])[0, 1])
    conf = config["scoring"]["confidence"]
    lo, hi = (np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2]) if len(boots) > 10 else (np.nan, np.nan))
    atomic_write_json(out_json, {"pearson_r": r, "ci_low": float(lo), "ci_high": float(hi), "confidence": conf,
                                 "n_points": len(joined), "n_conversations": len(convs),
                                 "n_bootstrap_defined": len(boots), "model": config["model"]["name"]})
