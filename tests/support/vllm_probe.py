"""What tests/test_vllm.py measures of the vLLM backend, run in the vLLM environment (.venv-vllm):
one engine load, then the same requests in several ways, written to one JSON file.

    .venv-vllm/bin/python tests/support/vllm_probe.py WEIGHTS OUT.json [--first-only]

vLLM spawns processes: the engine is built inside :func:`main`, under ``__main__``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from personadrift.generation.api import GenRequest, Sampling

REPO = Path(__file__).resolve().parents[2]
# the paper's sampling (top-k 50, top-p 0.9), a minimum length, short replies
SAMPLING = Sampling(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=12, min_new_tokens=2)


def requests() -> list[GenRequest]:
    """Prompts of different lengths and shapes (system prompt, several turns), budgets and n
    (forks, not dialog turns: the HF engine stores no prefix of a request of several samples)."""
    sys_a = {"role": "system", "content": "You love playing tennis and talk about it whenever you can."}
    sys_b = {"role": "system", "content": "Always answer in French."}
    return [
        GenRequest(messages=[sys_a, {"role": "user", "content": "What did you do this weekend?"}], seed=1, n=2,
                   persist=False),
        GenRequest(messages=[sys_b, {"role": "user", "content": "Tell me about your hobbies."}], seed=2,
                   max_new_tokens=6, persist=False),
        GenRequest(messages=[sys_a, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello there."},
                             {"role": "user", "content": "Do you prefer cats or dogs? Why?"}], seed=3,
                   persist=False),
        GenRequest(messages=[{"role": "user", "content": "What is your favourite food?"}], seed=4, n=3, persist=False),
    ]


def full_step_requests() -> list[GenRequest]:
    """48 seeded prompts of about 150 tokens: more than vLLM's default step budget (4,096 tokens),
    so with chunked prefill one of them would be split over two steps (generation/vllm_engine.py,
    whole_prefills)."""
    ask = "Tell me everything you know about the history of tennis and of the French language. " * 8
    return [GenRequest(messages=[{"role": "system", "content": f"Persona {i}."}, {"role": "user", "content": ask}],
                       seed=10 + i, persist=False) for i in range(48)]


def texts(completions) -> list[list[dict]]:
    return [[{"text": c.text, "prompt_tokens": c.prompt_tokens, "new_tokens": c.new_tokens,
              "finish_reason": c.finish_reason} for c in per] for per in completions]


def selfchat(engine, weights: str, checkpoints: Path, *, fail_after: int | None = None) -> list[dict]:
    """One 3-conversation self-chat shard on ``engine`` (the workflow's ShardRun); with
    ``fail_after``, the engine fails at that call (a killed job) and a second run resumes."""
    from personadrift.config import validate_config
    from personadrift.generation.selfchat import ShardRun, plan_conversation
    from personadrift.interventions.settings import expand_settings
    from personadrift.protocol.personas import load_personas, load_topics

    cfg = validate_config({
        "model": {"name": "m", "source": "local", "path": weights},
        "selfchat": {"conversations": 3, "shard_size": 3, "turns": 4, "runs": 2, "max_new_tokens": 8,
                     "probe_max_new_tokens": 6},
        "personas": {"files": [str(REPO / "personas/benchmark/persona.yaml")],
                     "topics": str(REPO / "personas/topics.yaml")},
    })
    personas = load_personas([REPO / "personas/benchmark/persona.yaml"])
    topics = load_topics(REPO / "personas/topics.yaml")
    plans = json.loads(json.dumps([plan_conversation(s, 0, personas, topics) for s in range(3)]))
    setting = expand_settings(cfg["interventions"])[0]

    def run():
        return ShardRun(engine, config=cfg, setting=setting, plans=plans, checkpoint_dir=checkpoints,
                        provenance={}).run()

    if fail_after is None:
        return run()
    original, calls = engine.complete, {"n": 0}

    def killed(reqs, **kw):
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise KeyboardInterrupt("killed")
        return original(reqs, **kw)

    engine.complete = killed
    try:
        run()
    except KeyboardInterrupt:
        pass
    finally:
        engine.complete = original
    return run()


def main(weights: str, out: str, first_only: bool) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from personadrift.generation.vllm_engine import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(weights, sampling=SAMPLING, dtype="float32", enforce_eager=True, cpu_kvcache_gib=1)
    result = {"load_s": time.perf_counter() - t0}
    reqs = requests()
    result["first"] = texts(engine.complete(reqs))
    if not first_only:
        result["again"] = texts(engine.complete(reqs))
        result["alone"] = [texts(engine.complete([r]))[0] for r in reqs]
        result["reversed"] = texts(engine.complete(list(reversed(reqs))))[::-1]
        full = full_step_requests()
        result["full_step_prompt_tokens"] = sum(len(engine.render(r.messages)) for r in full)
        result["full_step"] = texts(engine.complete(full + reqs))
        # the ids vLLM itself reports as the prompt it ran
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=engine.render(r.messages)) for r in reqs],
                                   SamplingParams(max_tokens=1, detokenize=False), use_tqdm=False)
        result["rendered_ids"] = [engine.render(r.messages) for r in reqs]
        result["vllm_prompt_ids"] = [list(o.prompt_token_ids) for o in outs]
        work = Path(out).parent
        keys = ("history", "turns", "probes")
        whole = selfchat(engine, weights, work / "ckpt-whole")
        resumed = selfchat(engine, weights, work / "ckpt-resumed", fail_after=2)
        result["selfchat_whole"] = [{k: r[k] for k in keys} for r in whole]
        result["selfchat_resumed"] = [{k: r[k] for k in keys} for r in resumed]
    result["total_s"] = time.perf_counter() - t0
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--first-only" in sys.argv[3:])
