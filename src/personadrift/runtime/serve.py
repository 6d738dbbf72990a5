"""``personadrift serve``: an OpenAI-compatible chat-completions server over a local HF model.

Any model the workflow fetched (``--model-dir``) or the tiny test model (``--tiny``) is served
through :class:`~personadrift.generation.engine.HFEngine` (built by ``runtime/factory.py``), with
optional drift interventions applied to every request: each registered method's own flags
(``Method.serve_flags``: split-softmax ``--split-k``, ``--split-layers``; classifier-free guidance
``--guidance-scale``, ``--guidance-negative``) make settings exactly as a config entry would. Any
OpenAI client, and the workflow's ``backend: openai``, can then use it.

Endpoints: ``POST /v1/chat/completions`` (non-streaming; ``messages``, ``temperature``,
``top_p``, ``top_k`` (an extra of vLLM, TGI and llama.cpp servers), ``max_tokens``/``max_completion_tokens``,
``n``, ``seed``), ``GET /v1/models``,
``GET /health``. Bad input gets a 400 with an OpenAI-style ``{"error": {...}}`` body.

Semantics:

* ``temperature: 0`` is greedy decoding (argmax; ``top_p`` and ``seed`` are then irrelevant).
  ``temperature > 0`` samples with temperature, ``top_k`` (default 0: off) and nucleus ``top_p`` (default 1).
* ``seed`` with ``n`` samples: sample ``s`` uses ``derive_seed(seed, s)``, exactly as
  ``HFEngine`` does for ``GenRequest(seed=seed, n=n)``, so a served reply equals the local
  engine's. Without ``seed`` a random one is drawn.
* ``usage.completion_tokens`` and each ``finish_reason`` are the engine's own (tokens generated,
  and whether the reply ended its turn or hit ``max_tokens``), so a served transcript records
  the same lengths as a local one; ``usage.prompt_tokens`` is the exact length of the rendered
  prompt.

Concurrency: a ``ThreadingHTTPServer`` accepts requests in parallel; one batcher thread owns
the model and runs queued requests that share sampling parameters as one batched ``generate``
call (at most ``max_batch`` sequences), holding the app's lock around every model/tokenizer
use. Requests are independent: nothing is kept between them.

Tests inject faults through ``ChatApp.faults``: an object whose ``take()`` returns, per request,
None (serve it) or a fault with ``outcome`` (logged), ``error`` (a :class:`RequestError`),
``headers`` and ``stall_s`` (seconds to stall first, then the connection is dropped);
``tests/support/faults.py`` makes chosen requests answer 429 or 5xx or stall past the client's
timeout. Nothing on the command line sets it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from personadrift.command import Command
from personadrift.errors import PersonaDriftError
from personadrift.generation.api import GenRequest, Sampling

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-PersonaDrift-Request"  # sent by OpenAIEngine; the same on every retry
RETRY_COUNT_HEADER = "X-Stainless-Retry-Count"  # sent by the official openai client
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_N = 128
_ROLES = {"system", "user", "assistant", "developer"}  # developer = system (newer OpenAI clients)
_UNSUPPORTED = ("stream", "tools", "functions", "logprobs", "stop")


# ------------------------------------------------------------------ the app
class RequestError(Exception):
    """A client error, answered with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class _Job:
    messages: list[dict]
    n: int
    seed: int
    sampling: Sampling
    max_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    texts: list[str] | None = None
    completion_tokens: list[int] | None = None
    finish_reasons: list[str] | None = None
    prompt_tokens: int = 0
    error: RequestError | None = None

    @property
    def group(self) -> tuple:
        """Jobs that may share one engine call: the same sampling settings (each keeps its own
        ``max_tokens``: the engine retires a request's rows at its own budget)."""
        s = self.sampling
        return (s.do_sample, s.temperature, s.top_p, s.top_k)


class ChatApp:
    """The server logic around one engine; calling it makes a (not yet started) server.

    ``events`` logs every chat-completions request (arrival, request id and retry count from
    the headers, seed, n, outcome) for tests and debugging; no header other than those two is
    read, so no API key is ever recorded.
    """

    def __init__(self, engine, *, model_name: str, faults=None, max_batch: int | None = None,
                 default_max_tokens: int = 256, max_tokens_limit: int = 8192, settings: list | None = None):
        from personadrift.runtime.factory import combined_intervention

        self.engine = engine
        self.model_name = model_name
        self.faults = faults  # tests only: take() -> a fault or None per chat request (module docstring)
        self.max_batch: int = max_batch or getattr(engine, "max_batch", None) or 16
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        # the registered methods decide which requests they act on, the guidance branch and
        # the rows a request costs; the engine must carry exactly their intervention
        self.settings = list(settings or [])
        want = combined_intervention(self.settings)
        if getattr(engine, "intervention", want) != want:
            raise ValueError(f"the engine's intervention {engine.intervention} is not the settings' {want} "
                             "(build the engine with runtime.factory.hf_engine(settings=...))")
        self.intervene = any(st.intervenes("dialog") for st in self.settings)
        self.rows_per_sample = max((st.rows_per_sample() for st in self.settings), default=1)
        self.lock = threading.Lock()  # one model: every engine/tokenizer use holds it
        self.created = int(time.time())
        self.fingerprint = "pd-" + hashlib.sha256(json.dumps(
            {"model": model_name, "settings": [st.describe() for st in self.settings]},
            sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.events: list[dict] = []
        self.batches = 0  # engine calls made
        self.largest_batch = 0  # most requests served by one engine call
        self._arrivals = 0
        self._count_lock = threading.Lock()

    def __call__(self, host: str = "127.0.0.1", port: int = 0) -> ChatServer:
        return ChatServer(self, host, port)

    # ---------------------------------------------------------------- bookkeeping
    def arrive(self) -> int:
        with self._count_lock:
            k = self._arrivals
            self._arrivals += 1
            return k

    def record(self, **event) -> None:
        with self._count_lock:
            self.events.append(event)

    # ---------------------------------------------------------------- requests
    def parse(self, body: dict) -> _Job:
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        for name in _UNSUPPORTED:
            if body.get(name) not in (None, False, [], ""):
                raise RequestError(400, f"'{name}' is not supported by this server", param=name)
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(404, f"the model '{model}' does not exist; this server serves '{self.model_name}'",
                               param="model", code="model_not_found")
        messages = _messages(body.get("messages"))
        temperature = _number(body, "temperature", 1.0, lo=0.0, hi=2.0)
        top_p = _number(body, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True)
        top_k = max(0, _integer(body, "top_k", 0, lo=-1, hi=1 << 31))  # vLLM's spelling of off: -1
        n = _integer(body, "n", 1, lo=1, hi=MAX_N)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        else:
            key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            max_tokens = _integer(body, key, None, lo=1, hi=self.max_tokens_limit)
        seed = body.get("seed")
        if seed is None:
            seed = random.SystemRandom().getrandbits(63)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError(400, "'seed' must be an integer", param="seed")
        if temperature == 0:
            sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=max_tokens, do_sample=False)
        else:
            sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_tokens,
                                do_sample=True)
        return _Job(messages=messages, n=n, seed=int(seed), sampling=sampling, max_tokens=max_tokens)

    def gen_request(self, job: _Job) -> GenRequest:
        return GenRequest(
            messages=job.messages,
            seed=job.seed,
            n=job.n,
            persist=False,
            max_new_tokens=job.max_tokens,
            intervene=self.intervene,
            negative_messages=self.negative_messages(job.messages),
        )

    def negative_messages(self, messages: list[dict]) -> list[dict] | None:
        for st in self.settings:
            negative = st.negative_messages(messages)
            if negative is not None:
                return negative
        return None

    def rows(self, job: _Job) -> int:
        return job.n * self.rows_per_sample

    def run_batch(self, jobs: list[_Job]) -> None:
        """Generate for ``jobs`` (same sampling group, any budgets) in one engine call; fills each job."""
        engine = self.engine
        with self.lock:
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(jobs))
            ok = []
            for job in jobs:  # render first: a template that rejects the messages fails one job only
                try:
                    job.prompt_tokens = len(engine.chat.render(job.messages).ids)
                    negative = self.negative_messages(job.messages)
                    if negative is not None:
                        engine.chat.render(negative)
                    ok.append(job)
                except Exception as exc:  # chat templates raise all sorts
                    job.error = RequestError(400, f"the chat template rejects these messages: {exc}", param="messages")
            if ok:
                saved = engine.sampling
                engine.sampling = ok[0].sampling
                try:
                    done = engine.complete([self.gen_request(j) for j in ok])  # each carries its budget
                    for job, comps in zip(ok, done):
                        job.texts = [c.text for c in comps]
                        job.completion_tokens = [c.new_tokens for c in comps]
                        job.finish_reasons = [c.finish_reason for c in comps]
                except Exception as exc:
                    log.exception("generation failed")
                    for job in ok:
                        job.error = RequestError(500, f"generation failed: {type(exc).__name__}: {exc}",
                                                 kind="server_error")
                finally:
                    engine.sampling = saved
        for job in jobs:
            job.done.set()

    def response(self, job: _Job) -> dict:
        assert job.texts is not None and job.finish_reasons is not None and job.completion_tokens is not None  # done
        choices = []
        for i, (text, reason) in enumerate(zip(job.texts, job.finish_reasons)):
            choices.append({
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            })
        completion = sum(job.completion_tokens)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": job.prompt_tokens + completion},
        }

    def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "personadrift"}
        ]}


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        if role not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {sorted(_ROLES)}", param=f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise RequestError(400, f"{where}.content: only text parts are supported", param=f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(400, f"{where}.content must be a string", param=f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _number(body, key, default, *, lo, hi, lo_open=False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise RequestError(400, f"'{key}' must be a number", param=key)
    if v > hi or v < lo or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise RequestError(400, f"'{key}' must be in {bound}", param=key)
    return float(v)


def _integer(body, key, default, *, lo, hi) -> int:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(400, f"'{key}' must be an integer", param=key)
    if not lo <= v <= hi:
        raise RequestError(400, f"'{key}' must be between {lo} and {hi}", param=key)
    return v


# ------------------------------------------------------------------ batching
class _Batcher(threading.Thread):
    """Owns the model: takes queued jobs that share sampling parameters, runs them together."""

    def __init__(self, app: ChatApp):
        super().__init__(name="personadrift-serve-batcher", daemon=True)
        self.app = app
        self.queue: list[_Job] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.busy = False

    def submit(self, job: _Job) -> None:
        with self.cond:
            if self.stopping:
                raise RequestError(503, "the server is shutting down", kind="server_error")
            self.queue.append(job)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            for job in self.queue:
                job.error = RequestError(503, "the server is shutting down", kind="server_error")
                job.done.set()
            self.queue.clear()
            self.cond.notify_all()
        if self.is_alive():
            self.join(timeout=60)

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                group = self.queue[0].group
                batch: list = []
                rows = 0
                for job in list(self.queue):
                    need = self.app.rows(job)
                    if job.group != group or (batch and rows + need > self.app.max_batch):
                        continue
                    batch.append(job)
                    rows += need
                    self.queue.remove(job)
                self.busy = True
            try:
                self.app.run_batch(batch)
            except BaseException as exc:  # never leave a handler waiting
                log.exception("batch failed")
                for job in batch:
                    if job.error is None and job.texts is None:
                        job.error = RequestError(500, f"server error: {type(exc).__name__}", kind="server_error")
                    job.done.set()
            finally:
                with self.cond:
                    self.busy = False


# ------------------------------------------------------------------ HTTP
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "personadrift-serve"
    timeout = 300  # idle keep-alive connections are closed after this

    server: ChatServer

    def log_message(self, fmt, *args):  # never the headers; one debug line per request
        log.debug("%s %s", self.address_string(), fmt % args)

    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _send(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, err: RequestError, headers: dict | None = None) -> None:
        self._send(err.status, err.body(), headers)

    def do_GET(self):
        path = self._path()
        app = self.server.app
        if path == "/health":
            b = self.server.batcher
            self._send(200, {"status": "ok", "model": app.model_name, "queued": len(b.queue), "busy": b.busy,
                             "batches": app.batches, "largest_batch": app.largest_batch})
        elif path == "/v1/models":
            self._send(200, app.models())
        elif path == f"/v1/models/{app.model_name}":
            self._send(200, app.models()["data"][0])
        else:
            self._error(RequestError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self):
        path = self._path()
        if path != "/v1/chat/completions":
            self._drain()
            self._error(RequestError(404, f"no route POST {path}", code="not_found"))
            return
        app = self.server.app
        arrival = app.arrive()
        event = {"arrival": arrival, "request_id": self.headers.get(REQUEST_ID_HEADER),
                 "retry": int(self.headers.get(RETRY_COUNT_HEADER) or 0), "seed": None, "n": None}
        try:
            body = self._read_json()
        except RequestError as err:
            app.record(**event, outcome=str(err.status))
            self.close_connection = True
            self._error(err)
            return
        if isinstance(body, dict):
            event.update(seed=body.get("seed"), n=body.get("n"))
        fault = app.faults.take() if app.faults is not None else None
        if fault is not None:
            app.record(**event, outcome=fault.outcome)
            if fault.stall_s:
                time.sleep(fault.stall_s)  # the client has given up by now
                self.close_connection = True
            self._error(fault.error, fault.headers)
            return
        try:
            job = app.parse(body)
            self.server.batcher.submit(job)
            job.done.wait()
            if job.error is not None:
                raise job.error
            reply = app.response(job)
        except RequestError as err:
            app.record(**event, outcome=str(err.status))
            self._error(err)
            return
        app.record(**event, outcome="ok")
        self._send(200, reply)

    def _drain(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def _read_json(self):
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise RequestError(411, "Content-Length is required")
        try:
            length = int(raw)
        except ValueError:
            raise RequestError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body must be at most {MAX_BODY_BYTES} bytes")
        data = self.rfile.read(length)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}") from None


class ChatServer(ThreadingHTTPServer):
    """The HTTP server of one :class:`ChatApp`; ``start()`` serves from a background thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: ChatApp, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.app = app
        self.batcher = _Batcher(app)
        self.batcher.start()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The base URL for OpenAI clients (``http://host:port/v1``)."""
        host = self.server_address[0]
        assert isinstance(host, str)  # an IPv4/IPv6 address as text
        return f"http://{host}:{self.port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="personadrift-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, answer queued requests with 503, and release the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.batcher.stop()
        self.server_close()

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_app(engine, *, model_name: str, faults=None, max_batch: int | None = None,
              default_max_tokens: int = 256, settings: list | None = None) -> ChatApp:
    """The server factory: ``build_app(engine, model_name="m")(host, port).start()``."""
    return ChatApp(engine, model_name=model_name, faults=faults, max_batch=max_batch,
                   default_max_tokens=default_max_tokens, settings=settings)


def serve(engine, host: str = "127.0.0.1", port: int = 8000, *, model_name: str = "model",
          max_batch: int | None = None, default_max_tokens: int = 256, settings: list | None = None) -> None:
    """Serve ``engine`` until interrupted (Ctrl-C or SIGTERM)."""
    server = build_app(engine, model_name=model_name, max_batch=max_batch, default_max_tokens=default_max_tokens,
                       settings=settings)(host, port)
    print(f"personadrift serve: model {model_name!r} at {server.url} (POST /v1/chat/completions)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.stop()
        server.server_close()


# ------------------------------------------------------------------ command line
def add_arguments(ap: argparse.ArgumentParser) -> None:
    """``personadrift serve``'s arguments; each registered method adds its own flags."""
    from personadrift.interventions import METHODS

    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a model folder fetched by the workflow (manifest.json + weights)")
    src.add_argument("--tiny", action="store_true",
                     help="serve the tiny random-weight test model (built in a temp dir)")
    ap.add_argument("--model-name", default=None, help="name clients must send as 'model' (default: the manifest's)")
    ap.add_argument("--dtype", default="float32",
                    choices=["float32", "bfloat16", "float16", "auto", "bfloat16_if_native"])
    ap.add_argument("--fold-system-prompt", choices=["auto", "yes", "no"], default="auto",
                    help="fold the system prompt into the first user turn "
                         "(auto: only if the template has no system role)")
    for impl in METHODS.values():
        for flag, (_, kwargs) in impl.serve_flags.items():
            ap.add_argument(flag, **{"default": None, **kwargs})
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    ap.add_argument("--max-batch", type=int, default=16, help="most sequences decoded together")
    ap.add_argument("--max-tokens", type=int, default=256, help="max_tokens of requests that give none")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def method_flags(args: argparse.Namespace) -> dict:
    """The registered methods' flags as given: flag -> value (None if not given)."""
    from personadrift.interventions import METHODS

    return {flag: getattr(args, flag.lstrip("-").replace("-", "_"), None)
            for impl in METHODS.values() for flag in impl.serve_flags}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="personadrift serve", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return ap


def run(args: argparse.Namespace) -> None:
    """Serve the model ``args`` names until interrupted (SIGTERM included)."""
    from personadrift.interventions.settings import settings_from_flags
    from personadrift.runtime.factory import hf_engine

    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings = settings_from_flags(method_flags(args))
    try:
        with tempfile.TemporaryDirectory(prefix="personadrift-tiny-") as tmp:
            model_dir = args.model_dir
            if args.tiny:
                from personadrift.generation.models import fetch_model

                fetch_model({"name": "tiny", "source": "tiny"}, tmp)
                model_dir = tmp
            fold = {"auto": None, "yes": True, "no": False}[args.fold_system_prompt]
            engine = hf_engine(model_dir, {"dtype": args.dtype, "fold_system_prompt": fold}, settings=settings,
                               max_batch=args.max_batch, threads=args.threads, where="(command line)")
            name = args.model_name or engine.identity.get("name") or "model"
            serve(engine, args.host, args.port, model_name=name, max_batch=args.max_batch,
                  default_max_tokens=args.max_tokens, settings=settings)
    except KeyboardInterrupt:
        pass


COMMANDS = [
    Command("serve", "OpenAI-compatible chat server over a model (+ intervention)", run, add_arguments,
            takes_config=False),
]


def main(argv: list[str] | None = None) -> int:
    """``python -m personadrift.runtime.serve`` (the same as ``personadrift serve``)."""
    try:
        args = build_parser().parse_args(argv)  # each installed method adds its flags
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run(args)
    except PersonaDriftError as exc:
        print(f"personadrift serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
