"""Errors a retry cannot fix are not retried: the step notes them, and Snakemake's next attempt
of the job fails at once with the same message, before loading the model."""

from __future__ import annotations

import json

import pytest
import yaml

from personadrift.cli import main
from personadrift.errors import InputError
from personadrift.generation.openai_backend import OpenAIBackendError
from personadrift.runtime.attempts import NoRetryNote, retryable
from support.workflow import SMOKE, snakemake


def test_input_errors_are_not_retryable_but_crashes_and_server_failures_are():
    assert not retryable(InputError("config", "selfchat.turns", "bad"))
    assert retryable(OpenAIBackendError("http://x", "m", "HTTP 503"))
    assert retryable(RuntimeError("CUDA error: an illegal memory access"))


def test_a_retry_fails_at_once_and_a_new_run_starts_afresh(tmp_path, capsys):
    note = tmp_path / "job.log.no-retry"
    (tmp_path / "pool.json").write_text(json.dumps({"personas": [], "topics": []}))
    params = json.dumps({"seed": 0, "selfchat": {"conversations": 2, "shard_size": 2}})

    def cmd(shard, attempt):
        return ["selfchat", "--params", params, "--model-dir", str(tmp_path / "no-model"), "--pool",
                str(tmp_path / "pool.json"), "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt"),
                "--shard", str(shard), "--no-retry-note", str(note), "--attempt", str(attempt)]

    # attempt 1 fails on its input (shard 5 of one is empty): noted
    assert main(cmd(5, 1)) == 2
    message = capsys.readouterr().err.removeprefix("personadrift: error: ").strip()
    assert "shard 5 is empty" in message and json.loads(note.read_text())["attempt"] == 1
    # attempts 2 and 3 do not run the step (shard 0 would fail otherwise, with a crash: an empty
    # pool): the first attempt's message, and where it was noted
    for attempt in (2, 3):
        assert main(cmd(0, attempt)) == 2
        err = capsys.readouterr().err
        assert message in err and f"attempt {attempt} not run: attempt 1 failed" in err and str(note) in err
    # a new run (attempt 1 again) removes the note and runs the step
    with pytest.raises(ValueError, match="at least two personas"):
        main(cmd(0, 1))
    assert not note.exists()
    # a crash (not an input error) leaves no note: Snakemake may retry it with more memory
    note.unlink(missing_ok=True)
    NoRetryNote(note, 1).record(MemoryError())
    assert not note.exists()


@pytest.mark.slow
def test_snakemake_retries_an_overflow_without_loading_the_model_again(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["model"]["max_context"] = 24  # no self-chat prompt fits; calibration does not check it
    cfg["selfchat"]["context_policy"] = "error"
    (tmp_path / "overflow.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/smoke/transcripts/none/shard-0"
    proc = snakemake(tmp_path, "--configfile", tmp_path / "overflow.yaml", "--cores", "1", "--retries", "2",
                     target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("Trying to restart job") == 2, out[-3000:]  # Snakemake did retry: three attempts
    log = tmp_path / "logs/smoke/selfchat/none/shard-0.log"
    note = json.loads((tmp_path / "logs/smoke/selfchat/none/shard-0.log.no-retry").read_text())
    assert note["attempt"] == 1 and note["error"] == "ContextOverflow" and "model.max_context" in note["message"]
    last = log.read_text()  # the third attempt's log: it failed at once, without loading the model
    assert "attempt 3 not run: attempt 1 failed with this error" in last and note["message"] in last
    assert "loading the model" not in last
    calibrate = (tmp_path / "logs/smoke/calibrate.log").read_text()
    assert "loading the model" in calibrate  # the line the check relies on is written where a model loads
