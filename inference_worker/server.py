"""The HTTP face of the engine (FastAPI on uvicorn): OpenAI's completions and models routes,
/tokenize, /health and /metrics. Every route but /health needs ``Authorization: Bearer <secret>``."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_worker import completions
from inference_worker.async_engine import AsyncEngine, QueueFull
from inference_worker.metrics import Metrics
from inference_worker.protocol import APIError, CompletionRequest, TokenizeRequest, error_body
from inference_worker.tokenizer import Tokenizer


@dataclass
class ServerState:
    model_name: str
    tokenizer: Tokenizer
    vocab_size: int
    max_context: int
    metrics: Metrics
    secret: str | None  # None only with --insecure-no-secret
    engine: AsyncEngine | None = None  # None while the model loads
    load_error: str | None = None
    created: int = 0

    def ready_engine(self) -> AsyncEngine:
        if self.engine is None or self.engine.failed:
            reason = self.load_error or (self.engine.failed if self.engine else None) or "the model is loading"
            raise APIError(503, f"engine not ready: {reason}", type="service_unavailable", code="not_ready")
        return self.engine


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="openrelease inference engine", version="1", docs_url=None, redoc_url=None)
    state.created = state.created or int(time.time())

    async def authorized(request: Request) -> None:
        if state.secret is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.secret.encode()):
            raise APIError(
                401, "missing or wrong engine secret: send Authorization: Bearer <secret>", type="authentication_error",
                code="invalid_api_key",
            )  # fmt: skip

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_body(exc), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type=kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {exc}", type="server_error"), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.engine is not None and not state.engine.failed:
            return JSONResponse({"status": "ok", "model": state.model_name})
        if state.load_error or (state.engine and state.engine.failed):
            return JSONResponse({"status": "failed", "error": state.load_error or state.engine.failed}, 503)  # type: ignore[union-attr]
        return JSONResponse({"status": "loading", "model": state.model_name}, status_code=503)

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": state.model_name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "openrelease",
                    "max_model_len": state.max_context,
                }
            ],
        }

    @app.post("/tokenize", dependencies=[Depends(authorized)])
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        if body.model is not None and body.model != state.model_name:
            raise APIError(404, f"The model {body.model!r} does not exist", param="model", code="model_not_found")
        tokens = state.tokenizer.encode(body.prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": state.max_context}

    @app.post("/v1/completions", dependencies=[Depends(authorized)], response_model=None)
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        engine = state.ready_engine()
        prepared = completions.prepare(
            body,
            tokenizer=state.tokenizer,
            model_name=state.model_name,
            vocab_size=state.vocab_size,
            max_context=state.max_context,
            engine=engine.engine,
        )
        submissions = prepared.submissions()
        request_ids = [s.request_id for s in submissions]
        try:
            queue = engine.submit(submissions)
        except QueueFull as exc:
            state.metrics.requests_rejected.inc()
            raise APIError(
                429, str(exc), type="rate_limit_error", code="queue_full", headers={"Retry-After": str(exc.retry_after)}
            ) from None
        builder = completions.ResponseBuilder(prepared, state.tokenizer)
        if prepared.stream:
            return StreamingResponse(
                completions.stream(queue, builder, engine, request_ids),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        collecting = asyncio.ensure_future(completions.collect(queue, builder))
        disconnected = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collecting, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not collecting.done():
                collecting.cancel()
                engine.abort(request_ids)
            disconnected.cancel()
        if not collecting.done() or collecting.cancelled():
            return Response(status_code=499)  # nobody is listening any more
        return JSONResponse(collecting.result())

    return app


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = exc.errors()
    if not errors:
        return error_body("invalid request", type="invalid_request_error")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members add their type name to the location (prompt.str, prompt.list[int]...): keep the field.
    param = loc[0] if loc else None
    if first.get("type") == "json_invalid":
        return error_body(f"request body is not valid JSON: {first.get('msg')}", type="invalid_request_error")
    if param is None:
        return error_body(f"request body: {first.get('msg')}", type="invalid_request_error")
    message = f"{param}: {first.get('msg')}"
    if len(errors) > 1 and first.get("type") != "missing":
        others = sorted({str(e["loc"][1]) for e in errors[1:] if len(e.get("loc", ())) > 1} - {param})
        if others:
            message += f" (also invalid: {', '.join(others)})"
    return error_body(message, type="invalid_request_error", param=param)
