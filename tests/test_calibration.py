"""Round-0 calibration (protocol/calibration.py) on real personas and judges: what is asked, how
answers are scored, and which personas the pool keeps and why. The model's side runs in the
smoke study (tests/test_workflow.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from personadrift.errors import InputError
from personadrift.protocol import calibration
from personadrift.protocol.personas import load_personas
from personadrift.seeding import derive_seed
from support.workflow import REPO

BENCH = REPO / "personas" / "benchmark"
BY_ID = {p.id: p for p in load_personas([BENCH / "persona.yaml", BENCH / "memorization.yaml"])}
# tennis-lover and pirate-captain have their own probes; never-say-banana too
PERSONAS = [BY_ID["tennis-lover"], BY_ID["pirate-captain"], BY_ID["never-say-banana"]]
CAL = {"samples": 2, "keep_threshold": 0.5, "min_lift": 0.2, "min_kept": 1}


def test_each_persona_is_asked_with_its_prompt_and_each_probe_alone():
    asked = calibration.prompts(PERSONAS, seed=7)
    tennis, alone = asked[0], asked[len(PERSONAS):]
    assert tennis.messages == [{"role": "system", "content": PERSONAS[0].system_prompt},
                               {"role": "user", "content": PERSONAS[0].probe}]
    assert (tennis.persona, tennis.seed) == ("tennis-lover", derive_seed(7, "calibration", "tennis-lover"))
    assert [a.probe for a in alone] == sorted({p.probe for p in PERSONAS})
    assert all(a.persona is None and a.messages == [{"role": "user", "content": a.probe}]
               and a.seed == derive_seed(7, "calibration", a.probe) for a in alone)


def test_answers_are_scored_by_each_persona_judge_as_stored():
    asked = calibration.prompts(PERSONAS, seed=0)
    answers = {"tennis-lover": ["I play TENNIS\n\nevery day.", "I read books."],
               "pirate-captain": ["Arr, matey!", "See the museums."],
               "never-say-banana": ["A yellow fruit.", "A banana."]}
    alone = {p.probe: ["I like walks.", "I like walks."] for p in PERSONAS}
    texts = [answers[a.persona] if a.persona else alone[a.probe] for a in asked]
    seen = []

    def clean(text):
        seen.append(text)
        return " ".join(text.split())

    t = calibration.calibration_table(PERSONAS, asked, texts, fluency_gate=False, clean=clean)
    assert len(t) == len(PERSONAS) * 2 * 2 and "I play TENNIS\n\nevery day." in seen
    got = t.set_index(["persona", "condition", "sample"])["score"].to_dict()
    assert got[("tennis-lover", "persona", 0)] == 1.0 and got[("tennis-lover", "persona", 1)] == 0.0
    assert got[("pirate-captain", "persona", 0)] == 1.0
    assert (got[("never-say-banana", "persona", 0)], got[("never-say-banana", "persona", 1)]) == (1.0, 0.0)
    assert got[("never-say-banana", "no_persona", 0)] == 1.0  # the model's default already complies
    assert t.loc[t["persona"] == "tennis-lover", "answer"].iloc[0] == "I play TENNIS\n\nevery day."  # raw text kept


def table(scores: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"persona": pid, "condition": cond, "sample": i, "score": s}
                         for (pid, cond), values in scores.items() for i, s in enumerate(values)])


SCORES = {("tennis-lover", "persona"): [1.0, 1.0], ("tennis-lover", "no_persona"): [0.0, 0.0],
          ("pirate-captain", "persona"): [0.0, 0.5], ("pirate-captain", "no_persona"): [0.0, 0.0],
          ("never-say-banana", "persona"): [1.0, 1.0], ("never-say-banana", "no_persona"): [1.0, 0.8]}


def test_the_pool_keeps_the_personas_followed_at_round_0_and_says_why_others_are_dropped():
    pool = calibration.select(PERSONAS, table(SCORES), CAL, source="cal.csv")
    assert [p["id"] for p in pool.kept] == ["tennis-lover"]
    assert pool.kept[0]["round0_adherence"] == 1.0 and pool.kept[0]["judge"] == "contains_any"
    reasons = pool.summary.set_index("persona")["reason"].to_dict()
    assert reasons == {"tennis-lover": "", "pirate-captain": "round-0 score 0.25 < 0.5",
                       "never-say-banana": "lift over no persona +0.10 < 0.2"}
    assert pool.rule == "round-0 score >= 0.5 over 2 samples and >= 0.2 above the same probe without a persona"


def test_without_a_threshold_every_persona_is_kept():
    pool = calibration.select(PERSONAS, table(SCORES), {**CAL, "keep_threshold": None}, source="cal.csv")
    assert len(pool.kept) == 3 and not pool.dropped and pool.rule == "all personas (no calibration threshold)"


def test_too_few_kept_names_the_threshold_and_the_table():
    with pytest.raises(InputError, match=r"config: personas.calibration.keep_threshold: only 1 personas pass "
                                         r"round-0 calibration; .*\(see cal.csv\)"):
        calibration.select(PERSONAS, table(SCORES), {**CAL, "min_kept": 2}, source="cal.csv")
