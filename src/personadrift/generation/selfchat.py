"""Running the self-chat benchmark for one shard of conversations.

All conversations of a shard advance in lock-step: every user-bot turn of the round in one
batched call, then every agent turn, then every probe (agent persona and user persona, ``runs``
samples each) in forks that never enter the dialog. After each round, each conversation's
record is checkpointed atomically, so a killed job resumes from its last completed round and
never generates a completed turn twice (each completion is appended to ``events.jsonl`` only
after its checkpoint is on disk).

Conversation ``s`` is fixed by ``(seed, s)``: its personas, topic, and every sampling seed (the
seeds do not depend on the intervention setting, so settings are compared on common random
numbers as well as on the same persona pairs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from personadrift.generation.api import GenRequest
from personadrift.generation.dialog import (
    agent_messages,
    clean_reply,
    probe_messages,
    user_messages,
)
from personadrift.seeding import derive_seed, rng
from personadrift.storage import atomic_write_json, read_json

if TYPE_CHECKING:  # settings come from a later stage; used here as types only
    from personadrift.interventions.settings import Setting

log = logging.getLogger(__name__)


def persona_record(p) -> dict:
    """The persona as stored in a transcript (self-contained: scoring needs no persona file)."""
    return {
        "id": p.id,
        "category": p.category,
        "system_prompt": p.system_prompt,
        "probe": p.probe,
        "judge": p.judge,
        "judge_args": dict(p.judge_args),
    }


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
        self.repetition = setting.repetition()
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
            "turns": self.cfg["turns"],
            "history": [plan["topic"]],
            "probes": [],
            "complete": False,
            "provenance": provenance,
        }

    def _commit(self, recs: list[dict], what: str, turn: int) -> None:
        for rec in recs:
            atomic_write_json(self._path(rec["conversation"]), rec)
        with open(self.events, "a", encoding="utf-8") as f:
            for rec in recs:
                f.write(json.dumps({"conversation": rec["conversation"], "turn": turn, "what": what, "pid": os.getpid()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --------------------------------------------------------------- the protocol
    def _applies(self, phase: str) -> bool:
        return self.setting.intervenes(phase)

    def _agent_request(self, rec: dict, msgs: list[dict], seed: int, phase: str, n: int = 1) -> GenRequest:
        return GenRequest(
            messages=msgs,
            seed=seed,
            key=f"{rec['conversation']}/agent",
            n=n,
            persist=phase == "dialog",
            intervene=self._applies(phase),
            negative_messages=self.setting.negative_messages(msgs),
        )

    def _user_turn(self, t: int) -> None:
        """History entry ``t`` (1-based, odd, >= 3) is the user bot's reply."""
        todo = [r for r in self.records if len(r["history"]) == t - 1]
        if not todo:
            return
        reqs = []
        for rec in todo:
            sys = rec["user"]["system_prompt"] if rec["user_has_system_prompt"] else None
            reqs.append(GenRequest(
                messages=user_messages(sys, rec["history"]),
                seed=derive_seed(self.seed, rec["conversation"], "user", t),
                key=f"{rec['conversation']}/user",
            ))
        self._generate_into(todo, reqs, t, "user")

    def _agent_turn(self, t: int) -> None:
        todo = [r for r in self.records if len(r["history"]) == t - 1]
        if not todo:
            return
        reqs = [
            self._agent_request(
                rec,
                agent_messages(rec["agent"]["system_prompt"], rec["history"], self.repetition),
                derive_seed(self.seed, rec["conversation"], "agent", t),
                "dialog",
            )
            for rec in todo
        ]
        self._generate_into(todo, reqs, t, "agent")

    def _generate_into(self, todo, reqs, t, role) -> None:
        replies = self._generate(reqs, self.cfg["max_new_tokens"])
        for rec, texts in zip(todo, replies):
            rec["history"].append(clean_reply(texts[0], self.cfg["flatten_newlines"]))
        self._commit(todo, role, t)

    def _probes(self, t: int) -> None:
        rnd = t // 2
        todo = [r for r in self.records if not any(p["round"] == rnd for p in r["probes"])]
        if not todo:
            return
        kinds = ["agent", "user"] if self.cfg["probe_user_persona"] else ["agent"]
        reqs, where = [], []
        for rec in todo:
            for kind in kinds:
                question = rec[kind]["probe"]
                msgs = probe_messages(rec["agent"]["system_prompt"], rec["history"][:t], question, self.repetition)
                seed = derive_seed(self.seed, rec["conversation"], "probe", t, kind)
                reqs.append(self._agent_request(rec, msgs, seed, "probes", n=self.cfg["runs"]))
                where.append((rec, kind, question))
        answers = self._generate(reqs, self.cfg["probe_max_new_tokens"])
        for (rec, kind, question), texts in zip(where, answers):
            rec["probes"].append({
                "round": rnd,
                "turn": t,
                "kind": kind,
                "persona": rec[kind]["id"],
                "question": question,
                "answers": [clean_reply(x, self.cfg["flatten_newlines"]) for x in texts],
            })
        self._commit(todo, "probes", t)

    def _generate(self, reqs: list[GenRequest], max_new_tokens: int) -> list[list[str]]:
        return self.engine.generate(reqs, max_new_tokens=max_new_tokens)

    def run(self) -> list[dict]:
        turns = self.cfg["turns"]
        bar = tqdm(total=turns // 2, desc=f"{self.setting.name} rounds", unit="round", mininterval=0)
        start, tokens0 = time.time(), _tokens(self.engine)
        for t in range(2, turns + 1, 2):
            if t >= 4:
                self._user_turn(t - 1)
            self._agent_turn(t)
            self._probes(t)
            elapsed = max(time.time() - start, 1e-9)
            bar.set_postfix(conversations=len(self.records), tok_per_s=f"{(_tokens(self.engine) - tokens0) / elapsed:.1f}")
            bar.update(1)
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
                                      "system_prompt_folded", "base_url", "model")}
    what = {"model": keys, "selfchat": config["selfchat"], "seed": config["seed"], "setting": setting.describe(),
            "backend": config["backend"]}
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
    keys = ("temperature", "top_p", "max_new_tokens", "probe_max_new_tokens", "runs", "turns", "flatten_newlines")
    return {k: cfg[k] for k in keys}

