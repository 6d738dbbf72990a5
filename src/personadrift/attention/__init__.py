"""Custom attention for persona-drift analysis and control (transformers AttentionInterface).

Importing this package registers, each with its attention-mask function (without which the
model would pass ``attention_mask=None`` and attention would silently become non-causal):

* ``"split_softmax"``: plain SDPA, plus split-softmax in the layers an ``attention_context``
  names (:mod:`.split_softmax`);
* ``"prompt_share"``: the same, and fills the context's :class:`PromptShareRecorder`
  (:mod:`.recorder`; the recorder is honoured by ``"split_softmax"`` too);
* ``"split_softmax_eager"``: the eager float64 reference, returning weights (:mod:`.reference`).

Usage::

    from personadrift.attention import attention_context
    model.set_attn_implementation("split_softmax")
    with attention_context(prompt_mask, split_k=0.5):
        model.generate(...)
"""

from personadrift.attention.context import (
    AttentionState,
    attention_context,
    current_state,
)
from personadrift.attention.recorder import (
    FIELDS,
    PromptShareRecorder,
    Recording,
    attention_stats,
    record_prompt_share,
)
from personadrift.attention.reference import (
    split_softmax_eager_attention,
    split_softmax_reference,
)
from personadrift.attention.split_softmax import (
    split_factors,
    split_softmax_attention,
    split_softmax_core,
    visible_mask,
)

__all__ = [
    "FIELDS",
    "AttentionState",
    "PromptShareRecorder",
    "Recording",
    "attention_context",
    "attention_stats",
    "current_state",
    "record_prompt_share",
    "split_factors",
    "split_softmax_attention",
    "split_softmax_core",
    "split_softmax_eager_attention",
    "split_softmax_reference",
    "visible_mask",
]
