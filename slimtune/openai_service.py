"""The HTTP side of `slimtune serve` for a causal LM: OpenAI's chat and completions API (a Starlette app).

    POST /v1/chat/completions  {"model", "messages": [{"role", "content"}], max_tokens, temperature,
                               top_p, stop, seed, stream}      -> chat.completion (+ chunks when streamed)
    POST /v1/completions       the same with "prompt" (a string) -> text_completion
    GET  /v1/models            the served model                 GET /health /ready /metrics

Any causal LM slimtune writes is served through the `Decoder` interface (decoder/measure.py;
`load_decoder` picks torch for an HF / LoRA stage / compact folder, ONNX Runtime GenAI for a
GenAI export): a new runtime (e.g. llama.cpp for GGUF) is one more `Decoder` there, nothing here.

A chat prompt is the model's chat template with the assistant turn opened, or for a base model
without one the plain template of `chat.chat_prompt` ("User: ...\\nAssistant:"). A completion's
prompt is tokenized as it is (with the tokenizer's special tokens, e.g. a BOS). Sampling follows
OpenAI: temperature defaults to 1.0 (sampled), temperature 0 is greedy decoding (the path `slimtune
eval` measures, exactly); top_p defaults to 1.0; a seed makes a sampled answer reproducible.
Requests are checked and their prompts tokenized off the event loop (openai_request.py);
generation runs on one worker thread, requests in turn (decoder/worker.py); more than
`max_queue` requests waiting or running get 503 + Retry-After. `max_new_tokens` (`slimtune serve
--max-new-tokens`) caps every answer: a larger max_tokens is a 400, none given means that many. A
client that goes away mid-answer (a closed stream, a cancelled request) stops its generation at the
next token; /metrics counts such generations and every token made. Streamed answers are server-sent
events (`data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`), UTF-8 JSON, characters never split.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: a client's mistake
is a 4xx of type invalid_request_error (400 for any bad field, so the openai client raises
BadRequestError), 404 an unknown model or path, 413 / 415 the body; a model failure 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .decoder.measure import Decoder
from .decoder.worker import GenerationWorker, Job, QueueFull
from .openai_request import EXAMPLE, BadRequest, Request, RequestChecker
from .service import ApiError, Probes, ServeConfig, _first_line, _json_body, _model_id, _read_body

@dataclass
class LoadedLM:
    artifact: Path
    name: str  # what /v1/models lists and requests name: the folder's name
    model_id: str  # NAME@sha256:... of the weights, sent back as system_fingerprint
    decoder: Decoder
    load_seconds: float = 0.0


def load_lm(artifact: str | Path) -> LoadedLM:
    """The causal LM at `artifact` as a `Decoder` (lm.load_decoder), warmed up."""
    from .decoder.lm import load_decoder, resolve

    start = time.perf_counter()
    path = resolve(artifact)
    decoder = load_decoder(path)
    ids = decoder.tokenizer("warm-up", add_special_tokens=False)["input_ids"] or [0]
    list(decoder.stream(ids, 1))  # the first call of a session is slow; pay it before ready
    name = str(artifact) if not Path(artifact).exists() else path.name  # a packaged name as given
    return LoadedLM(path, name, _model_id(path), decoder, time.perf_counter() - start)


class LMService(Probes):
    """OpenAI's endpoints over a `LoadedLM` and one `GenerationWorker`; `app` is the ASGI application."""

    def __init__(self, loaded: LoadedLM, cfg: ServeConfig):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        self.loaded, self.cfg = loaded, cfg
        self.draining = False
        self.checker = RequestChecker(loaded.decoder.tokenizer, loaded.name, loaded.model_id,
                                      loaded.decoder.max_positions, cfg.max_new_tokens)
        self.worker = GenerationWorker(loaded.decoder, cfg.max_queue)
        self.registry = reg = CollectorRegistry()  # this server's own: no process-wide global state
        self.requests = Counter("slimtune_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=reg)
        self.latency = Histogram("slimtune_request_latency_seconds", "time to the answer (streamed: to its first byte) by endpoint",
                                 ["endpoint"], registry=reg, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.prompt_tokens = Counter("slimtune_prompt_tokens", "prompt tokens read", registry=reg)
        self.completion_tokens = Counter("slimtune_completion_tokens", "tokens generated", registry=reg)
        Gauge("slimtune_queue_depth", "requests waiting or generating", registry=reg).set_function(lambda: self.worker.pending)
        Gauge("slimtune_generations_cancelled", "generations stopped because the client went away (a counter)",
              registry=reg).set_function(lambda: self.worker.cancelled)
        Gauge("slimtune_generated_tokens", "tokens the model generated, cancelled answers included (a counter)",
              registry=reg).set_function(lambda: self.worker.generated)
        routes = [
            Route("/v1/chat/completions", self._endpoint("chat", self.chat), methods=["POST"]),
            Route("/v1/completions", self._endpoint("completions", self.completions), methods=["POST"]),
            Route("/v1/models", self._endpoint("models", self.models), methods=["GET"]),
            Route("/v1/models/{model:path}", self._endpoint("models", self.model), methods=["GET"]),
            Route("/health", self._endpoint("health", self.health), methods=["GET"]),
            Route("/ready", self._endpoint("ready", self.ready), methods=["GET"]),
            Route("/metrics", self._endpoint("metrics", self.metrics), methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan, exception_handlers={HTTPException: self._http_error})

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.worker.start()
        try:
            yield
        finally:  # uvicorn has drained the in-flight requests by now
            self.draining = True
            await asyncio.to_thread(self.worker.stop, self.cfg.drain_seconds)

    def _endpoint(self, name: str, handler):
        async def counted(request):
            start = time.perf_counter()
            try:
                response = await handler(request)
            except ApiError as e:
                response = _error(e.status, e.message, getattr(e, "param", None), getattr(e, "code", None), e.headers)
            except Exception as e:  # a model failure: 500 for this request, the server stays up
                response = _error(500, f"internal error: {type(e).__name__}: {_first_line(e)}")
            self.requests.labels(name, str(response.status_code)).inc()
            self.latency.labels(name).observe(time.perf_counter() - start)
            return response

        return counted

    async def _http_error(self, request, exc):
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", headers=exc.headers)

    # -- generation ----------------------------------------------------------------------------

    async def chat(self, request):
        return await self._generate(request, "chat")

    async def completions(self, request):
        return await self._generate(request, "completion")

    async def _generate(self, request, kind: str):
        from starlette.responses import JSONResponse, StreamingResponse

        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise BadRequest(f"send JSON with Content-Type: application/json (got {ctype or 'none'!r})", status=415)
        try:
            body = _json_body(await _read_body(request, self.cfg.max_body_bytes), EXAMPLE[kind])
        except ApiError as e:  # the classifier's checks, in OpenAI's shape
            raise BadRequest(e.message, status=e.status) from None
        req = await asyncio.to_thread(self.checker.parse, body, kind)  # tokenizing is CPU work: off the loop
        if self.draining:
            raise BadRequest("server is shutting down", status=503, code="shutting_down") from None
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(req.ids, req.max_tokens, req.sampling, req.stops, emit)
        try:
            self.worker.submit(job)
        except QueueFull:
            e = BadRequest(f"queue full ({self.cfg.max_queue} requests waiting or generating); retry later",
                           status=503, code="queue_full")
            e.headers = {"Retry-After": "1"}
            raise e from None
        self.prompt_tokens.inc(len(req.ids))
        head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": self.loaded.name, "system_fingerprint": self.loaded.model_id}
        if req.stream:
            return StreamingResponse(self._sse(req, head, events, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, finish, made = [], None, 0
        try:
            while True:
                event = await events.get()
                if event[0] == "text":
                    text.append(event[1])
                elif event[0] == "done":
                    finish, made = event[1], event[2]
                    break
                else:
                    raise RuntimeError(event[1])
        finally:
            job.cancelled.set()  # a no-op once done; if this request was cancelled, stop its generation
        self.completion_tokens.inc(made)
        return JSONResponse({**head, "choices": [_choice(kind, "".join(text), finish)], "usage": _usage(req, made)})

    async def _sse(self, req: Request, head: dict, events: asyncio.Queue, job: Job):
        """chunk events, then [DONE]; the client going away cancels this generator and its generation."""
        chunk = {**head, "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion"}
        try:
            if req.kind == "chat":  # as OpenAI: the role first, in a chunk of its own
                yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
            while True:
                event = await events.get()
                if event[0] == "text":
                    yield _sse({**chunk, "choices": [_delta(req.kind, event[1], None)]})
                elif event[0] == "done":
                    self.completion_tokens.inc(event[2])
                    yield _sse({**chunk, "choices": [_delta(req.kind, "", event[1])]})
                    if req.include_usage:
                        yield _sse({**chunk, "choices": [], "usage": _usage(req, event[2])})
                    break
                else:  # a model failure after the answer began: the status is sent already
                    yield _sse({"error": {"message": f"internal error: {event[1]}", "type": "server_error",
                                          "param": None, "code": None}})
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()

    # -- the rest ------------------------------------------------------------------------------

    def _card(self) -> dict:
        return {"id": self.loaded.name, "object": "model", "created": int(self.loaded.artifact.stat().st_mtime),
                "owned_by": "slimtune", "runtime": self.loaded.decoder.kind, "fingerprint": self.loaded.model_id,
                "max_positions": self.loaded.decoder.max_positions}

    async def models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model(self, request):
        from starlette.responses import JSONResponse

        name = request.path_params["model"]
        if not self.checker.known(name):
            raise BadRequest(f"the model {name[:100]!r} does not exist; this server serves {self.loaded.name!r}",
                             "model", status=404, code="model_not_found")
        return JSONResponse(self._card())


def _choice(kind: str, text: str, finish: str) -> dict:
    if kind == "chat":
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _delta(kind: str, text: str, finish: str | None) -> dict:
    if kind == "chat":
        return {"index": 0, "delta": {"content": text} if text or finish is None else {}, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _usage(req: Request, made: int) -> dict:
    return {"prompt_tokens": len(req.ids), "completion_tokens": made, "total_tokens": len(req.ids) + made}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"  # UTF-8 text, not \\uXXXX escapes


def _error(status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None):
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers=headers)

