"""Running the self-chat benchmark for one shard of conversations.

All conversations of a shard advance in lock-step: every user-bot turn of the round in one
batched call, then every agent turn, then every probe (agent persona and user persona, ``runs``
samples each) in forks that never enter the dialog. A round's probes are generated in the same
batched call as the next dialog turn (both need only the history so far; a taller batch is what
makes a CPU fast), and recorded before it. After each round, each conversation's
record is checkpointed atomically, so a killed job resumes from its last completed round and
never generates a completed turn twice (each completion is appended to ``events.jsonl`` only
after its checkpoint is on disk).

Conversation ``s`` is fixed by ``(seed, s)``: its personas, topic, and every sampling seed (the
seeds do not depend on the intervention setting, so settings are compared on common random
numbers as well as on the same persona pairs).

Round 0: before any dialog, the agent is asked its own probe (and the user persona's) right after
its system prompt, with seeds under a label persona calibration never uses, so each drift curve
starts at an unselected baseline.

Context length: every turn and probe records its prompt length, reply length and why the reply
ended (``turns``, ``completions``), and the context-length policy's verdict (``context``). A prompt
plus its reply budget must fit the model's positions (``model.max_context``, else the model's
config); otherwise ``selfchat.context_policy`` decides: ``error`` stops the job with a message
(checkpoints kept), ``drop_oldest`` shows the model the dialog without its oldest rounds
(``truncated``; the stored history stays whole), ``stop`` ends the conversation there (its later
probes are stored unanswered as ``overflow``, so no round is silently missing).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from personadrift.errors import InputError
from personadrift.generation.api import GenRequest
from personadrift.generation.dialog import (
    agent_messages,
    clean_reply,
    probe_messages,
    user_messages,
    window,
)
from personadrift.protocol.personas import persona_record
from personadrift.seeding import derive_seed, rng
from personadrift.storage import atomic_write_json, read_json

if TYPE_CHECKING:  # settings come from a later stage; used here as types only
    from personadrift.interventions.settings import Setting

log = logging.getLogger(__name__)


def plan_conversation(s: int, seed: int, personas: list, topics: list[str]) -> dict:
    """Agent persona, a different user persona, and a topic for conversation ``s``."""
    if len(personas) < 2:
        raise ValueError("a self-chat needs at least two personas")
    r = rng(seed, "conversation", s)
    a = r.randrange(len(personas))
    u = r.randrange(len(personas) - 1)
    u += u >= a  # never the same persona on both sides
    return {
        "conversation": s,
        "agent": persona_record(personas[a]),
        "user": persona_record(personas[u]),
        "topic": topics[r.randrange(len(topics))],
    }


@dataclass
class _Phase:
    """One protocol step's requests, and what to do with their completions (record, checkpoint)."""

    requests: list[GenRequest]
    finish: Callable[[list], None]


class ContextOverflow(InputError):
    """A prompt plus its reply budget exceeds the model's context under ``context_policy: error``."""


def check_opening(opening: str) -> str:
    """The user bot's opening template must name ``$topic`` and ``$reply`` and nothing else."""
    from string import Template

    template = Template(opening)
    if "{" in opening or "}" in opening or not template.is_valid():
        raise InputError("config", "selfchat.opening", "write the fields as $topic and $reply, without braces "
                         "(Snakemake reads {name} in a config string as a wildcard); $$ is a literal $")
    fields = set(template.get_identifiers())
    if fields - {"topic", "reply"}:
        unknown = ", ".join(f"${f}" for f in sorted(fields - {"topic", "reply"}))
        raise InputError("config", "selfchat.opening",
                         f"unknown field {unknown}: the opening knows only $topic and $reply")
    if fields != {"topic", "reply"}:
        raise InputError("config", "selfchat.opening",
                         f"must contain $topic and $reply and no other field (has {sorted(fields)})")
    return opening


def _usage(c=None) -> dict:
    """What a turn or probe answer records about its length (``c`` a ``Completion`` or None)."""
    return {"prompt_tokens": c.prompt_tokens if c else 0, "new_tokens": c.new_tokens if c else 0,
            "finish_reason": c.finish_reason if c else None}


def shard_conversations(n: int, shard_size: int, shard: int) -> list[int]:
    return list(range(shard * shard_size, min((shard + 1) * shard_size, n)))


def n_shards(n: int, shard_size: int) -> int:
    return -(-n // shard_size)


class ShardRun:
    """One shard of one setting: plans, checkpoints, lock-step rounds, outputs."""

    def __init__(self, engine, *, config: dict, setting: Setting, plans: list[dict],
                 checkpoint_dir: Path, provenance: dict):
        self.engine = engine
        self.cfg = config["selfchat"]
        self.seed = config["seed"]
        self.setting = setting
        self.opening = check_opening(self.cfg["opening"])  # the validated config: the schema's defaults filled in
        self.policy = self.cfg["context_policy"]
        self.whitespace = self.cfg["whitespace"]
        self.max_context = config["model"]["max_context"] or getattr(engine, "max_context", None)
        chat = getattr(engine, "chat", None)  # the HF engine's template; an API server keeps its own
        self._count = chat.count if chat is not None else None
        configured = setting.repetition()
        self.repetition = configured
        if configured is not None and chat is not None:
            self.repetition = configured.for_template(chat.mid_dialog_system)
            if self.repetition != configured:
                log.warning("the chat template cannot render a system message in mid-dialog; repetition "
                            "placement %s falls back to %s", configured.placement, self.repetition.placement)
        provenance = {**provenance, "protocol": {
            "opening": self.opening,
            "context_policy": self.policy,
            "max_context": self.max_context,
            "repetition_placement": self.repetition.placement if self.repetition else None,
            "repetition_placement_configured": configured.placement if configured else None,
        }}
        self.checkpoint_dir = Path(checkpoint_dir)
        self.events = self.checkpoint_dir / "events.jsonl"
        self.fingerprint = generation_fingerprint(config, setting, provenance)
        self.records = [self._load_or_new(p, provenance) for p in plans]

    # --------------------------------------------------------------- checkpoints
    def _path(self, s: int) -> Path:
        return self.checkpoint_dir / f"conv-{s:05d}.json"

    def _load_or_new(self, plan: dict, provenance: dict) -> dict:
        path = self._path(plan["conversation"])
        if path.exists():
            rec = read_json(path)
            same = all(rec[k] == plan[k] for k in ("agent", "user", "topic"))
            if same and rec.get("fingerprint") == self.fingerprint:
                log.info("conversation %d: resuming after %d turns", plan["conversation"], len(rec["history"]))
                return rec
            log.warning("conversation %d: checkpoint was made with another model, config or plan; "
                        "starting over", plan["conversation"])
        return {
            **plan,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "setting": self.setting.describe(),
            "user_has_system_prompt": self.cfg["user_system_prompt"] and self.setting.user_persona,
            "planned_turns": self.cfg["turns"],
            "history": [plan["topic"]],
            "turns": [{"speaker": "topic", **_usage(), "context": "ok"}],
            "probes": [],
            "stopped": None,
            "complete": False,
            "provenance": provenance,
        }

    def _commit(self, recs: list[dict], what: str, turn: int) -> None:
        for rec in recs:
            atomic_write_json(self._path(rec["conversation"]), rec)
        with open(self.events, "a", encoding="utf-8") as f:
            for rec in recs:
                entry = {"conversation": rec["conversation"], "turn": turn, "what": what, "pid": os.getpid()}
                f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --------------------------------------------------------------- the protocol
    def _applies(self, phase: str) -> bool:
        return self.setting.intervenes(phase)

    def _agent_request(self, rec: dict, msgs: list[dict], seed: int, phase: str, *, limit: int,
                       n: int = 1) -> GenRequest:
        return GenRequest(
            messages=msgs,
            seed=seed,
            key=f"{rec['conversation']}/agent",
            n=n,
            max_new_tokens=limit,
            persist=phase == "dialog",
            intervene=self._applies(phase),
            negative_messages=self.setting.negative_messages(msgs),
            persona=rec["agent"]["id"],  # the agent's persona (steering's vector), also on the user persona's probe
        )

    def _fit(self, rec: dict, view, history: list[str], limit: int, what: str, keep: int):
        """The messages ``view(history)`` if they fit the context with ``limit`` reply tokens, else
        what the policy says: ``(messages or None, verdict, rounds dropped)``. ``keep`` is the
        fewest history entries a truncated view may show."""
        msgs = view(history)
        if self.max_context is None or self._count is None:
            return msgs, "ok", 0  # an API server enforces its own limit (it answers with an error)
        need = self._count(msgs) + limit
        if need <= self.max_context:
            return msgs, "ok", 0
        if self.policy == "stop":
            return None, "overflow", 0
        if self.policy == "drop_oldest":
            for k in range(1, (len(history) - keep) // 2 + 1):
                msgs = view(window(history, k))
                if self._count(msgs) + limit <= self.max_context:
                    return msgs, "truncated", k
        raise ContextOverflow(
            "config", "selfchat.context_policy",
            f"conversation {rec['conversation']}, {what}: a prompt of {need - limit} tokens plus {limit} reply "
            f"tokens exceeds the model's {self.max_context} positions (model.max_context)"
            + (" even with only the latest exchange shown" if self.policy == "drop_oldest" else "")
            + "; set selfchat.context_policy to drop_oldest or stop, or lower the token limits "
              "(completed rounds are checkpointed and resume under any policy)")

    def _user_turn(self, t: int) -> _Phase | None:
        """History entry ``t`` (1-based, odd, >= 3) is the user bot's reply."""
        todo = [r for r in self.records if len(r["history"]) == t - 1 and not r.get("stopped")]
        reqs, fits, limit = [], [], self.cfg["max_new_tokens"]
        for rec in todo:
            sys = rec["user"]["system_prompt"] if rec["user_has_system_prompt"] else None
            msgs, verdict, dropped = self._fit(
                rec, lambda h, sys=sys: user_messages(sys, h, self.opening), rec["history"], limit,
                f"turn {t} (user)", 2)
            fits.append((verdict, dropped))
            reqs.append(None if msgs is None else GenRequest(
                messages=msgs,
                seed=derive_seed(self.seed, rec["conversation"], "user", t),
                key=f"{rec['conversation']}/user",
                max_new_tokens=limit,
            ))
        return self._turn_phase(todo, reqs, fits, t, "user")

    def _agent_turn(self, t: int) -> _Phase | None:
        todo = [r for r in self.records if len(r["history"]) == t - 1 and not r.get("stopped")]
        reqs, fits, limit = [], [], self.cfg["max_new_tokens"]
        for rec in todo:
            sys = rec["agent"]["system_prompt"]
            msgs, verdict, dropped = self._fit(
                rec, lambda h, sys=sys: agent_messages(sys, h, self.repetition), rec["history"], limit,
                f"turn {t} (agent)", 1)
            fits.append((verdict, dropped))
            reqs.append(None if msgs is None else self._agent_request(
                rec, msgs, derive_seed(self.seed, rec["conversation"], "agent", t), "dialog", limit=limit))
        return self._turn_phase(todo, reqs, fits, t, "agent")

    def _turn_phase(self, todo, reqs, fits, t, role) -> _Phase | None:
        if not todo:
            return None

        def finish(replies) -> None:
            replies = iter(replies)
            for rec, req, (verdict, dropped) in zip(todo, reqs, fits):
                if req is None:  # context_policy stop: the dialog ends before this turn
                    rec["stopped"] = {"turn": t, "speaker": role, "reason": "context"}
                    continue
                c = next(replies)[0]
                rec["history"].append(clean_reply(c.text, self.cfg["flatten_newlines"], self.whitespace))
                rec.setdefault("turns", []).append({"speaker": role, **_usage(c), "context": verdict,
                                                    **({"dropped_rounds": dropped} if dropped else {})})
            self._commit(todo, role, t)

        return _Phase([q for q in reqs if q is not None], finish)

    def _probes(self, t: int) -> _Phase | None:
        """Probe forks after history entry ``t``; ``t = 0`` is round 0, before any dialog."""
        rnd = t // 2
        todo = [r for r in self.records if not any(p["round"] == rnd for p in r["probes"])]
        if not todo:
            return None
        kinds = ["agent", "user"] if self.cfg["probe_user_persona"] else ["agent"]
        limit = self.cfg["probe_max_new_tokens"]
        reqs: list[GenRequest] = []
        where: list[tuple] = []
        for rec in todo:
            sys = rec["agent"]["system_prompt"]
            for kind in kinds:
                question = rec[kind]["probe"]
                entry = {"round": rnd, "turn": t, "kind": kind, "persona": rec[kind]["id"], "question": question}
                if len(rec["history"]) < t:  # the dialog stopped before this round
                    where.append((rec, entry, None, "overflow", 0))
                    continue
                msgs, verdict, dropped = self._fit(
                    rec, lambda h, q=question, sys=sys: probe_messages(sys, h, q, self.repetition), rec["history"][:t],
                    limit, f"round {rnd} probe ({kind})", min(2, t))
                req = None
                if msgs is not None:
                    # round 0 draws from its own label: persona calibration ("calibration") never uses it
                    seed = (derive_seed(self.seed, rec["conversation"], "round0-probe", kind) if t == 0
                            else derive_seed(self.seed, rec["conversation"], "probe", t, kind))
                    req = self._agent_request(rec, msgs, seed, "probes", n=self.cfg["runs"], limit=limit)
                    reqs.append(req)
                where.append((rec, entry, req, verdict, dropped))

        def finish(answers) -> None:
            answers = iter(answers)
            for rec, entry, req, verdict, dropped in where:
                comps: list = next(answers) if req is not None else []
                rec["probes"].append({
                    **entry,
                    "answers": [clean_reply(c.text, self.cfg["flatten_newlines"], self.whitespace) for c in comps],
                    "completions": [_usage(c) for c in comps],
                    "context": verdict,
                    **({"dropped_rounds": dropped} if dropped else {}),
                })
            self._commit(todo, "probes", t)

        return _Phase(reqs, finish)

    def _together(self, *phases: _Phase | None) -> None:
        """Generate the requests of independent phases in one engine call, then record and
        checkpoint each phase in order. A batch twice as tall costs far less than two calls on a
        CPU (a small batch leaves the linear layers idle), and each row's text depends only on
        its own seed, so merging never changes a reply."""
        present = [p for p in phases if p is not None]
        reqs = [q for p in present for q in p.requests]
        out = iter(self.engine.complete(reqs) if reqs else [])
        for p in present:
            p.finish([next(out) for _ in p.requests])

    def run(self) -> list[dict]:
        turns = self.cfg["turns"]
        bar = tqdm(total=turns // 2, desc=f"{self.setting.name} rounds", unit="round", mininterval=0)
        start, tokens0 = time.time(), _tokens(self.engine)
        # Schedule: each round's probes share a call with the next dialog turn, which needs only
        # the history they fork from (round 0's with the first agent turn, round r's with the user
        # turn of round r + 1); agent turns wait for the user turn before them.
        pending = self._probes(0)
        for t in range(2, turns + 1, 2):
            if t >= 4:
                self._together(pending, self._user_turn(t - 1))
                pending = None
            self._together(pending, self._agent_turn(t))
            pending = self._probes(t)
            elapsed = max(time.time() - start, 1e-9)
            rate = (_tokens(self.engine) - tokens0) / elapsed
            bar.set_postfix(conversations=len(self.records), tok_per_s=f"{rate:.1f}")
            bar.update(1)
        self._together(pending)  # the last round's probes
        bar.close()
        unfinished = [r for r in self.records if not r["complete"]]
        for rec in unfinished:
            rec["complete"] = True
        if unfinished:
            self._commit(unfinished, "complete", turns)
        return self.records


def generation_fingerprint(config: dict, setting: Setting, provenance: dict) -> str:
    """A hash of everything that decides a conversation's text: a checkpoint made under another
    model, sampling, seed, setting or protocol option is never resumed."""
    import hashlib

    model = provenance.get("model", {})
    keys = {k: model.get(k) for k in ("weights_sha256", "revision", "repo_id", "gguf_sha256", "chat_template_sha256",
                                      "system_prompt_folded", "base_url", "model", "dtype",
                                      "linear_kernel", "batch_invariant")}
    if model.get("blocked_decode") is not None:  # a batch-invariant model: its decode's rounding
        keys["blocked_decode"] = model["blocked_decode"]
    # The context policy only decides what happens once a prompt no longer fits, and its verdicts
    # are stored per turn, so a job stopped by ``error`` resumes under another policy.
    selfchat = {k: v for k, v in config["selfchat"].items() if k != "context_policy"}
    protocol = {k: v for k, v in provenance.get("protocol", {}).items() if k != "context_policy"}
    what = {"model": keys, "selfchat": selfchat, "seed": config["seed"], "setting": setting.describe(),
            "backend": config["backend"], "protocol": protocol}
    if provenance.get("cpu_numerics"):  # a model on the CPU: its kernels and threads decide the floats
        what["cpu_numerics"] = provenance["cpu_numerics"]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _tokens(engine) -> int:
    stats = getattr(engine, "stats", None)
    return getattr(stats, "generated_tokens", 0)


def write_outputs(records: list[dict], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        atomic_write_json(out_dir / f"conv-{rec['conversation']:05d}.json", rec)


def sampling_record(cfg: dict) -> dict:
    keys = ("temperature", "top_p", "top_k", "min_new_tokens", "max_new_tokens", "probe_max_new_tokens", "runs",
            "turns", "flatten_newlines", "whitespace", "context_policy", "opening")
    return {k: cfg[k] for k in keys if k in cfg}

