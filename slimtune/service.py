"""The HTTP side of `slimtune serve`: the model as served and its endpoints (a Starlette app).

    POST /predict  {"texts": [...]} or {"text": "..."} (+ "task" for a multi-task folder)
    GET  /health   liveness        GET /ready   model loaded and not draining
    GET  /metrics  Prometheus text GET /info    model, labels, max_length, hardware, measured figures

Any artifact `load_predictor` loads is served through it (HF folder, compact folder, ONNX, ONNX
int8; a multi-task folder gets one predictor per task). Requests are parsed and checked here and
their texts go to the `Batcher` (batching.py), which runs the model on worker threads. Anything a
client can send wrong is a 4xx with a short `{"error": "..."}`; a 500 means a model failure.

Starlette rather than FastAPI: every status code here is chosen by hand (400 / 413 / 415 / 422 /
404 / 503), so FastAPI's request models would be overridden anyway, and Starlette is the layer
FastAPI itself runs on. Running it (socket, uvicorn, signals) is server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .batching import Batcher, QueueFull, dynamic_activations
from .errors import SlimtuneError
from .artifacts import detect, load_predictor
from .artifacts.multitask import TASKS_FILE
from .measure.predictors import Predictor
from .tasks import for_model
from .text import length_for

MEASURED_KEYS = ("accuracy", "f1_macro", "latency_ms_p50", "latency_ms_p95", "throughput_per_s",
                 "throughput_batch_size", "size_bytes", "params", "peak_rss_mb", "parity")


@dataclass
class ServeConfig:
    max_batch: int = 32  # texts per model call, at most
    max_wait_ms: float = 5.0  # how long the first waiting text waits for batch-mates
    workers: int = 1  # inference threads (one model in memory, shared)
    max_queue: int = 1024  # texts waiting or running; beyond it requests get 503
    max_texts: int = 64  # texts per request; beyond it 413
    max_length: int | None = None  # tokens per text (longer ones truncated, and the answer says so); unset: the task's default (text.length_for)
    max_body_bytes: int = 1 << 20  # request body; beyond it 413
    per_row: str = "auto"  # auto: one text per model call only where the model needs it; on; off
    drain_seconds: float = 30.0  # on SIGTERM, how long in-flight requests may still take
    max_new_tokens: int = 256  # causal LM: tokens per answer at most (400 above), and when a request gives no max_tokens

    def __post_init__(self) -> None:
        for name in ("max_batch", "workers", "max_queue", "max_texts", "max_length", "max_body_bytes", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SlimtuneError(f"serve: {name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise SlimtuneError(f"serve: max-wait-ms must be >= 0, not {self.max_wait_ms}")
        if self.per_row not in ("auto", "on", "off"):
            raise SlimtuneError(f"serve: per-row must be auto, on or off, not {self.per_row!r}")
        if self.max_queue < self.max_texts:
            raise SlimtuneError(f"serve: max-queue ({self.max_queue}) must hold one full request (max-texts {self.max_texts})")


@dataclass
class Loaded:
    """The artifact as served: one predictor per task (a single-task model has one, named None)."""

    artifact: Path
    model_id: str
    predictors: dict[str | None, Predictor]
    dynamic: dict[str | None, bool]  # activations quantized per call: answers depend on batch-mates
    primary: str | None
    max_length: int
    measured: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    load_seconds: float = 0.0


def load(artifact: str | Path, cfg: ServeConfig, threads: int | None = None) -> Loaded:
    """Load `artifact` through `load_predictor` (per task), warm it up, find dynamic int8 graphs."""
    start = time.perf_counter()
    path = Path(artifact)
    if not path.exists():
        raise SlimtuneError(f"model not found: {path}")
    folder = path.parent if path.suffix == ".onnx" else path
    max_length = length_for(for_model(folder), folder, cfg.max_length)
    fmt = detect(folder)
    if fmt is not None and fmt.tasks:  # a multi-task folder: one predictor per task head
        meta = json.loads((folder / TASKS_FILE).read_text())
        primary = meta["primary"]
        predictors = {t: load_predictor(path, max_length, task=t, spin=False) for t in meta["tasks"]}
    else:
        primary = None
        predictors = {None: load_predictor(path, max_length, threads=threads, spin=False)}
    dynamic = {task: dynamic_activations(pred) for task, pred in predictors.items()}
    for pred in predictors.values():
        pred.logits(["warm-up"])  # the first call of a session is slow; pay it before ready
    measured = {}
    if (folder / "metrics.json").is_file():
        saved = json.loads((folder / "metrics.json").read_text())
        saved = saved.get("metrics", saved)  # a run's folder nests them; `slimtune export` does not
        measured = {k: saved[k] for k in MEASURED_KEYS if k in saved}
    return Loaded(path, _model_id(path), predictors, dynamic, primary, max_length, measured,
                  load_seconds=time.perf_counter() - start)


def _model_id(path: Path) -> str:
    """`NAME@sha256:` of the weight files, so a client can tell which model answered."""
    from .measure.bench import WEIGHT_SUFFIXES

    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    name = path.stem if path.is_file() else path.name
    return f"{name}@sha256:{digest.hexdigest()[:12]}"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Probes:
    """/health, /ready and /metrics, the same for every served model: a subclass has `draining`,
    `loaded.model_id` and its own prometheus `registry`."""

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def ready(self, request):
        from starlette.responses import JSONResponse

        if self.draining:
            return JSONResponse({"status": "draining"}, 503)
        return JSONResponse({"status": "ready", "model": self.loaded.model_id})

    async def metrics(self, request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class Service(Probes):
    """The HTTP endpoints over a `Loaded` model and a `Batcher`; `app` is the ASGI application."""

    def __init__(self, loaded: Loaded, cfg: ServeConfig):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        self.loaded, self.cfg = loaded, cfg
        self.draining = False
        # A dynamic-int8 model runs one text per call (its answers would depend on batch-mates)
        self.per_row = {t: d if cfg.per_row == "auto" else cfg.per_row == "on" for t, d in loaded.dynamic.items()}
        self.registry = reg = CollectorRegistry()  # this server's own: no process-wide global state
        self.requests = Counter("slimtune_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=reg)
        self.latency = Histogram("slimtune_request_latency_seconds", "request latency by endpoint", ["endpoint"], registry=reg,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("slimtune_batch_size", "texts per gathered batch", registry=reg,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("slimtune_batch_seconds", "model time per gathered batch", registry=reg,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.texts = Counter("slimtune_texts", "texts answered", registry=reg)
        self.truncated = Counter("slimtune_truncated_texts", "texts longer than max_length (truncated)", registry=reg)
        self.batcher = Batcher(loaded.predictors, self.per_row, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue,
                               cfg.workers, on_batch=self._on_batch)
        Gauge("slimtune_queue_depth", "texts waiting or running", registry=reg).set_function(lambda: self.batcher.pending)
        one = Gauge("slimtune_one_text_per_call", "1: the model runs one text per call (dynamic int8: batch-mates "
                    "would change its answers, and batching is not faster for it); 0: batched", ["task"], registry=reg)
        for task, v in self.per_row.items():
            one.labels(task or "model").set(int(v))
        routes = [
            Route("/predict", self._endpoint("predict", self.predict), methods=["POST"]),
            Route("/health", self._endpoint("health", self.health), methods=["GET"]),
            Route("/ready", self._endpoint("ready", self.ready), methods=["GET"]),
            Route("/metrics", self._endpoint("metrics", self.metrics), methods=["GET"]),
            Route("/info", self._endpoint("info", self.info), methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             exception_handlers={HTTPException: self._http_error})

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.batcher.start(asyncio.get_running_loop())
        try:
            yield
        finally:  # uvicorn has drained the in-flight requests by now
            self.draining = True
            await asyncio.to_thread(self.batcher.stop, self.cfg.drain_seconds)

    def _on_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)

    def _endpoint(self, name: str, handler):
        from starlette.responses import JSONResponse

        async def counted(request):
            start = time.perf_counter()
            try:
                response = await handler(request)
            except ApiError as e:
                response = JSONResponse({"error": e.message}, e.status, headers=e.headers)
            except Exception as e:  # a model failure: 500 for this request, the server stays up
                response = JSONResponse({"error": f"internal error: {type(e).__name__}: {_first_line(e)}"}, 500)
            self.requests.labels(name, str(response.status_code)).inc()
            self.latency.labels(name).observe(time.perf_counter() - start)
            return response

        return counted

    async def _http_error(self, request, exc):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code, headers=exc.headers)

    # -- endpoints ---------------------------------------------------------------------------

    async def predict(self, request):
        from starlette.responses import JSONResponse

        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"send JSON with Content-Type: application/json (got {ctype or 'none'!r})")
        payload = _json_body(await _read_body(request, self.cfg.max_body_bytes))
        texts, task = self._parse(payload)
        if self.draining:
            raise ApiError(503, "server is shutting down", {"Retry-After": "1"})
        try:
            futures = self.batcher.submit(texts, task)
        except QueueFull:
            raise ApiError(503, f"queue full ({self.cfg.max_queue} texts waiting); retry later", {"Retry-After": "1"}) from None
        answers = await asyncio.gather(*futures)
        labels = self.loaded.predictors[task].label_names
        predictions, warnings = [], []
        for i, a in enumerate(answers):
            k = int(a.probabilities.argmax())
            p = {"label": labels[k], "probability": float(a.probabilities[k]),
                 "probabilities": dict(zip(labels, map(float, a.probabilities))), "truncated": a.tokens is not None}
            if a.tokens is not None:
                p["tokens"] = a.tokens
                warnings.append(f"text {i} has {a.tokens} tokens; only the first {self.loaded.max_length} were read (max_length)")
            predictions.append(p)
        self.texts.inc(len(texts))
        if warnings:
            self.truncated.inc(len(warnings))
        body = {"model": self.loaded.model_id, "task": task, "predictions": predictions}
        if warnings:
            body["warnings"] = warnings
        return JSONResponse(body)

    def _parse(self, payload) -> tuple[list[str], str | None]:
        if not isinstance(payload, dict):
            raise ApiError(422, 'the body must be a JSON object: {"texts": ["..."]} or {"text": "..."}')
        unknown = sorted(set(payload) - {"text", "texts", "task"})
        if unknown:
            raise ApiError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: text, texts, task")
        if ("text" in payload) == ("texts" in payload):
            raise ApiError(422, 'give exactly one of "texts" (a list of strings) or "text" (a string)')
        if "text" in payload:
            if not isinstance(payload["text"], str):
                raise ApiError(422, f'"text" must be a string, not {type(payload["text"]).__name__}')
            _check_unicode(payload["text"], '"text"')
            texts = [payload["text"]]
        else:
            texts = payload["texts"]
            if not isinstance(texts, list) or not texts:
                raise ApiError(422, '"texts" must be a non-empty list of strings')
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise ApiError(422, f'"texts"[{bad}] must be a string, not {type(texts[bad]).__name__}')
            for i, t in enumerate(texts):
                _check_unicode(t, f'"texts"[{i}]')
        if len(texts) > self.cfg.max_texts:
            raise ApiError(413, f"{len(texts)} texts in one request; at most {self.cfg.max_texts} (--max-texts)")
        return texts, self._task(payload.get("task"))

    def _task(self, task) -> str | None:
        tasks = self.loaded.predictors
        if task is None:
            return self.loaded.primary
        if not isinstance(task, str):
            raise ApiError(422, f'"task" must be a string, not {type(task).__name__}')
        if task not in tasks:
            if None in tasks:
                raise ApiError(404, f"unknown task {task!r}: this model has one task; drop \"task\"")
            raise ApiError(404, f"unknown task {task!r}; tasks: {', '.join(tasks)}")
        return task

    async def info(self, request):
        from starlette.responses import JSONResponse

        if not self.loaded.hardware:  # imports torch: not paid before ready
            from .measure.bench import hardware

            self.loaded.hardware = await asyncio.to_thread(hardware)
        m = self.loaded
        first = next(iter(m.predictors.values()))
        tasks = {str(t): p.label_names for t, p in m.predictors.items()} if m.primary is not None else None
        return JSONResponse({
            "model": m.model_id, "artifact": str(m.artifact), "runtime": first.kind,
            "labels": m.predictors[m.primary].label_names, "tasks": tasks, "primary_task": m.primary,
            "max_length": m.max_length,
            "per_row": {str(t): v for t, v in self.per_row.items()} if tasks else self.per_row[None],
            "batching": {"max_batch": self.cfg.max_batch, "max_wait_ms": self.cfg.max_wait_ms, "workers": self.cfg.workers,
                         "max_queue": self.cfg.max_queue, "max_texts": self.cfg.max_texts},
            "measured": m.measured, "load_seconds": round(m.load_seconds, 3), "hardware": m.hardware,
        })


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_body(body: bytes, example: str = '{"texts": ["..."]} or {"text": "..."}'):
    try:
        return json.loads(body)
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not valid UTF-8: {_first_line(e)}") from None
    except ValueError as e:
        raise ApiError(400, f"malformed JSON: {_first_line(e)}") from None
    except RecursionError:  # the stdlib parser has no depth limit of its own; it stops at the recursion limit
        raise ApiError(400, f"JSON nested too deep; a request is {example}") from None


def _check_unicode(text: str, where: str, status: int = 422) -> None:
    """A JSON string may hold a lone surrogate (\\ud800): valid JSON, not Unicode text (no model can read it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(status, f"{where} is not valid Unicode: a lone surrogate {ascii(text[e.start])[1:-1]} "
                            f"at character {e.start}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
