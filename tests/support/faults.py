"""Fault injection for ``personadrift serve`` in tests: chosen requests, by arrival order, answer
429 or 5xx or stall past the client's timeout (``app.faults = FaultPlan(...)``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from personadrift.runtime.serve import RequestError


@dataclass(frozen=True)
class Fault:
    """An injected answer to one request: ``error`` with ``headers``, after stalling
    ``stall_s`` seconds (then the connection is dropped); ``outcome`` is logged in ``events``."""

    outcome: str
    error: RequestError
    headers: dict | None = None
    stall_s: float = 0.0


@dataclass
class FaultPlan:
    """Faults for chosen ``POST /v1/chat/completions`` requests, by arrival order (0-based).

    The plan counts the requests it sees itself, so request 0 is the first one after the plan
    was given to the app (``app.faults = plan`` works on a running server).

    Kinds: ``"429"``, ``"500"``, ``"503"`` (answered with that status and an OpenAI-style
    error body, without touching the model) and ``"timeout"`` (the handler stalls ``stall_s``
    seconds, then drops the connection: set ``stall_s`` above the client's timeout).
    ``default`` applies to every request not named in ``faults`` (e.g. ``"500"`` forever, to
    exhaust a client's retries). ``retry_after_ms`` adds that header to 429/5xx answers.
    """

    faults: dict[int, str] = field(default_factory=dict)
    default: str | None = None
    stall_s: float = 2.0
    retry_after_ms: int | None = None
    _seen: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    KINDS = ("429", "500", "503", "timeout")

    def __post_init__(self):
        for kind in [*self.faults.values(), self.default]:
            if kind is not None and kind not in self.KINDS:
                raise ValueError(f"unknown fault {kind!r} (known: {', '.join(self.KINDS)})")

    @classmethod
    def first(cls, n: int, kind: str, **kw) -> FaultPlan:
        """The first ``n`` requests get ``kind``."""
        return cls({i: kind for i in range(n)}, **kw)

    @classmethod
    def sequence(cls, kinds: list[str | None], **kw) -> FaultPlan:
        """Request ``i`` gets ``kinds[i]`` (None = served normally); later requests are served."""
        return cls({i: k for i, k in enumerate(kinds) if k is not None}, **kw)

    def take(self) -> Fault | None:
        """The fault for the next request (None = serve it normally)."""
        with self._lock:
            k = self._seen
            self._seen += 1
        kind = self.faults.get(k, self.default)
        if kind is None:
            return None
        if kind == "timeout":
            return Fault(kind, RequestError(504, "injected stall", kind="server_error"), stall_s=self.stall_s)
        headers = {"retry-after-ms": str(self.retry_after_ms)} if self.retry_after_ms is not None else None
        if kind == "429":
            err = RequestError(429, "injected rate limit", kind="rate_limit_error", code="rate_limit_exceeded")
        else:
            err = RequestError(int(kind), f"injected server error {kind}", kind="server_error")
        return Fault(kind, err, headers)
