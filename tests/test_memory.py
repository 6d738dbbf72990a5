"""Memory sizing of the engine's forwards, and a call that halves itself when the device runs
out of memory: simulated on the CPU by a forward hook that raises torch's out-of-memory error
above a number of rows, on the real tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from personadrift.generation import memory
from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from support.interventions import guided

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]


def convo(i):
    return [{"role": "system", "content": SYSTEMS[i % 3]},
            {"role": "user", "content": "What is your hobby?" + " really" * i}]


def test_kv_bytes_per_token_from_the_model_config():
    llama7b = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
    assert memory.kv_bytes_per_token(llama7b, torch.bfloat16) == 2**19  # 0.5 MiB: no grouped-query attention
    llama70b = LlamaConfig(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8)
    assert memory.kv_bytes_per_token(llama70b, torch.bfloat16) == 80 * 8 * 128 * 2 * 2
    assert memory.kv_bytes_per_token(llama70b, torch.float32) == 80 * 8 * 128 * 2 * 4


def test_rows_follow_free_memory_and_context_capped_by_max_batch(tiny_model):
    model, _ = tiny_model
    (device, kv), = memory.kv_bytes_by_device(model).items()
    assert kv == memory.kv_bytes_per_token(model.config, torch.float32)  # all layers on one device
    act = memory.activation_bytes_per_token(model.config, torch.float32)
    per_row = 1000 * (kv + act) + 16 * model.config.vocab_size

    def free(gib_rows):
        return lambda d: int(gib_rows * per_row / memory.USABLE_FRACTION) + 1

    assert memory.rows_that_fit(model, 1000, 64, free=free(10)) == 10
    per_row_2000 = 2000 * (kv + act) + 16 * model.config.vocab_size  # twice the context: about half the rows
    assert memory.rows_that_fit(model, 2000, 64, free=free(10)) == 10 * per_row // per_row_2000 < 10
    assert memory.rows_that_fit(model, 1000, 8, free=free(10)) == 8  # model.max_batch caps
    assert memory.rows_that_fit(model, 1000, 64, free=free(0)) == 1  # never below one row
    assert memory.rows_that_fit(model, 1000, 64) == 64  # a host: the cap alone (no free-memory figure)


def test_rows_count_what_a_prefill_encodes_not_the_whole_context(tiny_model):
    """A dialog's later turn encodes only its new tokens (the rest is a stored prefix), and a
    decode step one: a row needs its KV cache for the whole context, activations for those."""
    model, _ = tiny_model
    (_, kv), = memory.kv_bytes_by_device(model).items()
    act = memory.activation_bytes_per_token(model.config, torch.float32)
    logits = 16 * model.config.vocab_size
    total = 100 * (1000 * (kv + act) + logits)  # usable bytes: 100 rows encoding all 1000 positions

    def free(d):
        return int(total / memory.USABLE_FRACTION) + 1

    assert memory.rows_that_fit(model, 1000, 512, free=free) == 100
    assert memory.rows_that_fit(model, 1000, 512, new_tokens=50, free=free) == total // (1000 * kv + 50 * act + logits)
    assert memory.rows_that_fit(model, 1000, 512, new_tokens=50, free=free) > 4 * 100  # this model: activations dominate
    # a stored prefix's bytes count as available, and the store keeps what the rows leave
    cpu = torch.device("cpu")
    rows, keep = memory.plan_rows(model, 1000, 64, new_tokens=50, held={cpu: 1000}, free=free)
    per_row = 1000 * kv + 50 * act + logits
    assert rows == 64 and keep == {cpu: int((free(cpu) + 1000) * memory.USABLE_FRACTION) - 64 * per_row}
    rows, keep = memory.plan_rows(model, 1000, 512, held={cpu: 1000}, free=free)
    assert rows == 100 and 0 <= keep[cpu] < 1000 * (kv + act) + logits  # the rows first: the store keeps the rest


class OutOfMemoryAbove:
    """A forward pre-hook: raises torch's out-of-memory error when a forward has more than
    ``rows`` rows, as a GPU would with a batch too large for it. With ``after`` it raises only
    at that many decode steps after a prefill (the cache grows: a batch fails mid-call, after
    rows that ended stored their prefixes)."""

    def __init__(self, model, rows, after=0):
        self.rows, self.after, self.steps, self.seen, self.raised = rows, after, 0, [], 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _module, args, kwargs):
        n, new = kwargs["input_ids"].shape
        self.steps = self.steps + 1 if new == 1 else 0
        self.seen.append(n)
        if n > self.rows and self.steps >= self.after:
            self.raised += 1
            raise torch.OutOfMemoryError(f"simulated: {n} rows")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("intervention", [Intervention(), guided(2.0)])
def test_out_of_memory_halves_the_call_and_changes_no_text(tiny_model, intervention):
    model, tok = tiny_model
    s = Sampling(max_new_tokens=6)
    # dialog turns (persisted prefixes; two end after 2 tokens, before the error at step 4),
    # then probes forking from them, as a shard's calls
    turns = [GenRequest(convo(i), seed=i, key=f"c{i}", intervene=True, negative_messages=convo(i)[1:],
                        max_new_tokens=2 if i < 2 else None) for i in range(5)]
    probes = [GenRequest(convo(i) + [{"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Why?"}],
                         seed=10 + i, key=f"c{i}", n=2, persist=False, intervene=True,
                         negative_messages=convo(i)[1:]) for i in range(5)]
    free = HFEngine(model, tok, sampling=s, intervention=intervention)
    expected = [free.generate(turns), free.generate(probes)]
    tight = HFEngine(model, tok, sampling=s, intervention=intervention)
    with OutOfMemoryAbove(model, 4, after=4) as oom:
        got = [tight.generate(turns), tight.generate(probes)]
    assert oom.raised > 0  # it did run out, then fit
    assert got == expected
    # the failed attempts left nothing behind: no prefix stored by a row that ended before the
    # error (a rerun would re-use it and encode less), no token counted twice
    counts = ("prompt_tokens", "reused_tokens", "generated_tokens")
    assert [getattr(tight.stats, k) for k in counts] == [getattr(free.stats, k) for k in counts]
    assert {k: v.ids for k, v in tight.prefixes.items()} == {k: v.ids for k, v in free.prefixes.items()}
    st = memory.state_of(tight)
    assert st.halvings > 0 and st.oom_positions is not None
    # later calls start below the size that failed: fewer failures the second time round
    again = HFEngine(model, tok, sampling=s, intervention=intervention)
    again._memory = memory.MemoryState(oom_positions=st.oom_positions)
    with OutOfMemoryAbove(model, 4, after=4) as oom2:
        assert again.generate(turns) == expected[0]
    assert oom2.raised < oom.raised


def test_one_request_that_does_not_fit_raises(tiny_model):
    model, tok = tiny_model
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=4))
    with OutOfMemoryAbove(model, 2), pytest.raises(torch.OutOfMemoryError):
        eng.generate([GenRequest(convo(0), seed=0, n=3, persist=False), GenRequest(convo(1), seed=1)])


def test_next_token_logprobs_halve_on_out_of_memory(tiny_model):
    model, tok = tiny_model
    reqs = [GenRequest(convo(i), seed=i) for i in range(5)]
    expected = HFEngine(model, tok).next_token_logprobs(reqs)
    with OutOfMemoryAbove(model, 2) as oom:
        got = HFEngine(model, tok).next_token_logprobs(reqs)
    assert oom.raised > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_gpus_per_job_from_the_model_size_and_the_paper_config_follows():
    import yaml

    from support.workflow import REPO

    kv70 = memory.kv_bytes_per_token(LlamaConfig(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                                                 num_key_value_heads=8), torch.bfloat16)
    kv7 = memory.kv_bytes_per_token(LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                num_key_value_heads=32), torch.bfloat16)
    context = 4096 + 400
    h200, a100 = 141e9, 80e9
    assert memory.gpus_needed(68.98e9, 2, kv70, context, h200) == 2  # Llama-2-70B, bfloat16
    assert memory.gpus_needed(68.98e9, 2, kv70, context, a100) == 4
    assert memory.gpus_needed(6.74e9, 2, kv7, context, h200) == 1  # Llama-2-7B
    assert memory.gpus_needed(6.74e9, 2, kv7, context, a100) == 1
    paper = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    assert paper["model"]["repo_id"] == "meta-llama/Llama-2-70b-chat-hf" and paper["model"]["dtype"] == "bfloat16"
    assert paper["resources"]["gpus"] == memory.gpus_needed(68.98e9, 2, kv70, context, h200)
    assert paper["selfchat"]["context_policy"] == "stop"  # one long dialog never stops a job of many


def test_cloze_scoring_is_sized_and_halves_on_out_of_memory(tiny_model):
    """MMLU's cloze form (continuation_logprobs: four options per prompt) runs again in halves
    when a forward runs out of memory, and scores the same."""
    model, tok = tiny_model
    reqs, conts = [], []
    for i in range(4):
        r = GenRequest(convo(i), seed=0)
        for text in (" tennis", " A pizza", " the cats", " no"):
            reqs.append(r)
            conts.append(tok.encode(text))
    expected = HFEngine(model, tok).continuation_logprobs(reqs, conts)
    eng = HFEngine(model, tok)
    with OutOfMemoryAbove(model, 2) as oom:
        got = eng.continuation_logprobs(reqs, conts)
    assert oom.raised > 0  # it did run out, then fit
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert memory.state_of(eng).halvings > 0


def test_the_size_an_out_of_memory_error_taught_is_kept_for_the_next_attempt(tiny_model, tmp_path, monkeypatch):
    from personadrift import job
    from personadrift.runtime import attempts

    model, tok = tiny_model
    s = Sampling(max_new_tokens=4)
    turns = [GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(6)]
    note_file = tmp_path / "job.log.no-retry"
    monkeypatch.setattr(job, "_memory_note", None)
    first = attempts.keep_memory_notes(attempts.NoRetryNote(note_file, 1))
    eng = HFEngine(model, tok, sampling=s)
    with OutOfMemoryAbove(model, 2) as oom:
        expected = eng.generate(turns)
    learned = memory.state_of(eng).oom_positions
    assert oom.raised > 0 and first.load() == learned and first.path.name == "job.log.oom"
    # the job's next attempt (a new process: a new engine) starts below that size
    attempts.keep_memory_notes(attempts.NoRetryNote(note_file, 2))
    retry = HFEngine(model, tok, sampling=s)
    assert memory.state_of(retry).oom_positions == learned
    with OutOfMemoryAbove(model, 2) as oom2:
        assert retry.generate(turns) == expected
    assert oom2.raised < oom.raised
    # a new run (attempt 1) starts afresh
    attempts.keep_memory_notes(attempts.NoRetryNote(note_file, 1))
    assert not note_file.with_suffix(".oom").exists()
    assert memory.state_of(HFEngine(model, tok)).oom_positions is None
