"""Engine interventions of the built-in methods, as tests write them."""

from personadrift.generation.api import Intervention
from personadrift.interventions.guidance import GuidanceHook
from personadrift.interventions.split_softmax import SplitSoftmaxHook


def split(k: float, layers=None) -> Intervention:
    """Split-softmax with exponent ``k`` in ``layers`` (None: all)."""
    return Intervention((SplitSoftmaxHook(k=k, layers=None if layers is None else tuple(layers)),))


def guided(scale: float) -> Intervention:
    """Classifier-free guidance at ``scale``."""
    return Intervention((GuidanceHook(scale=scale),))


def anchored(omega: float, mask: str = "pad") -> Intervention:
    """Selective prompt anchoring at strength ``omega``, the system prompt masked with ``mask``."""
    from personadrift.interventions.spa import MASKS, SPAHook

    return Intervention((SPAHook(omega=omega, blank_token=MASKS[mask]),))
