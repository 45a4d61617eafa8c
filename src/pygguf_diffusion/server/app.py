"""The Starlette application: routes, the optional API key, OpenAI-shaped responses and errors.

Streams are server-sent events: a chunk per committed canvas, then `[DONE]`. With
`"stream_options": {"include_drafts": true}` each denoising step also sends an `event: draft` message
(the canvas text so far): clients that do not ask never see one, and SSE clients that do not know the
event name skip it."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..model import Model
from ..types import CommitEvent, DraftEvent, GenerationResult
from .metrics import Metrics
from .requests import BadRequest, Request, parse
from .runner import END, Job, Runner

logger = logging.getLogger(__name__)

_POLL_S = 0.1   # how often a non-streaming request checks that its client is still there


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def create_app(model: Model, api_key: str | None = None, defaults: dict[str, Any] | None = None) -> Starlette:
    """The server's application for a loaded Model (one generation at a time, the rest queued). defaults:
    generation keywords for requests that do not set them (dgemma-server's flags)."""
    metrics = Metrics()
    runner = Runner(model, on_result=metrics.generation)
    created = int(time.time())
    model_id = Path(model.path).name.removesuffix(".gguf") or model.name
    page_file = Path(__file__).parent / "page.html"
    page = page_file.read_text(encoding="utf-8") if page_file.exists() else None

    async def health(_: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(_: HTTPRequest) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": created, "owned_by": "pygguf_diffusion",
             "n_ctx": model.n_ctx, "canvas_length": model.canvas_length}]})

    async def prometheus(_: HTTPRequest) -> Response:
        return PlainTextResponse(metrics.render(runner.queue_length, runner.cancelled, model._busy),  # noqa: SLF001
                                 media_type="text/plain; version=0.0.4")

    async def index(_: HTTPRequest) -> Response:
        return error(404, "no web page in this install") if page is None else HTMLResponse(page)

    async def chat(http: HTTPRequest) -> Response:
        return await _generate(http, "chat")

    async def completions(http: HTTPRequest) -> Response:
        return await _generate(http, "completion")

    async def _generate(http: HTTPRequest, kind: str) -> Response:
        try:
            body = json.loads(await http.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"the request body is not valid JSON: {e}")
        try:
            req = await asyncio.to_thread(parse, body, kind, model, defaults or {}, model_id)   # tokenizing a long chat takes a while
        except BadRequest as e:
            return error(400, str(e), param=e.param)
        job = Job(req, asyncio.get_running_loop())
        runner.submit(job)
        if req.stream:
            first = await _next_event(job, http)   # an error before the first event is still a status code
            if isinstance(first, Response):
                return first
            return StreamingResponse(_sse(job, req, first, http), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(job, req, http)

    async def _next_event(job: Job, http: HTTPRequest) -> Any:
        """The job's next event, or an error Response; cancels the job if the client leaves meanwhile."""
        while True:
            try:
                ev = await asyncio.wait_for(job.events.get(), _POLL_S)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    job.cancelled.set()
                    return error(499, "the client closed the connection", code="client_closed")
                continue
            if isinstance(ev, ValueError):   # BadRequest included
                return error(400, str(ev), param=getattr(ev, "param", None))
            if isinstance(ev, Exception):
                return error(500, f"the generation failed: {type(ev).__name__}: {ev}", kind="server_error")
            return ev

    async def _whole(job: Job, req: Request, http: HTTPRequest) -> Response:
        result = None
        while True:
            ev = await _next_event(job, http)
            if isinstance(ev, Response):
                return ev
            if ev is END:
                break
            if isinstance(ev, GenerationResult):
                result = ev
        if result is None:
            return error(500, "the generation ended without a result", kind="server_error")
        cid, usage = _id(req.kind), result.usage()
        if req.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                      "finish_reason": _finish(result), "logprobs": None, **_holes(result)}
            return JSONResponse({"id": cid, "object": "chat.completion", "created": int(time.time()),
                                 "model": req.echo_model, "choices": [choice], "usage": usage})
        choice = {"index": 0, "text": _text(result, req), "finish_reason": _finish(result), "logprobs": None,
                  **_holes(result)}
        return JSONResponse({"id": cid, "object": "text_completion", "created": int(time.time()),
                             "model": req.echo_model, "choices": [choice], "usage": usage})

    async def _sse(job: Job, req: Request, first: Any, http: HTTPRequest) -> AsyncIterator[str]:
        cid, now, chat_kind = _id(req.kind), int(time.time()), req.kind == "chat"
        obj = "chat.completion.chunk" if chat_kind else "text_completion"

        def chunk(content: str | None = None, finish: str | None = None, role: bool = False,
                  extra: dict | None = None) -> str:
            if chat_kind:
                delta = ({"role": "assistant", "content": ""} if role else
                         {"content": content} if content is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": content or "", "finish_reason": finish, "logprobs": None}
            choice.update(extra or {})
            return _data({"id": cid, "object": obj, "created": now, "model": req.echo_model, "choices": [choice]})

        try:
            if chat_kind:
                yield chunk(role=True)
            ev = first
            while ev is not END:
                if isinstance(ev, Response):   # an error after the stream started: an error event ends it
                    yield _data(json.loads(ev.body))
                    break
                if isinstance(ev, DraftEvent):
                    yield "event: draft\n" + _data({"canvas_index": ev.canvas_index, "step": ev.step,
                                                    "steps_remaining": ev.steps_remaining, "text": ev.text})
                elif isinstance(ev, CommitEvent) and ev.text and not req.infill:
                    yield chunk(ev.text)
                elif isinstance(ev, GenerationResult):
                    if req.infill:   # the hole is known only once the answer is
                        yield chunk(_text(ev, req))
                    yield chunk(finish=_finish(ev), extra=_holes(ev))
                    if req.include_usage:
                        yield _data({"id": cid, "object": obj, "created": now, "model": req.echo_model,
                                     "choices": [], "usage": ev.usage()})
                ev = await _next_event(job, http)
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()   # a client that went away mid-stream: stop at the next step

    routes = [Route("/", index), Route("/health", health), Route("/v1/models", models), Route("/metrics", prometheus),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(runner.close)

    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(_Guard, api_key=api_key, metrics=metrics)])
    app.state.runner, app.state.metrics, app.state.model, app.state.model_id = runner, metrics, model, model_id
    return app


class _Guard:
    """Pure ASGI middleware (it must not buffer streams or hide disconnects): the API key on every path but
    /health, compared in constant time; request counts by status; an exception becomes a 500 error object."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.expected is not None and path != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                self.metrics.request(path, 401)
                await error(401, "a valid API key is required: Authorization: Bearer <key>",
                            kind="authentication_error", code="invalid_api_key")(scope, receive, send)
                return
        status = {"code": 500, "sent": False}

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as e:  # noqa: BLE001 - the server stays up; the client gets an error object
            logger.exception("request failed")
            if not status["sent"]:
                await error(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")(scope, receive, send)
        self.metrics.request(path, status["code"])


def _id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _text(r: GenerationResult, req: Request) -> str:
    return (r.holes[0] if r.holes else "") if req.infill else r.text


def _holes(r: GenerationResult) -> dict[str, list[str]]:
    """With a template: the text written into each hole, as an extra field of the choice."""
    return {"holes": r.holes} if r.holes else {}


def _finish(r: GenerationResult) -> str:
    return "length" if r.finish_reason == "abort" else r.finish_reason
