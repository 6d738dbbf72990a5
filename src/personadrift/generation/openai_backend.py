"""The ``openai`` backend: the HFEngine call shape over an OpenAI-compatible chat-completions API.

``OpenAIEngine.generate(requests, max_new_tokens=...)`` returns, like ``HFEngine.generate``,
``n`` completions per request, in request order. Each request becomes one
``chat.completions.create`` call (``n`` samples in one call; a server that returns fewer
choices gets one call per missing sample instead), sent by a thread pool of ``concurrency``
workers. What an HTTP API cannot do is refused with a clear error: interventions that need
model internals (``intervene=True``, ``negative_messages``) and next-token log-probabilities.
To run split-softmax or guidance behind an HTTP API, serve a local model with
``personadrift serve --split-k/--guidance-scale`` and point ``openai.base_url`` at it.

Seeds. A request's ``seed`` is sent as is with ``n`` samples; ``personadrift serve`` then
samples exactly as ``HFEngine`` does (sample ``s`` uses ``derive_seed(seed, s)``). A per-sample
fallback call for sample ``s`` is sent with ``seed = derive_seed(seed, s)``. ``Sampling``
with ``do_sample=False`` is sent as ``temperature=0`` (greedy on ``personadrift serve``).

Retries. The official client's own machinery retries 408/409/429/5xx responses, timeouts and
connection errors with exponential backoff (0.5 s doubling up to 8 s, minus up to 25 %
jitter; a ``Retry-After``/``retry-after-ms`` header up to 2 minutes takes precedence), up to
``openai.max_retries`` times. Every attempt of one request carries the same
``X-PersonaDrift-Request`` header (the request's cache key), so a server can tell retries from
new requests. When the retries are spent, :class:`OpenAIBackendError` names the base URL, the
model and the status; no reply is ever replaced by an empty string.

Sampling. Temperature, ``top_p``, ``max_tokens`` (the request's reply budget) and, where the
sampling has one, ``top_k`` (in the body's extras: not an OpenAI parameter) are sent as the HF
engine samples; ``selfchat.api_send_top_p``, ``api_send_max_tokens`` and ``api_send_top_k`` leave
each to the server's default instead (OpenAI's API refuses ``top_k``). ``openai.concurrency``
and ``timeout_s`` default to 64 requests and 600 s for a server on this machine (it queues and
batches them itself) and 4 and 60 s elsewhere.

Cache. Each request's reply is stored in ``cache_dir/<sha256>.json``, the key being a sha256
of the request content (model, messages, temperature, top_p, top_k, max_tokens, n, seed) and never
of the API key or the base URL (a restarted server on another port still hits the cache).
Files are written atomically; a rerun sends no HTTP request for a cached reply.

The API key is read from the environment variable ``openai.api_key_env`` and is never written
to the cache, to provenance (``identity`` has only backend, base URL and model) or to error
messages (they are scrubbed, and never chain the client's exception, which holds the
request headers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from personadrift.errors import InputError, PersonaDriftError
from personadrift.generation.api import Completion, GenRequest, Sampling
from personadrift.seeding import derive_seed
from personadrift.storage import atomic_write_json, read_json

log = logging.getLogger(__name__)

CACHE_VERSION = 1
REQUEST_ID_HEADER = "X-PersonaDrift-Request"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_DUMMY_KEY = "personadrift-local-no-key"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_RETRYABLE = {408, 409, 429}  # and every 5xx (the client's rule)
# sampling keys that are no OpenAI parameters: vLLM's and TGI's servers, llama.cpp's and
# ``personadrift serve`` read them from the body; OpenAI's API refuses them (selfchat.api_send_top_k)
EXTRA_BODY_KEYS = ("top_k",)
# a server on this machine is sized by its own queue, not by a rate limit (openai.concurrency, timeout_s)
LOCAL_CONCURRENCY, LOCAL_TIMEOUT_S = 64, 600.0
REMOTE_CONCURRENCY, REMOTE_TIMEOUT_S = 4, 60.0


class OpenAIBackendError(PersonaDriftError):
    """An OpenAI-compatible API call failed for good (retries spent, or not retryable)."""

    retryable = True  # the server may be back, or less loaded, when the job runs again

    def __init__(self, base_url: str, model: str, status: str, detail: str = ""):
        self.base_url, self.model, self.status, self.detail = base_url, model, status, detail
        msg = f"OpenAI-compatible API at {base_url} (model {model!r}): {status}"
        super().__init__(msg + (f": {detail}" if detail else ""))


class UnsupportedRequestError(PersonaDriftError):
    """A request asks for something only a local model can do."""


@dataclass
class OpenAIStats:
    generated_tokens: int = 0  # completion tokens of fresh (not cached) replies
    usage_tokens: int = 0  # ... of which reported by the server's ``usage``
    estimated_tokens: int = 0  # ... of which estimated (whitespace-separated words; no usage)
    prompt_tokens: int = 0  # from usage, fresh replies
    cached_tokens: int = 0  # completion tokens of replies served from the cache
    http_requests: int = 0  # successful create() calls (retries inside one call not counted)
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def token_source(self) -> str:
        """How ``generated_tokens`` was counted: usage, estimate (words), mixed, or none."""
        if self.usage_tokens and self.estimated_tokens:
            return "mixed (usage + word-count estimate)"
        if self.estimated_tokens:
            return "estimate (whitespace-separated words; the server reported no usage)"
        return "usage" if self.usage_tokens else "none"


def public_url(url: str) -> str:
    """``url`` without user:password@ and without a trailing slash (safe to record)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")).rstrip("/")


def is_local_url(url: str | None) -> bool:
    return bool(url) and (urlsplit(url).hostname or "") in _LOCAL_HOSTS


def cache_key(payload: dict) -> str:
    """sha256 of the request content (the JSON body sent; it holds no credentials)."""
    text = json.dumps({"v": CACHE_VERSION, **payload}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class OpenAIEngine:
    """``generate`` like HFEngine, over an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        sampling: Sampling = Sampling(),
        concurrency: int = 4,
        max_retries: int = 6,
        timeout_s: float = 60.0,
        cache_dir: str | Path | None = None,
    ):
        import openai

        if not model:
            raise InputError("config", "openai.model", "required with backend: openai")
        if concurrency < 1:
            raise InputError("config", "openai.concurrency", "must be at least 1")
        self.model = model
        self.sampling = sampling
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._secret = api_key
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=self.timeout_s, max_retries=self.max_retries
        )
        self.base_url = public_url(str(self._client.base_url))
        self.identity = {"backend": "openai", "base_url": self.base_url, "model": model}
        self.max_context: int | None = None  # a server does not say; the protocol trusts its errors
        self.stats = OpenAIStats()
        self._lock = threading.Lock()
        self._n_supported: bool | None = None  # learnt from the first reply with n > 1
        self.omit: set[str] = set()  # payload keys left to the API's defaults

    @classmethod
    def from_config(cls, config: dict, *, sampling: Sampling, cache_dir: str | Path | None) -> OpenAIEngine:
        oc = config.get("openai") or {}
        base_url = oc.get("base_url")
        env = oc.get("api_key_env", "OPENAI_API_KEY")
        key = os.environ.get(env)
        if not key:
            if not is_local_url(base_url):
                where = public_url(base_url) if base_url else DEFAULT_BASE_URL
                raise InputError("config", "openai.api_key_env",
                                 f"environment variable {env} is not set (an API key is needed for {where})")
            key = LOCAL_DUMMY_KEY
        return cls(
            model=oc["model"],
            api_key=key,
            base_url=base_url,
            sampling=sampling,
            concurrency=oc.get("concurrency") or (LOCAL_CONCURRENCY if is_local_url(base_url) else REMOTE_CONCURRENCY),
            max_retries=oc.get("max_retries", 6),
            timeout_s=oc.get("timeout_s") or (LOCAL_TIMEOUT_S if is_local_url(base_url) else REMOTE_TIMEOUT_S),
            cache_dir=cache_dir if oc.get("cache", True) else None,
        )._omitting(config.get("selfchat") or {})

    def _omitting(self, selfchat: dict) -> OpenAIEngine:
        self.omit = {k for k, flag in (("top_p", "api_send_top_p"), ("max_tokens", "api_send_max_tokens"),
                                       ("top_k", "api_send_top_k"))
                     if not selfchat.get(flag, True)}
        return self

    def __repr__(self) -> str:
        return f"OpenAIEngine(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def forget(self, prefix: str = "") -> None:
        """No prefix cache over HTTP (kept for the HFEngine interface)."""

    def next_token_logprobs(self, requests):
        raise UnsupportedRequestError(
            "backend openai cannot give next-token log-probabilities over the vocabulary; use backend hf"
        )

    # ----------------------------------------------------------------- generation
    def generate(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[str]]:
        """Sample ``n`` replies for each request; returns the texts in request order."""
        return [[c.text for c in per] for per in self.complete(requests, max_new_tokens=max_new_tokens)]

    def complete(self, requests: list[GenRequest], *, max_new_tokens: int | None = None) -> list[list[Completion]]:
        """Sample ``n`` replies for each request, with the server's token counts and finish reasons."""
        for i, r in enumerate(requests):
            if r.intervene or r.negative_messages is not None:
                raise UnsupportedRequestError(
                    f"request {i} asks for an intervention (intervene={r.intervene}, "
                    f"negative_messages={'set' if r.negative_messages is not None else 'none'}); backend openai "
                    "cannot apply split-softmax or guidance. Use backend hf, or serve the model with "
                    "`personadrift serve --split-k K` / `--guidance-scale G` and point openai.base_url at it"
                )
            if r.n < 1:
                raise ValueError(f"request {i}: n must be at least 1")
        if not requests:
            return []
        limit = max_new_tokens or self.sampling.max_new_tokens
        payloads = [self._payload(r, r.max_new_tokens or limit) for r in requests]
        workers = min(self.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            futures = [pool.submit(self._one, p) for p in payloads]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()  # queued requests are dropped; running ones finish (and are cached)
                raise

    def _payload(self, r: GenRequest, limit: int) -> dict:
        s = self.sampling
        payload = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in r.messages],
            "temperature": float(s.temperature) if s.do_sample else 0.0,
            "top_p": float(s.top_p) if s.do_sample else 1.0,
            "max_tokens": int(limit),
            "n": int(r.n),
            "seed": int(r.seed),
        }
        if s.do_sample and s.top_k:  # not an OpenAI parameter: sent in the body's extras (_call)
            payload["top_k"] = int(s.top_k)
        # upstream left top_p and the length cap to the API's defaults (selfchat.api_send_*)
        return {k: v for k, v in payload.items() if k not in self.omit}

    def _one(self, payload: dict) -> list[Completion]:
        key = cache_key(payload)
        cached = self._cache_read(key, payload)
        if cached is not None:
            with self._lock:
                self.stats.cache_hits += 1
                self.stats.cached_tokens += sum(cached.get("completion_tokens") or [0])
            return _completions(cached["choices"], cached.get("finish_reasons"), cached.get("completion_tokens"),
                                cached.get("prompt_tokens"))
        with self._lock:
            self.stats.cache_misses += 1
        n = payload["n"]
        choices: list[str] = []
        finish: list[str | None] = []
        tokens: list[int] = []
        prompt_tokens: int | None = None
        if n == 1 or self._n_supported is not False:
            texts, reasons, counts, prompt_tokens = self._call(payload, key)
            choices, finish, tokens = texts[:n], reasons[:n], counts[:n]
            if n > 1:
                if len(choices) < n:
                    log.warning("%s returned %d of n=%d choices; asking for the rest one by one",
                                self.base_url, len(choices), n)
                self._n_supported = len(choices) >= n
        for s in range(len(choices), n):  # servers without ``n``: one call per sample
            one = {**payload, "n": 1, "seed": derive_seed(payload["seed"], s)}
            texts, reasons, counts, prompt_tokens = self._call(one, f"{key}/{s}")
            choices.append(texts[0])
            finish.append(reasons[0])
            tokens.append(counts[0])
        self._cache_write(key, payload, choices, finish, tokens, prompt_tokens)
        return _completions(choices, finish, tokens, prompt_tokens)

    def _call(self, payload: dict, request_id: str) -> tuple[list[str], list, list[int], int | None]:
        """One create() call (the client retries inside it); returns texts, finish reasons, tokens
        per choice, and the prompt's token count (None where the server reports no usage)."""
        import openai

        failure: tuple[str, str] | None = None
        resp = None
        try:
            known = {k: v for k, v in payload.items() if k not in EXTRA_BODY_KEYS}
            extra = {k: payload[k] for k in EXTRA_BODY_KEYS if k in payload}
            options: dict[str, Any] = {"extra_body": extra} if extra else {}
            resp = self._client.chat.completions.create(**known, extra_headers={REQUEST_ID_HEADER: request_id},
                                                        **options)
        except openai.APITimeoutError:
            failure = (f"timed out after {self.timeout_s:g} s, {self.max_retries + 1} attempts", "")
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            failure = (f"connection failed after {self.max_retries + 1} attempts ({cause})", "")
        except openai.APIStatusError as exc:
            code = exc.status_code
            retried = code in _RETRYABLE or code >= 500
            attempts = f"{self.max_retries + 1} attempts" if retried else "not retryable"
            failure = (f"HTTP {code} ({attempts})", _error_detail(exc))
        except openai.OpenAIError as exc:
            failure = ("invalid response", type(exc).__name__)
        if failure is not None:  # raised outside the except blocks: no chained client exception
            raise OpenAIBackendError(self.base_url, self.model, self._scrub(failure[0]), self._scrub(failure[1]))
        assert resp is not None  # create() returned
        choices = sorted(resp.choices or [], key=lambda c: c.index)
        texts, reasons = [], []
        for c in choices:
            content = c.message.content if c.message is not None else None
            if content is None:
                raise OpenAIBackendError(self.base_url, self.model, "reply without text content",
                                         f"finish_reason={c.finish_reason!r}")
            texts.append(content)
            reasons.append(c.finish_reason)
        if not texts:
            raise OpenAIBackendError(self.base_url, self.model, "reply with no choices")
        usage = getattr(resp, "usage", None)
        completion = getattr(usage, "completion_tokens", None) if usage is not None else None
        # usage is per call; split it over the choices in proportion to their words (for the cache only)
        words = [len(t.split()) for t in texts]
        if completion is not None:
            counts = _split(int(completion), words)
        else:
            counts = words
        with self._lock:
            self.stats.http_requests += 1
            if completion is not None:
                self.stats.usage_tokens += int(completion)
                self.stats.generated_tokens += int(completion)
                self.stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            else:
                self.stats.estimated_tokens += sum(words)
                self.stats.generated_tokens += sum(words)
        prompt = getattr(usage, "prompt_tokens", None) if usage is not None else None
        return texts, reasons, counts, (int(prompt) if prompt is not None else None)

    def _scrub(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return text

    # ----------------------------------------------------------------- cache
    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.json"

    def _cache_read(self, key: str, payload: dict) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            entry = read_json(path)
            ok = (entry.get("request") == payload and isinstance(entry.get("choices"), list)
                  and len(entry["choices"]) == payload["n"] and all(isinstance(c, str) for c in entry["choices"]))
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            log.warning("ignoring unreadable or mismatched cache entry %s", path)
            return None
        return entry

    def _cache_write(self, key: str, payload: dict, choices, finish, tokens, prompt_tokens=None) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        atomic_write_json(path, {
            "version": CACHE_VERSION,
            "key": key,
            "request": payload,
            "choices": choices,
            "finish_reasons": finish,
            "completion_tokens": tokens,
            "prompt_tokens": prompt_tokens,
            "base_url": self.base_url,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        })


def _completions(texts, reasons, counts, prompt_tokens) -> list[Completion]:
    """Completions from a reply or a cache entry; unknown counts are -1 (servers without usage)."""
    reasons = reasons or [None] * len(texts)
    counts = counts or [-1] * len(texts)
    return [Completion(text=t, prompt_tokens=-1 if prompt_tokens is None else int(prompt_tokens),
                       new_tokens=int(c), finish_reason="length" if r == "length" else "stop")
            for t, r, c in zip(texts, reasons, counts)]


def _split(total: int, weights: list[int]) -> list[int]:
    if len(weights) == 1:
        return [total]
    w = [x + 1 for x in weights]
    out = [total * x // sum(w) for x in w]
    out[-1] += total - sum(out)
    return out


def _error_detail(exc) -> str:
    """The server's error message (from an OpenAI-style error body), shortened."""
    body = getattr(exc, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else None
    text = str(msg if msg is not None else getattr(exc, "message", "") or "")
    return text[:300]
