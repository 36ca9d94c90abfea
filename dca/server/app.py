"""The OpenAI-compatible HTTP API and the chat page, on FastAPI.

Routes (OpenAI's API reference, https://platform.openai.com/docs/api-reference/chat, as llama-server and Ollama
serve it):

- ``POST /v1/chat/completions``: ``messages`` (user and assistant turns, the last one the user's question; system
  and developer messages are added to the server's system prompt, whose citation and untrusted-passage rules stay:
  ``dca.system_prompt`` replaces it), ``stream``, ``max_tokens`` (or ``max_completion_tokens``), ``temperature``,
  ``seed``, ``stop``, ``reasoning_effort`` (``low``/``medium``/``high``: dca's effort presets; ``none``/``minimal``:
  no thinking phase), and ``dca``: an object of :class:`~dca.assistant.AssistantConfig` fields for this request
  (``top_k``, ``search_mode``, ``think``, ``samples``, ``strategy``, ...: the settings of ``dca chat``'s flags, by
  field name). The thinking comes in ``message.reasoning_content`` (streamed as ``delta.reasoning_content``,
  llama-server's convention), the retrieved passages in ``sources`` (number, title, source, similarity, cited)
  beside ``choices`` (in the last chunk of a stream), token counts in ``usage``. A non-streamed ``content`` is the
  answer with the citation markers dca adds when the model cites nothing; a stream sends the model's text as it
  comes, and its last chunk's ``dca.text`` holds the answer with those markers. Each request runs on a copy of the
  assistant (its settings and conversation are the request's; model, store and verifier are shared).
- ``POST /v1/embeddings``: vectors of the store's embedder (``float`` or ``base64`` encoding).
- ``GET /v1/models``, ``GET /health``, and ``GET /``: the chat page (static, from the package).

Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}`` with 400 (bad input), 401 (key),
403 (a keyless server asked under a Host that is not loopback: DNS rebinding), 404 (unknown model or route), 413
(body over the limit), 422 (wrong types), 503 (queue full, with Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hmac
import json
import threading
import time
import typing
import uuid
from dataclasses import fields, replace
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..assistant import Assistant, AssistantConfig
from ..errors import DcaError
from .engine import Engine, Job, QueueFull, ServerClosing

# AssistantConfig fields a request may not set: the verifier names a file on the server's disk.
NOT_PER_REQUEST = {"verifier"}
EFFORTS = ("none", "minimal", "low", "medium", "high")


class APIError(Exception):
    """An error answered as OpenAI's error object with ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise APIError(400, f"content parts of type {part.type!r} are not supported (text only)",
                               param="messages")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # top_p, user, logprobs...: accepted, not used

    model: str
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    reasoning_effort: Literal[EFFORTS] | None = None  # type: ignore[valid-type]
    n: int = Field(1, ge=1, le=1)
    stream_options: StreamOptions | None = None
    dca: dict[str, Any] | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


def _error_type(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error", 503: "server_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str | None]:
    """(status, message, param) of a request that failed validation: 400 for a body that is not JSON or absent,
    422 for wrong fields, the message naming each field."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON", None
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return 400, "the request has no JSON body", None
    parts, param = [], None
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        param = param or loc or None
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return 422, "; ".join(parts), param


class StopFilter:
    """Cut a stream of text pieces at the first of ``stops``, holding back a tail that could start one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return piece
        self.buffer += piece
        cuts = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit = True
            text, self.buffer = self.buffer[:min(cuts)], ""
            return text
        keep = len(self.buffer) - self.hold
        text, self.buffer = (self.buffer[:keep], self.buffer[keep:]) if keep > 0 else ("", self.buffer)
        return text

    def flush(self) -> str:
        text, self.buffer = self.buffer, ""
        return "" if self.hit else text


def _sources(answer) -> list[dict]:
    return [{"number": s.number, "title": s.title, "source": s.source, "similarity": round(s.similarity, 4),
             "cited": s.cited, "cited_by": s.cited_by} for s in answer.sources]


def _usage(answer) -> dict:
    st = answer.stats
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.generated_tokens,
            "total_tokens": st.prompt_tokens + st.generated_tokens,
            "completion_tokens_details": {"reasoning_tokens": st.thinking_tokens}}


def create_app(assistant: Assistant, *, model_id: str | None = None, api_key: str | None = None,
               queue_size: int = 16, max_request_bytes: int = 1 << 20, embedder=None) -> FastAPI:
    """The FastAPI application serving ``assistant``.

    Args:
        assistant: the model, store and settings every request starts from (a request's fields override its
            config for that request only; the conversation comes from the request's messages).
        model_id: the id ``/v1/models`` lists and requests must name (default: the model's name).
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer KEY`` (compared in constant time).
        queue_size: requests that may wait while one is served; more get 503 with Retry-After.
        max_request_bytes: larger request bodies get 413.
        embedder: the embedder of ``/v1/embeddings`` (default: the store's; without a store, the bundled one,
            loaded on first use).

    Returns:
        the app; ``app.state.engine`` is its :class:`~dca.server.engine.Engine` (close it when done).
    """
    engine = Engine(queue_size)
    base_config = assistant.config
    assistant.verifier_for(base_config)  # loaded once here; each request's copy of the assistant shares it
    model_id = model_id or assistant.llm.name
    api_key = api_key.strip() if api_key else None
    hints = typing.get_type_hints(AssistantConfig)
    hints["tools"] = str | tuple[str, ...]  # "calculator" or ["calculator"], as AssistantConfig takes it
    per_request = {f.name: TypeAdapter(hints[f.name]) for f in fields(AssistantConfig) if f.name not in NOT_PER_REQUEST}
    state: dict[str, Any] = {"embedder": embedder or (assistant.store.embedder if assistant.store else None)}
    created = int(time.time())

    app = FastAPI(title="dca", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, message, param = _validation_message(exc)
        return APIError(status, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.method} {request.url.path}", 413:
                   f"the request body is over the server's limit of {max_request_bytes} bytes"}.get(
            exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, type=_error_type(exc.status_code),
                        code="request_too_large" if exc.status_code == 413 else None,
                        headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()

    app.add_middleware(_BodyLimit, limit=max_request_bytes)
    # added last: the outermost, so a request without the key is refused before its body is read. Without a key, a
    # request must name a loopback host: a web page whose domain was re-pointed to 127.0.0.1 (DNS rebinding) is
    # refused rather than reading the user's store through the browser.
    app.add_middleware(_KeyCheck, api_key=api_key) if api_key else app.add_middleware(_LoopbackHost)

    def embedding_model():
        if state["embedder"] is None:
            from ..rag import default_embedder

            state["embedder"] = default_embedder()
        return state["embedder"]

    def check_model(name: str, *allowed: str) -> None:
        if name not in allowed:
            raise APIError(404, f"the model {name!r} does not exist here; this server has {', '.join(allowed)}",
                           code="model_not_found", param="model")

    def submit(work) -> Job:
        try:
            return engine.submit(Job(work))
        except QueueFull as e:
            raise APIError(503, str(e), type="server_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except ServerClosing as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "busy": engine.running is not None, "waiting": engine.waiting,
                "queue_size": engine.queue_size, "served": engine.served}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text("utf-8"))

    def model_list() -> list[dict]:
        names = [model_id] + ([state["embedder"].name] if state["embedder"] is not None else [])
        return [{"id": n, "object": "model", "created": created, "owned_by": "dca"} for n in names]

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": model_list()}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        for m in model_list():
            if m["id"] == name:
                return m
        raise APIError(404, f"the model {name!r} does not exist here", code="model_not_found", param="model")

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request):
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or any(not t for t in texts):
            raise APIError(400, "input must be a non-empty string or a non-empty list of non-empty strings",
                           param="input")
        emb = embedding_model()
        check_model(req.model, emb.name, model_id)
        job = submit(lambda emit, cancelled: emb.embed(texts))
        vectors = await _result(job, request)
        data = []
        for i, v in enumerate(vectors):
            vec = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" \
                else [float(x) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        n = sum(len(t.split()) for t in texts)
        return {"object": "list", "data": data, "model": emb.name, "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        check_model(req.model, model_id)
        config = request_config(req, base_config, per_request)
        history, question = conversation(req)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 sequences", param="stop")

        work = answer_work(assistant, config, history, question, stops)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        job = submit(work)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            # the background task cancels a job whose stream never started (the client left first)
            return StreamingResponse(_stream(job, model_id, completion_id, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(job.cancel))
        content, thinking = [], []
        answer, stopped = await _result(job, request, on_event=lambda kind, text: (
            content if kind == "answer" else thinking).append(text))
        text = "".join(content) if stopped else answer.text
        message = {"role": "assistant", "content": text}
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": _finish(answer, stopped)}],
                "usage": _usage(answer), "sources": _sources(answer), "dca": _extra(answer)}

    return app


def request_config(req: ChatRequest, base_config: AssistantConfig, per_request: dict) -> AssistantConfig:
    """``base_config`` with the request's settings: its ``dca`` object (validated by ``per_request``, field name ->
    pydantic TypeAdapter), max_tokens, temperature, seed, reasoning_effort, and its system messages added to the
    system prompt.

    Raises:
        APIError: 422 for an unknown or mistyped setting, 400 for one out of range.
    """
    settings = {}
    for name, value in (req.dca or {}).items():
        if name not in per_request:
            raise APIError(422, f"dca.{name} is not a setting a request may give (those are: "
                                f"{', '.join(sorted(per_request))})", param=f"dca.{name}")
        try:
            settings[name] = per_request[name].validate_python(value)
        except ValidationError as e:
            raise APIError(422, f"dca.{name}: {e.errors()[0]['msg']}", param=f"dca.{name}") from None
    if req.max_tokens or req.max_completion_tokens:
        settings["max_tokens"] = req.max_completion_tokens or req.max_tokens
    if req.temperature is not None:
        settings["temperature"] = req.temperature
    if req.seed is not None:
        settings["seed"] = req.seed
    if req.reasoning_effort in ("none", "minimal"):
        settings["think"] = False
    elif req.reasoning_effort is not None:
        settings["effort"] = req.reasoning_effort
    system = [m.text() for m in req.messages if m.role in ("system", "developer")]
    if system:  # added to the server's system prompt (its citation and untrusted-passage rules stay)
        settings["system_prompt"] = "\n\n".join([settings.get("system_prompt", base_config.system_prompt),
                                                  *system])
    try:
        return replace(base_config, **settings)
    except DcaError as e:
        raise APIError(400, str(e), param="dca") from None
    except TypeError as e:
        raise APIError(422, f"dca: {e}", param="dca") from None

def conversation(req: ChatRequest) -> tuple[list[dict], str]:
    """(the earlier user/assistant turns, the last user message).

    Raises:
        APIError: 400 when the messages do not end with a non-empty user message.
    """
    turns = [{"role": m.role, "content": m.text()} for m in req.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise APIError(400, "messages must end with a non-empty user message", param="messages")
    return turns[:-1], turns[-1]["content"]


def answer_work(assistant, config: AssistantConfig, history: list[dict], question: str, stops: list[str]):
    """The engine job of one chat request: ``work(emit, cancelled)`` streams the answer's thinking and answer pieces
    (cut at the first stop sequence) to ``emit`` and returns ``(Answer, stopped)``."""

    def work(emit, cancelled):
        stopper = StopFilter(stops)
        # a copy per request: its own settings, conversation and cancel flag; the model, store and verifier shared
        bot = copy.copy(assistant)
        bot.config, bot.history, bot._cancel = config, list(history), threading.Event()
        answer = None
        for chunk in bot.stream(question, cancel=lambda: cancelled() or stopper.hit):
            if chunk.kind == "thinking":
                emit(("thinking", chunk.text))
            elif chunk.kind == "answer":
                piece = stopper.feed(chunk.text)
                if piece:
                    emit(("answer", piece))
            elif chunk.kind == "done":
                answer = chunk.answer
        tail = stopper.flush()
        if tail:
            emit(("answer", tail))
        return answer, stopper.hit

    return work


def _chunk(model_id: str, completion_id: str, delta: dict, finish: str | None = None, **extra) -> str:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n"

async def _stream(job: Job, model_id: str, completion_id: str, include_usage: bool):
    """The server-sent events of a streamed chat completion (OpenAI's chunk objects, then ``[DONE]``)."""
    try:
        yield _chunk(model_id, completion_id, {"role": "assistant", "content": ""})
        while True:
            kind, value = await job.events.get()
            if kind == "thinking":
                yield _chunk(model_id, completion_id, {"reasoning_content": value})
            elif kind == "answer":
                yield _chunk(model_id, completion_id, {"content": value})
            elif kind == "error":
                yield f"data: {json.dumps({'error': _error_body(value)})}\n\n"
                break
            elif kind == "done":
                answer, stopped = value
                yield _chunk(model_id, completion_id, {}, _finish(answer, stopped), sources=_sources(answer),
                             dca=_extra(answer))
                if include_usage:
                    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model_id, "choices": [], "usage": _usage(answer)}
                    yield f"data: {json.dumps(body)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away mid-stream: stop generating (a no-op once the job is done)


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self):
        super().__init__(413)


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413, by its Content-Length before anything is read, or while
    it is read (a chunked body); FastAPI re-raises an HTTPException met while reading, so the app's handler answers."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            message = f"the request body is over the server's limit of {self.limit} bytes"
            await APIError(413, message, code="request_too_large").response()(scope, receive, send)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        await self.app(scope, limited, send)


LOOPBACK_HOSTS = {b"localhost", b"127.0.0.1", b"[::1]", b"::1"}


class _LoopbackHost:
    """ASGI middleware of a server without a key: the Host header must name loopback (with any port)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").lower()
            name = host.rpartition(b":")[0] if host.rpartition(b":")[2].isdigit() else host
            if name not in LOOPBACK_HOSTS:
                response = APIError(403, f"the Host {host.decode('latin-1')!r} is not this machine's loopback; a "
                                         "server without an API key answers only requests to localhost",
                                    type="permission_error", code="host_not_allowed").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _KeyCheck:
    """ASGI middleware: every ``/v1/`` request needs ``Authorization: Bearer KEY`` (compared in constant time),
    checked before the body is read."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                response = APIError(401, "a valid API key is required (Authorization: Bearer KEY)",
                                    type="authentication_error", code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _finish(answer, stopped: bool) -> str:
    return "length" if answer.truncated and not stopped else "stop"


def _extra(answer) -> dict:
    """dca's own figures of an answer: the strategy, the vote, the final text with citation markers."""
    extra = {"strategy": answer.strategy, "text": answer.text, "cancelled": answer.cancelled,
             "first_token_s": round(answer.stats.first_token_s, 3), "total_s": round(answer.stats.total_s, 3),
             "tokens_per_s": round(answer.stats.tokens_per_s, 2)}
    if answer.votes:
        extra["votes"] = [{"answer": v.answer, "count": v.count} for v in answer.votes]
    if answer.tool_calls:
        extra["tool_calls"] = [str(c) for c in answer.tool_calls]
    return extra


def _error_body(exc: BaseException) -> dict:
    if isinstance(exc, DcaError):
        return {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}
    return {"message": f"internal error: {type(exc).__name__}: {exc}", "type": "server_error", "param": None,
            "code": None}


async def _result(job: Job, request: Request, *, on_event=None, poll_s: float = 0.25):
    """Wait for ``job``'s result, passing its text events to ``on_event``; a client that disconnects cancels it.

    Raises:
        APIError: the job failed (400 for dca's typed errors, 500 otherwise).
    """
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), poll_s)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    raise APIError(499, "the client closed the request") from None
                continue
            if kind == "done":
                return value
            if kind == "error":
                body = _error_body(value)
                raise APIError(400 if isinstance(value, DcaError) else 500, body["message"], type=body["type"])
            if on_event is not None:
                on_event(kind, value)
    finally:
        job.cancel()
