"""The self-chat protocol's message lists."""

import pytest

from personadrift.generation.dialog import (
    Repetition,
    agent_messages,
    clean_reply,
    probe_messages,
    user_messages,
    window,
    without_system,
)

H = ["Topic?", "a1", "u2", "a2", "u3", "a3"]


def roles(msgs):
    return [m["role"] for m in msgs]


def test_agent_view_alternates_from_the_topic():
    m = agent_messages("SYS", H)
    assert roles(m) == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert [x["content"] for x in m[1:]] == H


def test_user_view_swaps_roles_and_restates_the_opening():
    m = user_messages("USERSYS", H[:3])
    assert roles(m) == ["system", "user", "assistant"]
    assert '"Topic?"' in m[1]["content"] and '"a1"' in m[1]["content"]
    assert m[2]["content"] == "u2"
    m = user_messages("USERSYS", H[:4])
    assert roles(m)[-1] == "user" and m[-1]["content"] == "a2"


def test_user_view_control_has_no_system_prompt():
    assert roles(user_messages(None, H[:2])) == ["user"]
    with pytest.raises(ValueError):
        user_messages("S", H[:1])


def test_probe_is_a_fork_that_leaves_history_alone():
    hist = list(H[:4])
    m = probe_messages("SYS", hist, "PROBE?")
    assert m[-1] == {"role": "user", "content": "PROBE?"}
    assert hist == H[:4]


def test_repetition_before_every_user_turn():
    m = agent_messages("SYS", H, Repetition(every=1))
    assert roles(m) == ["system", "user", "assistant", "system", "user", "assistant", "system", "user", "assistant"]
    assert all(x["content"] == "SYS" for x in m if x["role"] == "system")


def test_repetition_every_second_turn_and_as_user_prefix():
    m = agent_messages("SYS", H, Repetition(every=2))
    assert roles(m).count("system") == 2  # the first, and before the third user turn
    assert roles(m)[5] == "system"
    m = agent_messages("SYS", H, Repetition(every=1, placement="user_prefix"))
    assert roles(m).count("system") == 1
    assert m[3]["content"] == "SYS\n\nu2" and m[5]["content"] == "SYS\n\nu3"


def test_guidance_branch_drops_every_system_message():
    m = agent_messages("SYS", H, Repetition(every=1))
    assert "system" not in roles(without_system(m))


@pytest.mark.parametrize("raw,collapse,upstream", [
    ("  Hello\n\nworld \t x ", "Hello world x", "Hello  world \t x"),   # upstream: one space per newline
    ("[a,\nb, c]", "[a, b, c]", "[a, b, c]"),
    ("[a,\n\nb]", "[a, b]", "[a,  b]"),                                # ', ' split: 'a', ' b' upstream
    ("one\r\ntwo", "one two", "one\r two"),                            # only '\n' is replaced upstream
    ("\n\n  padded  \n", "padded", "padded"),                          # both strip first
])
def test_clean_reply_collapses_or_flattens_each_newline_as_upstream(raw, collapse, upstream):
    assert clean_reply(raw) == clean_reply(raw, True, "collapse") == collapse
    assert clean_reply(raw, True, "upstream") == upstream
    assert clean_reply(raw, False, "upstream") == clean_reply(raw, False, "collapse") == raw.strip()


def test_clean_reply_whitespace_modes_are_checked():
    with pytest.raises(ValueError, match="unknown whitespace mode 'tabs'"):
        clean_reply("x", True, "tabs")
    from personadrift.config import validate_config
    assert validate_config({"model": {"name": "t", "source": "tiny"}})["selfchat"]["whitespace"] == "collapse"
    assert validate_config({"model": {"name": "t", "source": "tiny"}, "selfchat": {"whitespace": "upstream"}})


def test_guidance_negative_branch_modes():
    from personadrift.generation.dialog import negative_branch

    m = agent_messages("SYS", H[:2])
    assert roles(negative_branch(m)) == ["user", "assistant"]
    assert negative_branch(m, "empty_system")[0] == {"role": "system", "content": ""}
    with pytest.raises(ValueError):
        negative_branch(m, "other")


def test_repetition_falls_back_to_user_prefix_only_where_needed():
    rep = Repetition(every=2)
    assert rep.for_template(True) is rep
    assert rep.for_template(False) == Repetition(every=2, placement="user_prefix")
    prefix = Repetition(every=1, placement="user_prefix")
    assert prefix.for_template(False) is prefix


def test_window_drops_whole_rounds_and_both_views_still_alternate():
    assert window(H, 0) == H
    assert window(H, 1) == ["u2", "a2", "u3", "a3"]
    m = agent_messages("SYS", window(H[:5], 1))
    assert roles(m) == ["system", "user", "assistant", "user"] and m[1]["content"] == "u2"
    u = user_messages("USERSYS", window(H[:4], 1))  # the oldest exchange kept is restated
    assert roles(u) == ["system", "user"] and '"u2"' in u[1]["content"] and '"a2"' in u[1]["content"]


def test_opening_wording_is_a_parameter():
    m = user_messages(None, H[:2], opening="Q=$topic A=$reply")
    assert m == [{"role": "user", "content": "Q=Topic? A=a1"}]


@pytest.mark.parametrize("placement", ["system_message", "user_prefix"])
def test_repetition_leaves_a_single_user_turn_as_the_baseline(placement):
    """What lets the workflow copy the baseline's MMLU to repetition settings (one user turn)."""
    from personadrift.generation.dialog import Repetition
    from personadrift.interventions.settings import expand_settings, mmlu_from_baseline

    assert agent_messages("P", ["question"], Repetition(every=1, placement=placement)) == agent_messages("P", ["question"])
    settings = {s.name: s for s in expand_settings({
        "none": {"method": "none"}, "control": {"method": "none", "user_persona": False},
        "repeat": {"method": "repetition", "every": [1, 2]}, "split": {"method": "split_softmax", "k": [0.5]},
        "cfg": {"method": "cfg", "guidance_scale": [1.5]}})}
    copied = sorted(n for n, s in settings.items() if mmlu_from_baseline(s))
    assert copied == ["repeat-every1", "repeat-every2"]
