"""Steps of rules/signals.smk: the judge-free drift signals of every probe answer; their tables."""

from __future__ import annotations

import json
import time

from personadrift.command import METHOD_INPUTS, Command, arg
from personadrift.storage import atomic_write_json, read_json
from personadrift.tables import read_table, write_table


def load_vectors(path) -> tuple[int, dict]:
    """(layer, {persona id: vector}) from a persona-vector file (protocol/persona_vectors.py)."""
    from personadrift.protocol.persona_vectors import load_persona_vectors

    return load_persona_vectors(path)


def signals(config: dict, *, setting_name: str, model_dir, transcript_dirs: list, out_csv, vectors_path=None,
            threads=None, method_inputs: dict | None = None) -> None:
    """Teacher-force every probe answer of ``setting_name``'s transcripts on the HF engine: one row
    per answer with ``kl`` and ``projection`` (analysis/drift_signals.py); the seconds it took go
    in the table's provenance (``seconds``)."""
    from personadrift.analysis.drift_signals import measure
    from personadrift.interventions.settings import setting_by_name
    from personadrift.protocol.scoring import transcript_paths
    from personadrift.runtime.factory import make_engine, model_identity

    setting = setting_by_name(config["interventions"], setting_name).with_inputs(method_inputs or {})
    engine = make_engine(config, model_dir, setting, threads=threads)
    records = [read_json(p) for p in transcript_paths(transcript_dirs)]
    vectors = load_vectors(vectors_path) if vectors_path else None
    start = time.perf_counter()
    df = measure(engine, records, setting, vectors=vectors, vectors_source=str(vectors_path or ""))
    seconds = time.perf_counter() - start
    write_table(df.sort_values(["conversation", "round", "kind", "sample"], kind="stable"), out_csv,
                model=model_identity(engine), setting=setting.describe(), seconds=round(seconds, 3),
                vectors={"path": str(vectors_path), "layer": vectors[0]} if vectors else None,
                kl="mean over the answer's tokens of KL(p_dialog || p_fresh), nats")


def signal_tables(config: dict, signal_csvs: list, score_csvs: list, out_by_round, out_change, out_assoc) -> None:
    import pandas as pd

    from personadrift.analysis.signal_tables import association_with_judge, signal_by_round, signal_change

    sc = config["scoring"]
    kw = {"method": sc["method"], "confidence": sc["confidence"], "resamples": sc["resamples"], "seed": config["seed"]}
    sig = pd.concat([read_table(p) for p in signal_csvs], ignore_index=True)
    scores = pd.concat([read_table(p) for p in score_csvs], ignore_index=True)
    write_table(signal_by_round(sig, **kw), out_by_round)
    write_table(signal_change(sig, **kw), out_change)
    assoc = {str(s): association_with_judge(sig[sig["setting"] == s], scores[scores["setting"] == s],
                                            confidence=sc["confidence"])
             for s in sorted(sig["setting"].unique())}
    atomic_write_json(out_assoc, json.loads(json.dumps(assoc, default=float)))


COMMANDS = [
    Command("signals", "judge-free drift signals of every probe answer (teacher-forced KL and projection)",
            lambda config, a: signals(config, setting_name=a.setting, model_dir=a.model_dir,
                                      transcript_dirs=a.transcripts, out_csv=a.out, vectors_path=a.vectors,
                                      threads=a.threads, method_inputs=json.loads(a.method_inputs)),
            (arg("--setting", default="none"), arg("--model-dir", required=True), arg("--out", required=True),
             arg("--vectors", default=None,
                 help="persona vectors (results/<study>/persona_vectors/layer<L>.safetensors)"),
             METHOD_INPUTS, arg("transcripts", nargs="+", help="transcript folders"))),
    Command("signal-tables", "the signals per round, their claims, their link with the judge",
            lambda config, a: signal_tables(config, a.signals, a.scores, a.by_round, a.change, a.association),
            (arg("--scores", nargs="+", required=True, help="the judge's score tables of the same settings"),
             arg("--by-round", required=True), arg("--change", required=True),
             arg("--association", required=True, help="within-conversation association with the judge (JSON)"),
             arg("signals", nargs="+"))),
]
