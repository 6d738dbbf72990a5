"""Chat-template rendering: system folding and the system-prompt token span."""

from transformers import AutoTokenizer

from personadrift.generation.chat import ChatFormat, fold_system

SYSTEM = "You love playing tennis."
MSGS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is your hobby?"},
    {"role": "assistant", "content": "Tennis, of course."},
    {"role": "user", "content": "Why?"},
]


def _span_text(tok, rendered):
    s, e = rendered.prompt_span
    return tok.decode(rendered.ids[s:e])


def test_template_with_system_role_is_not_folded(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = ChatFormat(tok)
    r = chat.render(MSGS)
    assert not chat.fold and not r.system_folded
    assert _span_text(tok, r).strip() == SYSTEM
    assert tok.decode(r.ids) == chat.text(MSGS)
    assert chat.text(MSGS).endswith("<|im_start|>assistant\n")


def test_template_without_system_role_folds_into_first_user_turn(tiny_nosys_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_nosys_model_dir)
    chat = ChatFormat(tok)
    r = chat.render(MSGS)
    assert chat.fold and r.system_folded
    text = chat.text(MSGS)
    assert "<|im_start|>system" not in text
    assert f"<|im_start|>user\n{SYSTEM}\n\nWhat is your hobby?" in text
    assert _span_text(tok, r).strip() == SYSTEM


def test_fold_system_without_user_turn_keeps_the_prompt():
    assert fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
    assert fold_system(MSGS[1:]) == MSGS[1:]


def test_span_is_stable_as_the_dialog_grows(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = ChatFormat(tok)
    short, long = chat.render(MSGS[:2]), chat.render(MSGS)
    assert short.prompt_span == long.prompt_span
    assert long.ids[: short.prompt_span[1]] == short.ids[: short.prompt_span[1]]


def test_no_span_without_system_message(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert ChatFormat(tok).render(MSGS[1:]).prompt_span is None


# ------------------------------------------------------------ every protocol sequence x three templates
import pytest  # noqa: E402

from personadrift.generation.dialog import (  # noqa: E402
    Repetition,
    agent_messages,
    negative_branch,
    probe_messages,
    user_messages,
    window,
)

HIST = ["What do you think of podcasts?", "a1 words", "u2 words", "a2 words", "u3 words", "a3 words", "u4 words"]
AGENT, USER, PROBE = "You love tennis.", "You speak French.", "What is your hobby?"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The tiny model's tokenizer under ChatML, the Llama-2-chat format (written for this project
    from the format's public description) and a template without a system role."""
    from personadrift.generation.tiny import TEMPLATES, build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("tiny-templates"))
    out = {}
    for name, template in TEMPLATES.items():
        tok = AutoTokenizer.from_pretrained(base)
        tok.chat_template = template
        out[name] = tok
    return out


def protocol_sequences(rep: Repetition | None) -> dict[str, list[dict]]:
    """Every message list the self-chat, its probes, guidance and MMLU build."""
    from personadrift.capability.mmlu import Question, format_prompt

    q = Question(0, "astronomy", "Which planet is largest?", ("Mars", "Jupiter", "Venus", "Earth"), "B")
    seqs = {}
    for t in (1, 3, 5, 7):  # agent turns: history ends with a user-side utterance
        seqs[f"agent t={t + 1}"] = agent_messages(AGENT, HIST[:t], rep)
        seqs[f"agent t={t + 1} window"] = agent_messages(AGENT, window(HIST[:t], 1), rep) if t > 1 else None
    for t in (2, 4, 6):  # user-bot turns, with and without its persona (the control)
        seqs[f"user t={t + 1}"] = user_messages(USER, HIST[:t])
        seqs[f"user t={t + 1} control"] = user_messages(None, HIST[:t])
        seqs[f"user t={t + 1} window"] = user_messages(USER, window(HIST[:t], 1)) if t > 2 else None
    for t in (0, 2, 4, 6):  # probes, round 0 included
        seqs[f"probe t={t}"] = probe_messages(AGENT, HIST[:t], PROBE, rep)
    for name in [k for k in seqs if k.startswith(("agent", "probe"))]:
        if seqs[name] is not None:
            for mode in ("no_system", "empty_system"):
                seqs[f"{name} guidance {mode}"] = negative_branch(seqs[name], mode)
    seqs["mmlu"] = [{"role": "system", "content": AGENT}, {"role": "user", "content": format_prompt(q)}]
    seqs["mmlu no persona"] = [{"role": "user", "content": format_prompt(q)}]
    return {k: v for k, v in seqs.items() if v is not None}


@pytest.mark.parametrize("template", ["chatml", "llama2", "no_system"])
@pytest.mark.parametrize("placement", [None, "system_message", "user_prefix"])
def test_every_protocol_sequence_renders_under_each_template(tokenizers, template, placement):
    tok = tokenizers[template]
    chat = ChatFormat(tok)
    rep = None if placement is None else Repetition(every=1, placement=placement).for_template(chat.mid_dialog_system)
    for name, msgs in protocol_sequences(rep).items():
        text = chat.text(msgs)  # raises if the template rejects the sequence
        pos = 0
        for m in msgs:  # every message's text is there, in order
            if m["content"]:
                found = text.find(m["content"].strip(), pos)
                assert found >= 0, f"{template}/{name}: {m['content']!r} missing from the rendered prompt"
                pos = found
        if rep is not None and name == "agent t=6":
            assert text.count(AGENT) == 3, f"{template}/{name}: the repeated prompt must be shown each time"
        r = chat.render(msgs)
        if msgs[0]["role"] == "system" and msgs[0]["content"]:
            s, e = r.prompt_span
            assert tok.decode(r.ids[s:e]).strip() == msgs[0]["content"]


def test_mid_dialog_system_messages_are_detected_per_template(tokenizers):
    assert ChatFormat(tokenizers["chatml"]).mid_dialog_system
    assert not ChatFormat(tokenizers["llama2"]).mid_dialog_system
    assert not ChatFormat(tokenizers["no_system"]).mid_dialog_system
    # the defect the fallback avoids: repetition's default placement cannot be rendered
    msgs = agent_messages(AGENT, HIST[:5], Repetition(every=1))
    with pytest.raises(Exception, match="alternate"):
        ChatFormat(tokenizers["llama2"]).text(msgs)
    with pytest.raises(Exception, match="System role not supported"):
        ChatFormat(tokenizers["no_system"]).text(msgs)


def test_llama2_template_renders_the_public_format(tokenizers):
    tok = tokenizers["llama2"]
    chat = ChatFormat(tok)
    assert not chat.fold  # the system message is kept, inside the first [INST]
    text = chat.text(agent_messages(AGENT, HIST[:3]))
    b, e = tok.bos_token, tok.eos_token
    assert text == (f"{b}[INST] <<SYS>>\n{AGENT}\n<</SYS>>\n\n{HIST[0]} [/INST] {HIST[1]} {e}"
                    f"{b}[INST] {HIST[2]} [/INST]")
    assert chat.text(user_messages(None, HIST[:2])).startswith(f"{b}[INST] In the last round")
    assert chat.count(agent_messages(AGENT, HIST[:3])) == len(chat.render(agent_messages(AGENT, HIST[:3])).ids)
