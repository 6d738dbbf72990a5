"""The SLURM profile on a real single-node SLURM cluster (fake GPUs).

The cluster test (marked ``slurm``) needs root and apt-get (Debian/Ubuntu) or an installed
slurm-wlm + munge, and skips otherwise; about 30 s once installed. Run it alone with
``pytest -m slurm``. The profile-resolution test needs no cluster (dry run, a few seconds).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from support.slurm_cluster import (
    DEFAULT_PROFILE,
    REPO_ROOT,
    ClusterUnavailable,
    run_workflow_on_slurm,
    start_cluster,
)

# Jobs submitted at once in the workflow runs below: more than the node's 2 CPUs, so the next jobs
# wait in SLURM's queue and start the moment a CPU frees, while Snakemake sleeps between status
# checks (the plugin backs off 1, 11, 21 s while none has finished). With 2 at a time the CPU sat
# idle through those sleeps: the smoke DAG took 220 s here, with 8 queued 131 s.
QUEUED_JOBS = 8


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running cluster for the whole session; skips when none can be had here."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as e:
        pytest.skip(f"no SLURM test cluster here: {e.reason}")
    # ClusterStartError (software present, start failed) is a real failure: not skipped.
    with cluster:
        yield cluster


def _profile_resource(name: str, attempt: int) -> int:
    """Evaluate the profile's default-resources expression the way Snakemake does."""
    expr = yaml.safe_load((DEFAULT_PROFILE / "config.v8+.yaml").read_text())["default-resources"][
        name
    ]
    return int(eval(str(expr), {"attempt": attempt}))


# How the GPU request is verified: each job writes `scontrol show job -d $SLURM_JOB_ID`
# into its own output while it runs. The job is RUNNING at that moment by construction, so
# this is not racy (polling squeue/scontrol from outside is, and sacct needs an accounting
# database this cluster does not have). It is SLURM's own record: `TresPerJob=gres:gpu:1`
# is what was requested (Snakemake's `gpu=1` -> `sbatch --gpus=1`), `JOB_GRES=gpu:fake:1`
# and `GRES=gpu:fake:1(IDX:n)` what was allocated. The environment (SLURM_GPUS) is recorded
# too: the rule's step sees SLURM_GPUS_ON_NODE=1. SLURM_GPUS is not seen there (the jobstep
# plugin strips SLURM_* before its nested srun), and CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS
# are not set for this fake GRES (they are on real GPU nodes), so neither is asserted on.
SNAKEFILE = textwrap.dedent(r"""
    localrules: all

    RECORD = (
        "echo job_id=$SLURM_JOB_ID; echo slurm_gpus=${{SLURM_GPUS:-none}}; "
        "echo cuda_visible_devices=${{CUDA_VISIBLE_DEVICES:-none}}; "
        "echo python=$(command -v python); echo PATH=$PATH; "
        "echo resources_mem_mb={resources.mem_mb} resources_runtime={resources.runtime}; "
        "scontrol show job -d $SLURM_JOB_ID; echo '--- env ---'; env | grep -E '^(SLURM|CUDA|GPU)' | sort"
    )

    rule all:
        input: "out/cpu.txt", "out/gpu.txt", "out/retry.txt"

    rule cpu:
        output: "out/cpu.txt"
        log: "logs/cpu.log"
        shell: "(" + RECORD + ") > {output} 2> {log}"

    rule gpu:
        input: "out/cpu.txt"
        output: "out/gpu.txt"
        log: "logs/gpu.log"
        resources: gpu=1, mem_mb=1000
        shell: "(" + RECORD + ") > {output} 2> {log}"

    # Fails on its first attempt: checks the profile's `retries` and that mem_mb/runtime
    # grow with `attempt` all the way into the sbatch request.
    rule retry:
        output: "out/retry.txt"
        log: "logs/retry.log"
        shell:
            "if [ ! -e first_attempt_done ]; then touch first_attempt_done; "
            "echo 'failing attempt 1 on purpose' > {log}; exit 3; fi; "
            "(" + RECORD + ") > {output} 2> {log}"
    """)


def _scontrol_field(text: str, key: str) -> str | None:
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", text)
    return m.group(1) if m else None


@pytest.mark.slurm
def test_profile_runs_workflow_on_slurm_with_gpu_request(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)

    proc = run_workflow_on_slurm(tmp_path, ["all"], cluster=slurm_cluster, timeout=240)
    logs = "\n".join(
        f"--- {p} ---\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    )
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-8000:]}\n{logs}"

    # (a) outputs exist
    out = {name: (tmp_path / "out" / f"{name}.txt").read_text() for name in ("cpu", "gpu", "retry")}

    # (b) the gpu=1 rule was submitted with a GPU request and got one; the others did not.
    gpu = out["gpu"]
    assert _scontrol_field(gpu, "TresPerJob") == "gres:gpu:1", gpu
    assert _scontrol_field(gpu, "JOB_GRES") == "gpu:fake:1", gpu
    assert re.search(r"GRES=gpu:fake:1\(IDX:\d\)", gpu), gpu
    # ...and the job step running the rule (Snakemake's nested `srun`) sees it:
    assert "SLURM_GPUS_ON_NODE=1" in gpu, gpu
    assert "MinMemoryNode=1000M" in gpu, "the rule's own mem_mb must beat the profile default"
    assert _profile_resource("nodes", 1) == 1
    for text in out.values():  # the profile's nodes=1 reached sbatch (--nodes=1)
        assert _scontrol_field(text, "NumNodes") in ("1", "1-1"), text
    for name in ("cpu", "retry"):
        assert "gpu" not in (_scontrol_field(out[name], "TresPerJob") or ""), out[name]
        assert _scontrol_field(out[name], "JOB_GRES") in (None, "(null)"), out[name]
        assert "SLURM_GPUS_ON_NODE" not in out[name], out[name]

    # The profile's defaults reach sbatch, and grow with the attempt.
    mem1, mem2 = _profile_resource("mem_mb", 1), _profile_resource("mem_mb", 2)
    rt1, rt2 = _profile_resource("runtime", 1), _profile_resource("runtime", 2)
    assert mem2 > mem1 and rt2 > rt1
    assert f"MinMemoryNode={mem1}M" in out["cpu"], out["cpu"]
    assert f"resources_mem_mb={mem2} resources_runtime={rt2}" in out["retry"], out["retry"]
    assert f"MinMemoryNode={mem2}M" in out["retry"], out["retry"]
    assert _scontrol_field(out["retry"], "TimeLimit") == f"{rt2 // 60:02d}:{rt2 % 60:02d}:00"

    # Jobs get the submitter's environment (sbatch --export=ALL): the same venv on PATH.
    venv_bin = str(Path(sys.executable).parent)
    for name, text in out.items():
        path = re.search(r"^PATH=(.*)$", text, re.M).group(1).split(":")
        assert venv_bin in path, (name, text)
        assert f"python={venv_bin}/python" in text, (name, text)
    # every job ran as its own SLURM job
    job_ids = {re.search(r"job_id=(\d+)", t).group(1) for t in out.values()}
    assert len(job_ids) == 3


def test_profile_name_resolves_from_repo_root(tmp_path):
    """`snakemake ... --profile slurm` typed in the repo root finds profiles/slurm.

    Dry run only (no SLURM needed): the profile is loaded, its defaults apply, and a rule's
    own `gpu=1` / `mem_mb` are kept.
    """
    link = REPO_ROOT / "slurm"
    if not link.is_symlink():
        pytest.skip("not a source checkout (no top-level `slurm` profile link)")
    assert os.readlink(link) == "profiles/slurm"  # relative, so clones keep it working
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
            rule all:
                input: "a.txt", "g.txt"
            rule a:
                output: "a.txt"
                shell: "touch {output}"
            rule g:
                output: "g.txt"
                resources: gpu=1, mem_mb=1234
                shell: "touch {output}"
            """))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--profile",
            "slurm",
            "--snakefile",
            str(tmp_path / "Snakefile"),
            "--directory",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    res = dict(re.findall(r"^rule (\w+):.*?^\s+resources: (.*?)$", out, re.M | re.S))
    mem1, rt1 = _profile_resource("mem_mb", 1), _profile_resource("runtime", 1)
    assert f"mem_mb={mem1}," in res["a"] and f"runtime={rt1}" in res["a"], res
    assert "gpu" not in res["a"], res
    assert "mem_mb=1234," in res["g"] and res["g"].endswith("gpu=1"), res
    assert all(re.search(r"\bnodes=1\b", res[r]) for r in "ag"), res  # one node per job: the plugin's --nodes=1


@pytest.mark.slurm
def test_smoke_workflow_runs_to_figures_all_through_the_slurm_executor(slurm_cluster, tmp_path):
    """The real DAG (configs/smoke.yaml) on the cluster: model rules are SLURM jobs with a GPU."""
    import json

    proc = run_workflow_on_slurm(
        tmp_path,
        ["figures/all"],
        ["--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(REPO_ROOT / "configs/smoke.yaml"),
         "--jobs", str(QUEUED_JOBS)],
        cluster=slurm_cluster,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + slurm_cluster.diagnostics()
    manifest = json.loads((tmp_path / "figures/all").read_text())
    assert len(manifest["figures"]) >= 14
    # 1. what Snakemake submitted: every model rule's sbatch call asks for one GPU
    calls = [line for line in proc.stdout.splitlines() if "sbatch" in line and "--job-name" in line]
    model_calls = [c for c in calls if re.search(r"rule_?(selfchat|calibrate|attention|mmlu)\b", c)]
    assert model_calls, "no sbatch call of a model rule found in the log:\n" + "\n".join(calls[:5])
    assert all(re.search(r"--gpus[= ]1\b", c) for c in model_calls), "\n".join(model_calls)
    # 2. what SLURM gave the job: the model step recorded its job id and one allocated GPU
    conv = next((tmp_path / "results/smoke/transcripts/none").glob("shard-*/conv-*.json"))
    hw = json.loads(conv.read_text())["provenance"]["hardware"]
    assert hw.get("SLURM_JOB_ID") and hw.get("SLURM_GPUS_ON_NODE") == "1", hw


@pytest.mark.slurm
@pytest.mark.slow
def test_rehearsal_runs_through_the_slurm_executor(slurm_cluster, tmp_path):
    """configs/rehearsal.yaml (the paper's protocol and 16 turns on a tiny Llama-2-format model
    that reaches its context limit) as SLURM jobs, up to the scores: the persona import, the
    calibration and one self-chat job per intervention method (the GPU jobs of the paper run).
    The whole grid and the figures run through the same DAG on the CPU
    (test_rehearsal_runs_through_the_snakemake_dag_on_cpu); a SLURM job per grid point would
    only repeat the same submission 13 times."""
    from test_rehearsal import check_rehearsal

    r = "results/rehearsal"
    proc = run_workflow_on_slurm(
        tmp_path,
        [f"{r}/scores/none.csv"] + [f"{r}/transcripts/{s}/shard-0" for s in ("control", "split-k0.5", "repeat-every1",
                                                                           "cfg-g1.5")],
        ["--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(REPO_ROOT / "configs/rehearsal.yaml"),
         "--jobs", str(QUEUED_JOBS)],
        cluster=slurm_cluster,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + slurm_cluster.diagnostics()
    check_rehearsal(tmp_path, whole=False)
