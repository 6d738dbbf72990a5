"""MMLU scoring in two forms, from any log-probability callables (``evaluate``) or from the
batched engine with a setting's intervention in place (``EngineScorer``).

Letter: the options are shown and the reply's first token is scored for "A".."D", each letter
tokenized as the chat template renders an assistant reply that is the letter (``ReplyTokens``).
Cloze: the options are hidden and each option's text is scored as the whole reply, its
log-likelihood normalised per character. Small models are at chance in the letter form
(SmolLM2-135M answers "A" to nearly everything) but not in the cloze form. ``evaluate`` takes
any callables for the two forms, so interventions plug in without this module knowing about
them; the tests' plain Hugging Face reference is ``tests/support/mmlu_reference.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from personadrift.capability.mmlu.data import LETTERS, Question, format_cloze_prompt, format_prompt

if TYPE_CHECKING:  # heavy imports stay lazy
    import pandas as pd


class ReplyTokens:
    """Token ids of an assistant reply exactly as the chat template renders it after the
    generation prompt, the template's end-of-turn tokens left out.

    Why not tokenize the reply text appended to the prompt: templates put text between the
    generation prompt and the reply (Llama-2-chat writes ``[/INST] reply </s>``, so a reply
    "A" is the SentencePiece piece "▁A", while "A" appended to the prompt is the bare "A"
    the model almost never emits there). So a full assistant turn is rendered, the prompt's
    tokens (with the generation prompt) must be its start, and what follows them, less the
    end-of-turn suffix, is the reply. The suffix is what the turns of two different one-letter
    replies ("A", "B") have in common at their end.
    """

    def __init__(self, tokenizer, *, fold: bool | None = None):
        from personadrift.generation.chat import ChatFormat

        self.chat = ChatFormat(tokenizer, fold=fold)
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "Answer with a letter."}]
        a, b = self._tail(probe, "A"), self._tail(probe, "B")
        n = 0
        while n < min(len(a), len(b)) - 1 and a[-1 - n] == b[-1 - n]:
            n += 1
        self.end_of_turn = a[len(a) - n:]

    def _tail(self, messages: list[dict], reply: str) -> list[int]:
        encode = lambda text: list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        prompt = encode(self.chat.text(messages, add_generation_prompt=True))
        turn = encode(self.chat.text([*messages, {"role": "assistant", "content": reply}],
                                     add_generation_prompt=False))
        if turn[: len(prompt)] != prompt:
            raise ValueError(
                "the chat template's generation prompt is not the start of its rendered assistant "
                "turn, so a reply cannot be scored after the prompt the engine encodes"
            )
        return turn[len(prompt):]

    def __call__(self, messages: list[dict], reply: str) -> list[int]:
        tail = self._tail(messages, reply)
        n = len(self.end_of_turn)
        if n and tail[-n:] != self.end_of_turn:
            raise ValueError(f"the rendered reply {reply!r} does not end with the template's "
                             f"end-of-turn tokens {self.tokenizer.convert_ids_to_tokens(self.end_of_turn)}")
        return tail[: len(tail) - n]


def letter_token_ids(tokenizer) -> list[int]:
    """Token ids of "A".."D" as the model emits them as its whole reply: the first token of an
    assistant turn whose content is the letter, rendered by the chat template
    (:class:`ReplyTokens`): "A" after ChatML's ``assistant\n`` (SmolLM2, Qwen), "▁A" after
    Llama-2-chat's ``[/INST]``. Each letter must be one token, else ``ValueError``.
    """
    reply = ReplyTokens(tokenizer)
    probe = [{"role": "user", "content": "Answer with a letter."}]
    ids: list[int] = []
    for letter in LETTERS:
        rest = reply(probe, letter)
        if len(rest) != 1:
            pieces = tokenizer.convert_ids_to_tokens(rest)
            raise ValueError(
                f"answer letter {letter!r} is not a single token for this tokenizer "
                f"(the reply becomes {pieces}); letter log-probabilities at one position cannot score it"
            )
        ids.append(int(rest[0]))
    if len(set(ids)) != 4:
        raise ValueError(f"answer letters A..D map to repeated token ids {ids}")
    return ids


# --------------------------------------------------------------------------- scoring

FORMS = ("letter", "cloze")


def _conversation(system_prompt: str | None, user: str) -> list[dict]:
    conv = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return [*conv, {"role": "user", "content": user}]


def _check(out, n: int, what: str, questions: Sequence[Question]):
    import numpy as np

    if hasattr(out, "detach"):
        out = out.detach().double().cpu().numpy()
    lp = np.asarray(out, dtype=np.float64)
    if lp.shape != (n, 4):
        raise ValueError(f"{what} returned shape {lp.shape} for {n} questions, expected ({n}, 4)")
    if np.isnan(lp).any():
        bad = [questions[int(i)].index for i in np.flatnonzero(np.isnan(lp).any(axis=1))]
        raise ValueError(f"{what} returned NaN for question(s) {bad}")
    return lp


def _softmax_at(lp, answers):
    import numpy as np

    p = np.exp(lp - lp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p[np.arange(len(lp)), answers]


def cloze_chars(q: Question) -> list[int]:
    """The per-character normaliser of each option: its length once stripped (templates strip)."""
    return [len(c.strip()) for c in q.choices]


def evaluate(
    questions: Sequence[Question],
    *,
    system_prompt: str | None,
    letter_logprobs: Callable[[list[list[dict]]], Any] | None = None,
    cloze_logprobs: Callable[[list[list[dict]], list[tuple[str, ...]]], Any] | None = None,
) -> pd.DataFrame:
    """Score ``questions`` in the letter form, the cloze form, or both; one row a question.

    Letter form: the user message is ``format_prompt(q)`` (after the system prompt, if any);
    ``letter_logprobs`` maps all conversations to ``[n, 4]`` log-probabilities of the reply
    being "A".."D". Prediction: the argmax (ties: the earlier letter); ``letter_p_correct``:
    the correct letter's probability renormalised over the four.

    Cloze form: the user message is ``format_cloze_prompt(q)``; ``cloze_logprobs`` maps the
    conversations and each question's four option texts to ``[n, 4]`` summed log-probabilities
    of the reply being that text. Prediction: the argmax of the log-likelihood per character
    (:func:`cloze_chars`), lm-evaluation-harness's ``acc_norm``: a per-token normaliser would
    depend on the tokenizer, so the same options would be ranked differently by models that
    split them differently. ``cloze_p_correct``: the correct text's sequence probability
    renormalised over the four (a probability; not length-normalised). An empty option
    (none in the pinned file) scores -inf.

    Columns: index, subject, answer, then per form given ``F_predicted, F_correct,
    F_p_correct``, with ``logprob_A..D`` (letter) and ``cloze_logprob_A..D`` (summed).
    """
    import numpy as np
    import pandas as pd

    if letter_logprobs is None and cloze_logprobs is None:
        raise ValueError("evaluate needs letter_logprobs, cloze_logprobs or both")
    questions = list(questions)
    answers = np.array([LETTERS.index(q.answer) for q in questions], dtype=int)
    df = pd.DataFrame({"index": [q.index for q in questions],
                       "subject": [q.subject for q in questions],
                       "answer": [q.answer for q in questions]})
    if not questions:
        return df
    if letter_logprobs is not None:
        convs = [_conversation(system_prompt, format_prompt(q)) for q in questions]
        lp = _check(letter_logprobs(convs), len(questions), "letter_logprobs", questions)
        _add_form(df, "letter", lp, lp.argmax(axis=1), answers, logprob_prefix="logprob")
    if cloze_logprobs is not None:
        convs = [_conversation(system_prompt, format_cloze_prompt(q)) for q in questions]
        lp = _check(cloze_logprobs(convs, [q.choices for q in questions]), len(questions),
                    "cloze_logprobs", questions)
        chars = np.array([cloze_chars(q) for q in questions], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_char = np.where(chars > 0, lp / np.maximum(chars, 1), -np.inf)
        _add_form(df, "cloze", lp, per_char.argmax(axis=1), answers, logprob_prefix="cloze_logprob")
    return df


def _add_form(df, form: str, lp, pred, answers, *, logprob_prefix: str) -> None:
    """One form's columns: its prediction, correctness, the correct answer's probability among
    the four (from the summed log-probabilities ``lp``), and ``lp`` itself per letter."""
    df[f"{form}_predicted"] = [LETTERS[i] for i in pred]
    df[f"{form}_correct"] = pred == answers
    df[f"{form}_p_correct"] = _softmax_at(lp, answers)
    for j, L in enumerate(LETTERS):
        df[f"{logprob_prefix}_{L}"] = lp[:, j]


def accuracy_with_ci(df: pd.DataFrame, confidence: float = 0.95, *, form: str = "letter") -> dict:
    """Accuracy of one form of an ``evaluate`` frame, with a Wilson score interval.

    Returns ``{"accuracy", "ci_low", "ci_high", "n", "n_correct", "above_chance"}``;
    ``above_chance``: the interval's lower end is above 0.25 (four options).
    """
    from scipy.stats import binomtest

    column = f"{form}_correct"
    if column not in df.columns:
        raise ValueError(f"no {column!r} column: this frame was not scored in the {form} form")
    n = int(len(df))
    if n == 0:
        raise ValueError("accuracy_with_ci needs at least one scored question")
    k = int(df[column].astype(bool).sum())
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {
        "accuracy": k / n,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "n": n,
        "n_correct": k,
        "above_chance": bool(ci.low > 0.25),
    }


# --------------------------------------------------------------------------- engine scoring


def length_chunks(lengths: Sequence[int], max_rows: int, max_waste: float = 0.25) -> list[list[int]]:
    """Indices grouped for batched forwards: sorted by length, at most ``max_rows`` a group, and a
    group closed before its padding would exceed ``max_waste`` of its real tokens.

    A prefill's cost is its rows times its longest row; one long professional-law question in a
    batch of short ones would otherwise multiply the work. Prefill matmuls see rows x tokens,
    so small groups of long rows lose little speed.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        if group and (len(group) + 1 > max_rows or (len(group) + 1) * n > (1 + max_waste) * (total + n)):
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += n
    if group:
        groups.append(group)
    return groups


class EngineScorer:
    """Both forms' log-probabilities from an :class:`~personadrift.generation.engine.HFEngine`,
    with the setting's intervention in place: letters from one batched forward per chunk of
    questions (``next_token_logprobs``; no generation), cloze texts from
    ``continuation_logprobs`` (each prompt encoded once for its four options). Chunks are
    grouped by prompt length (:func:`length_chunks`) at the engine's ``max_batch``; guidance
    runs as paired rows. With ``share_key``, a shared leading prefix (the system prompt) is
    encoded once and re-used from the engine's prefix cache (:meth:`prime`).
    """

    def __init__(self, engine, *, intervene: bool = False,
                 negative: Callable[[list[dict]], list[dict] | None] | None = None,
                 share_key: str | None = None, rows_per_question: int = 1, progress=None):
        self.engine = engine
        self.rows = rows_per_question  # sequences per intervened question (the setting's method says)
        self.intervene = intervene
        self.negative = negative
        self.key = share_key
        self.progress = progress  # called with the number of questions done, per chunk
        self.letter_ids = letter_token_ids(engine.tokenizer)
        self.reply = ReplyTokens(engine.tokenizer, fold=engine.chat.fold)

    def _request(self, messages: list[dict]):
        from personadrift.generation.api import GenRequest

        # no persona: MMLU's system prompt is none of the pool's, so a hook acting per persona uses
        # its pool-wide default (steering: the pool's mean direction), one for every question
        return GenRequest(messages, seed=0, key=self.key, persist=False, intervene=self.intervene, persona=None,
                          negative_messages=self.negative(messages) if self.negative else None)

    def prime(self, system_prompt: str | None) -> None:
        """Encode the shared prefix (system prompt and the user turn's opening) once and keep it
        in the engine's prefix cache under ``share_key``; later requests re-use its KV."""
        if self.key is None or system_prompt is None:
            return
        req = self._request(_conversation(system_prompt, ""))
        req.persist = True
        self.engine.complete([req], max_new_tokens=1)

    def _rows_per_question(self) -> int:
        return self.rows if self.intervene else 1

    def _groups(self, convs: list[list[dict]]) -> list[list[int]]:
        lengths = [len(self.engine.chat.render(c).ids) for c in convs]
        rows = max(1, self.engine.max_batch // self._rows_per_question())
        return length_chunks(lengths, rows)

    def letters(self, convs: list[list[dict]]):
        import torch

        out = torch.empty(len(convs), 4, dtype=torch.float64)
        letters = torch.tensor(self.letter_ids)
        for group in self._groups(convs):
            lp = self.engine.next_token_logprobs([self._request(convs[i]) for i in group])
            # renormalise: guidance's mix is not a distribution until it is
            lp = torch.log_softmax(lp.float(), dim=-1)[:, letters.to(lp.device)]
            out[group] = lp.double().cpu()
            if self.progress:
                self.progress(len(group))
        return out

    def cloze(self, convs: list[list[dict]], options: list[tuple[str, ...]]):
        import torch

        out = torch.full((len(convs), 4), float("-inf"), dtype=torch.float64)
        for group in self._groups(convs):
            reqs, conts, where = [], [], []
            for i in group:
                req = self._request(convs[i])
                for j, text in enumerate(options[i]):
                    if not text.strip():
                        continue  # an empty option cannot be scored: it stays at -inf
                    reqs.append(req)
                    conts.append(self.reply(convs[i], text))
                    where.append((i, j))
            sums = self.engine.continuation_logprobs(reqs, conts)
            for (i, j), v in zip(where, sums.tolist()):
                out[i, j] = v
            if self.progress:
                self.progress(len(group))
        return out
