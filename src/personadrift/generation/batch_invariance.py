"""A forward pass whose rows do not depend on their batch (``model.batch_invariant``).

A row's logits are bitwise the same whatever shares its batch (alone, beside mates with other
prompt lengths that left-pad it, at any batch size) when every reduction in its forward runs in an
order fixed by the row alone:

* linear layers (and the lm_head): oneDNN's matmul on a packed weight at every row count
  (:class:`~personadrift.generation.linear_kernels.InvariantOneDNNLinear`, probed bitwise at 1 to
  1,000 rows and every position, 1 and 2 threads);
* attention: each row on its own real keys and queries
  (:mod:`personadrift.attention.invariant`), wrapping plain SDPA and split-softmax; rows with one
  query (decode steps) outside an attention context all in one call whose reductions run in
  blocks that start at each row's first key (:mod:`personadrift.attention.blocked_decode`);
* the rest is per row already: RMSNorm reduces over one row's hidden vector, rotary embeddings
  and the MLP's activation are elementwise, sampling draws from each row's own stream.

Float32 on the CPU only: the packed oneDNN matmul is what makes the linear layers invariant.
"""

from __future__ import annotations

from personadrift.generation.linear_kernels import KernelUnavailable, linears_batch_invariant, set_linear_kernel

__all__ = ["KernelUnavailable", "batch_invariant_of", "blocked_decode_of", "set_batch_invariant"]


def set_batch_invariant(model, kernel: str = "auto", *, blocked_decode: bool = True) -> str:
    """Make the model's forward batch-invariant, its decode steps in one blocked call or, with
    ``blocked_decode`` False, row by row (``model.blocked_decode``); returns the linear kernel in
    use ("onednn"). Raises KernelUnavailable where it cannot be (not float32 on the CPU, no
    oneDNN, kernel "torch")."""
    from personadrift.attention import invariant

    used = set_linear_kernel(model, kernel, batch_invariant=True)
    model.set_attn_implementation(invariant.NAME if blocked_decode else invariant.ROWS_NAME)
    return used


def batch_invariant_of(model) -> bool:
    """Whether the model's linear layers and attention are the batch-invariant ones."""
    from personadrift.attention import invariant

    return (linears_batch_invariant(model)
            and getattr(model.config, "_attn_implementation", None) in invariant.NAMES)


def blocked_decode_of(model) -> bool | None:
    """Whether a batch-invariant model's decode steps run blocked (None: not batch-invariant)."""
    from personadrift.attention import invariant

    if not batch_invariant_of(model):
        return None
    return model.config._attn_implementation == invariant.NAME
