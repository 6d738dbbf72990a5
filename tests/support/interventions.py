"""Engine interventions of the built-in methods, as tests write them."""

from personadrift.generation.api import Intervention
from personadrift.interventions.guidance import GuidanceHook
from personadrift.interventions.instaboost import InstABoostHook
from personadrift.interventions.split_softmax import SplitSoftmaxHook


def split_hook(k: float, layers=None) -> SplitSoftmaxHook:
    """Split-softmax's attention hook, exponent ``k``, in ``layers`` (None or "all": all)."""
    return SplitSoftmaxHook(k=k, layers=None if layers in (None, "all") else tuple(layers))


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


def vectors_file(path, hidden: int, personas=("tennis", "pirate"), layer: int = 0, seed: int = 0,
                 residual_norm: float = 3.0, threshold: float = 0.5):
    """A persona vectors file of random directions (the format rule persona_vectors writes),
    for tests of steering that do not need vectors computed from a model."""
    import torch

    from personadrift.protocol.persona_vectors import PersonaVectors, write

    g = torch.Generator().manual_seed(seed)
    vectors = {p: torch.randn(hidden, generator=g) for p in personas}
    write(PersonaVectors(layer, vectors, residual_norm, {p: threshold * (i + 1) for i, p in enumerate(personas)},
                         pool_threshold=threshold), path, provenance={"model": "random (tests)"})
    return path


def steered(vectors_path, alpha: float, *, layer: int = 0, cap: bool = False) -> Intervention:
    """Persona-vector steering with the vectors in ``vectors_path``."""
    from personadrift.interventions.steering import SteeringHook

    return Intervention((SteeringHook(layers=(layer,), vectors_path=str(vectors_path), alpha=alpha, cap=cap),))
