"""The FastAPI app: OpenAI Chat Completions, models, health, and (``web=True``) the browser chat page.

    app = create_app(ServedModel.load("ckpt/"), ServeSettings(api_key="secret"), web=True)
    uvicorn.run(app, host="127.0.0.1", port=8000)            # what `mllm serve` / `mllm web` do

Routes: ``POST /v1/chat/completions`` (``stream: true`` answers as server-sent events: OpenAI chunks, then
``data: [DONE]``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (never needs the key), and
with ``web`` the page at ``/``. Every failure is an OpenAI error object with its status: 4xx for what the
request got wrong, 503 when the queue is full, 504 when a request runs past its timeout, 500 for a failure
of the server's own (logged; the server goes on). A client that disconnects cancels its generation.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from importlib import resources
from typing import AsyncIterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol
from .adapter import ServedModel
from .prepare import prepare
from .protocol import APIError
from .scheduler import Job, QueueFull, Scheduler
from .settings import ServeSettings

log = logging.getLogger("mllm.app.serve")


def create_app(model: ServedModel, settings: Optional[ServeSettings] = None, web: bool = False) -> FastAPI:
    settings = settings or ServeSettings()
    scheduler = Scheduler(model, max_batch_size=settings.max_batch_size, batch_wait_s=settings.batch_wait_ms / 1000,
                          max_queue=settings.max_queue)
    limits = settings.limits(model)
    created = int(time.time())

    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="mllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.scheduler, app.state.settings = model, scheduler, settings

    # ---- errors: always the OpenAI shape ----------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(APIError(400, str(e.errors()[:1])).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given or not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    # ---- routes -------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.id, "waiting": scheduler.waiting, "busy": scheduler.busy,
                "auth": settings.api_key is not None,
                "batch_sizes": {str(k): v for k, v in sorted(scheduler.batch_sizes.items())},  # size -> batches
                "finished": dict(scheduler.finished)}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": [protocol.model_card(model.id, created)]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(check_key)])
    async def model_info(model_id: str):
        if model_id != model.id:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return protocol.model_card(model.id, created)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request):
        raw = await _read_body(request, settings.max_request_bytes)
        req = protocol.parse_request(raw)
        gen = await asyncio.to_thread(prepare, req, model, limits)
        job = Job(gen, asyncio.get_running_loop(), stream=bool(req.stream))
        try:
            scheduler.submit(job)
        except QueueFull as e:
            raise APIError(503, f"the server is busy ({e}); retry later", type="server_error",
                           code="queue_full") from None
        cid, now = protocol.new_id(), int(time.time())
        deadline = time.monotonic() + settings.request_timeout_s
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, watcher, cid, model.id, now, deadline, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                kind, value = await _next_event(job, deadline)
                if kind == "done":
                    break
                if kind == "error":
                    raise _job_error(job, value)
        finally:
            watcher.cancel()
            job.cancel()  # no-op when finished; stops the row when we leave early (timeout, error)
        return protocol.completion(cid, model.id, now, value.text, _finish(value), value.prompt_tokens,
                                   value.completion_tokens)

    if web:
        page = resources.files("mllm.app.serve").joinpath("static/index.html").read_text(encoding="utf-8")

        @app.get("/", response_class=HTMLResponse)
        async def index():
            # the page holds no data and reaches the model only through the API, which checks the key
            return HTMLResponse(page.replace("{{MODEL_ID}}", model.id))

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes, over this server's limit of {limit}",
                       code="request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(413, f"the request body is over this server's limit of {limit} bytes",
                           code="request_too_large")
        chunks.append(part)
    return b"".join(chunks)


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Cancel the job when the client goes away (the body has been read: the next message is the end)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


async def _next_event(job: Job, deadline: float):
    remaining = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(job.events.get(), timeout=max(remaining, 0.0))
    except asyncio.TimeoutError:
        job.cancel()
        raise APIError(504, "the request ran past this server's timeout and was cancelled", type="timeout_error",
                       code="timeout") from None


def _job_error(job: Job, message: str) -> APIError:
    if job.cancelled:  # the request's own cancellation (it left); nobody reads this answer
        return APIError(499, message, type="cancelled", code="cancelled")
    return APIError(500, message, type="server_error", code="generation_failed")


def _finish(result) -> str:
    return "length" if result.finish_reason == "cancelled" else result.finish_reason


async def _stream(job: Job, watcher: asyncio.Task, cid: str, model_id: str, created: int, deadline: float,
                  include_usage: bool) -> AsyncIterator[bytes]:
    try:
        yield protocol.sse(protocol.chunk(cid, model_id, created, {"role": "assistant", "content": ""}))
        while True:
            try:
                kind, value = await _next_event(job, deadline)
            except APIError as e:
                yield protocol.sse(e.body())
                break
            if kind == "delta":
                yield protocol.sse(protocol.chunk(cid, model_id, created, {"content": value}))
            elif kind == "error":
                yield protocol.sse(_job_error(job, value).body())
                break
            else:
                yield protocol.sse(protocol.chunk(cid, model_id, created, {}, finish_reason=_finish(value)))
                if include_usage:
                    yield protocol.sse(protocol.chunk(cid, model_id, created, {}, with_choice=False,
                                                      usage_=protocol.usage(value.prompt_tokens,
                                                                            value.completion_tokens)))
                break
        yield protocol.sse("[DONE]")
    finally:  # also on disconnect: the response task is cancelled and lands here
        watcher.cancel()
        job.cancel()
