"""Steps of rules/attention.smk: record prompt shares; join them with stability."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personadrift.command import Command, arg
from personadrift.storage import atomic_write_json, read_json
from personadrift.tables import read_table, write_table


def attention(config: dict, model_dir, transcript_dirs: list, out_dir, *, threads=None) -> None:
    """Record prompt shares over stored baseline conversations; write the tidy and small tables."""
    import torch

    from personadrift.analysis import attention as aa
    from personadrift.analysis.theory import synthetic_check
    from personadrift.generation.chat import ChatFormat
    from personadrift.generation.models import load_model
    from personadrift.interventions.settings import layers_spec
    from personadrift.protocol.scoring import transcript_paths

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(model_dir, config["model"])
    chat = ChatFormat(lm.tokenizer, fold=config["model"]["fold_system_prompt"])
    paths = transcript_paths(transcript_dirs)[: config["attention"]["conversations"]]
    tidy = pd.concat([aa.record_conversation(lm.model, chat, read_json(p)) for p in paths], ignore_index=True)
    layers = layers_spec(config["attention"]["layers"])
    extra = {"model": lm.identity, "chat_template_sha256": chat.template_sha256, "layers": layers,
             "conversations": [str(p) for p in paths]}
    write_table(tidy, out / "tokens.csv.gz", **extra)
    confidence = config["scoring"]["confidence"]  # the figure's band level
    write_table(aa.per_token(tidy, layers).assign(confidence=confidence), out / "per_token.csv", **extra)
    write_table(aa.per_layer_round(tidy), out / "per_layer_round.csv", **extra)
    write_table(aa.per_round(tidy, layers), out / "per_round.csv", **extra)
    curve, fits = aa.dilution_fit(tidy, layers)
    write_table(curve, out / "theory_curve.csv", **extra)
    write_table(fits, out / "theory_fits.csv", **extra)
    atomic_write_json(out / "theory_synthetic.json", synthetic_check(seed=config["seed"]))


def attention_vs_stability(config: dict, per_round_csv, scores_csv, out_csv, out_json) -> None:
    """Join per-round prompt share with per-round stability of the same conversations, and
    estimate their link within conversations (net of round)."""
    from personadrift.analysis.attention import within_conversation_association

    att = pd.read_csv(per_round_csv)
    sc = read_table(scores_csv)
    stab = sc[sc["kind"] == "agent"].groupby(["conversation", "round"], as_index=False)["score"].mean()
    joined = att.merge(stab, on=["conversation", "round"], how="inner")
    write_table(joined, out_csv)
    assoc = within_conversation_association(joined, confidence=config["scoring"]["confidence"])
    atomic_write_json(out_json, {**assoc, "model": config["model"]["name"]})


COMMANDS = [
    Command("attention", "record system-prompt attention over stored conversations",
            lambda config, a: attention(config, a.model_dir, a.transcripts, a.out, threads=a.threads),
            (arg("--model-dir", required=True), arg("--out", required=True, help="output folder of attention tables"),
             arg("transcripts", nargs="+"))),
    Command("attention-vs-stability", "join per-round attention with stability",
            lambda config, a: attention_vs_stability(config, a.attention, a.scores, a.out, a.correlation),
            (arg("--attention", required=True, help="per_round.csv of the attention step"),
             arg("--scores", required=True), arg("--out", required=True), arg("--correlation", required=True))),
]
