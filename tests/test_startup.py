"""Job start-up: parsing the workflow's DAG must not import torch or transformers (#16).

Every Snakemake job (and ``snakemake -n``) parses the Snakefile and its rule files; importing
torch there costs seconds per table or figure job. The check runs the real ``snakemake -n``
in a fresh subprocess, in-process to Snakemake's own CLI, and reads ``sys.modules`` afterwards.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from snakemake.cli import main
sys.argv = ["snakemake", "-n", "--quiet", "rules", "-s", sys.argv[1], "-d", sys.argv[2], "figures/all"]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = ("torch", "transformers", "matplotlib", "scipy")
print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}))
"""


def test_dag_parse_imports_neither_torch_nor_transformers(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "Snakefile"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr[-3000:]  # the DAG was really built (dry run succeeded)
    assert "torch" not in result["imported"] and "transformers" not in result["imported"], result
