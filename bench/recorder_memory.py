"""Peak memory of a forward with the prompt-share recorder vs output_attentions=True.

    python bench/recorder_memory.py [--model-dir D [--gguf-file F]] [--tokens 2048]

Each mode runs in a fresh subprocess; peak memory is the growth of the process's peak RSS
(ru_maxrss) during the one forward, after the model is loaded and warmed up. Also prints the
bytes each mode KEEPS (recorder: layers*heads*T*5 floats; eager: layers*heads*T^2 floats).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from _common import add_model_args, dialog, load  # noqa: E402  (bench/ is on sys.path)


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(args) -> None:
    from personadrift.attention import PromptShareRecorder, attention_context

    model, tok, _ = load(args)
    ids, pm = dialog(tok, args.tokens)
    am = torch.ones_like(ids)
    with torch.no_grad():  # warm-up: allocator pools, kernels
        model(input_ids=ids[:, :64], attention_mask=am[:, :64], logits_to_keep=1)
    kept = 0
    before = _rss_peak()
    with torch.no_grad():
        if args.mode == "recorder":
            rec = PromptShareRecorder()
            model.set_attn_implementation("prompt_share")
            with attention_context(pm, recorder=rec):
                model(input_ids=ids, attention_mask=am, logits_to_keep=1)
            kept = rec.nbytes()
        elif args.mode == "eager":
            model.set_attn_implementation("eager")
            out = model(input_ids=ids, attention_mask=am, logits_to_keep=1, output_attentions=True)
            kept = sum(a.numel() * a.element_size() for a in out.attentions)
        else:
            model.set_attn_implementation("sdpa")
            model(input_ids=ids, attention_mask=am, logits_to_keep=1)
    print(json.dumps({"mode": args.mode, "peak_growth": _rss_peak() - before, "kept": kept, "T": ids.shape[1]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--mode", choices=["recorder", "eager", "sdpa"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return child(args)
    res = {}
    for mode in ("sdpa", "recorder", "eager"):
        cmd = [sys.executable, os.path.abspath(__file__), "--tokens", str(args.tokens), "--mode", mode]
        if args.model_dir:
            cmd += ["--model-dir", args.model_dir]
        if args.gguf_file:
            cmd += ["--gguf-file", args.gguf_file]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        res[mode] = json.loads(out)
        r = res[mode]
        growth, kept = r["peak_growth"] / 2**20, r["kept"] / 2**20
        print(f"{mode:9s} T={r['T']}  peak growth {growth:9.1f} MiB   kept {kept:9.2f} MiB")
    rec, eag = res["recorder"], res["eager"]
    print(f"peak ratio recorder/output_attentions = {rec['peak_growth'] / max(eag['peak_growth'], 1):.3f}")
    print(f"kept ratio recorder/output_attentions = {rec['kept'] / max(eag['kept'], 1):.5f}")


if __name__ == "__main__":
    main()
