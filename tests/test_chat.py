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
