"""Engine interventions of the built-in methods, as tests write them."""

from personadrift.generation.api import Intervention
from personadrift.interventions.guidance import GuidanceHook
from personadrift.interventions.instaboost import InstABoostHook
from personadrift.interventions.split_softmax import SplitSoftmaxHook


def split(k: float, layers=None) -> Intervention:
    """Split-softmax with exponent ``k`` in ``layers`` (None: all)."""
    return Intervention((SplitSoftmaxHook(k=k, layers=None if layers is None else tuple(layers)),))


def guided(scale: float) -> Intervention:
    """Classifier-free guidance at ``scale``."""
    return Intervention((GuidanceHook(scale=scale),))


def boosted(alpha: float, layers=None, heads=None) -> Intervention:
    """InstABoost with factor ``alpha`` in ``layers`` and query ``heads`` (None: all)."""
    return Intervention((InstABoostHook(alpha=alpha, layers=None if layers is None else tuple(layers),
                                        heads=None if heads is None else tuple(heads)),))


def anchored(omega: float, mask: str = "pad") -> Intervention:
    """Selective prompt anchoring at strength ``omega``, the system prompt masked with ``mask``."""
    from personadrift.interventions.spa import MASKS, SPAHook

    return Intervention((SPAHook(omega=omega, blank_token=MASKS[mask]),))
