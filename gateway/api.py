"""The OpenAI-compatible API at the portal: `POST /v1/completions`, `GET /v1/models[/<id>]`, and its
description at `GET /v1/openapi.json` (`gateway.openapi`).

    client = openai.OpenAI(base_url="https://portal.example/v1", api_key="orp_...")

Async views (the portal runs under ASGI): a request waiting on an engine, or a stream passing tokens
through, holds a coroutine, not a thread. Each request:

1. authenticates: an `orp_` API key (`Authorization: Bearer`), or the session of a signed-in browser
   (the playground) with its CSRF token;
2. is admitted (`selectors.completion_admission`, live rows): the model names a served release (its
   slug) or the caller's own served private checkpoint (`<release-slug>:<variant>`, a fine-tuning
   result), the caller may use the release now (`release_access_check`), and is under its
   tokens-per-day quota; then the counters: requests per minute and concurrent requests
   (`gateway.counters`);
3. goes to the replica with the fewest outstanding requests (`proxy.open_completion`);
4. is watched: every GATEWAY_RECHECK_SECONDS the caller's access is read again (a revoked grant or key
   ends a stream within seconds) and the request's leases renewed;
5. leaves one usage row, whatever happened, the client going away included.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx2
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed

from access.api.authentication import ApiKeyAuthentication
from access.models import User
from gateway import errors, proxy
from gateway.counters import Counters, get_counters, scope_of
from gateway.database import in_thread
from gateway.models import UsageStatus
from gateway.openapi import openapi_document
from gateway.selectors import (
    Admission,
    ReplicaTarget,
    ServedModel,
    access_recheck,
    completion_admission,
    user_models,
)
from gateway.services.usage import UsageDraft, usage_record

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"

# Finishing work (usage row, leases) of requests whose client went away runs as a task of its own; the
# set keeps those tasks referenced until they end.
_finishing: set[asyncio.Future[None]] = set()


# --- Who is calling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    user: User
    api_key_id: int | None  # None: the browser session (the playground)


def _authenticate_key(request: HttpRequest) -> Caller:
    try:
        result = ApiKeyAuthentication().authenticate(request)
    except AuthenticationFailed as failure:
        raise errors.unauthenticated(str(failure.detail)) from None
    if result is None:
        raise errors.unauthenticated("Use `Authorization: Bearer orp_…` with an API key from your account page.")
    user, key = result
    return Caller(user=user, api_key_id=key.pk)


def _csrf_refusal(request: HttpRequest) -> HttpResponseBase | None:
    return CsrfViewMiddleware(lambda _request: None).process_view(request, None, (), {})  # type: ignore[arg-type]


async def authenticate(request: HttpRequest) -> Caller:
    """An API key when the request carries an Authorization header, else the signed-in session, which
    must then also pass Django's CSRF check on a POST (a page elsewhere cannot spend the user's quota)."""
    if request.META.get("HTTP_AUTHORIZATION"):
        return await in_thread(_authenticate_key)(request)
    user = await request.auser()
    if not user.is_authenticated:
        raise errors.unauthenticated(
            "No API key: send `Authorization: Bearer orp_…` with a key from your account page (API keys)."
        )
    if request.method == "POST" and _csrf_refusal(request) is not None:
        raise errors.GatewayError(
            403,
            "Signed-in browser requests need the CSRF token (X-CSRFToken header); scripts use an API key.",
            type="permission_error",
            code="csrf_failed",
        )
    return Caller(user=user, api_key_id=None)


# --- The request body -------------------------------------------------------------------------


def parse_body(request: HttpRequest) -> dict[str, Any]:
    """The JSON object of a completion request. Only what the gateway itself needs is checked here
    (`model`, `stream`); every other field is the engine's to validate (a 400 naming the field)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.GATEWAY_MAX_BODY_BYTES:
        raise errors.GatewayError(
            413, f"The request body is over {settings.GATEWAY_MAX_BODY_BYTES} bytes.", type="invalid_request_error",
            code="body_too_large",
        )  # fmt: skip
    try:
        raw = request.body
    except RequestDataTooBig:
        raise errors.GatewayError(
            413, "The request body is too large.", type="invalid_request_error", code="body_too_large"
        ) from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    try:
        # JSON may escape a lone surrogate ("\ud800"): valid JSON, but no Unicode text; it could be
        # neither stored nor passed on to the engine.
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise errors.bad_request(
            "The request body holds a string that is not valid Unicode (an unpaired surrogate escape).",
            code="invalid_json",
        ) from None
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise errors.bad_request("`model` is required: the id of a model from GET /v1/models.", param="model")
    if "\x00" in model:
        # No id holds one, and PostgreSQL text cannot: refuse it before any lookup or usage row.
        raise errors.bad_request("`model` must not contain a NUL character.", param="model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise errors.bad_request("`stream` must be true or false.", param="stream")
    return body


# --- One completion ---------------------------------------------------------------------------


def _keep(task: asyncio.Future[None]) -> asyncio.Future[None]:
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    return task


class Cut(Exception):
    """The caller's access ended while the request ran."""

    def __init__(self, error: errors.GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Watch:
    """Runs `check` every `interval` seconds while the request waits for the engine."""

    def __init__(self, check: Callable[[], Awaitable[errors.GatewayError | None]], interval: float) -> None:
        self.check = check
        self.interval = interval
        self.due = time.monotonic() + interval

    async def until(self, future: asyncio.Future[Any]) -> None:
        """Return when `future` is done; raise Cut as soon as a check says access ended."""
        while True:
            done, _ = await asyncio.wait({future}, timeout=max(0.0, self.due - time.monotonic()))
            if time.monotonic() >= self.due:
                self.due = time.monotonic() + self.interval
                error = await self.check()
                if error is not None:
                    raise Cut(error)
            if done:
                return


class Completion:
    """One admitted request: it holds a concurrency lease (and a replica's, once one is chosen) from
    admission until `finish`, which frees both and writes the usage row exactly once."""

    def __init__(
        self, *, caller: Caller, body: dict[str, Any], admission: Admission, draft: UsageDraft, counters: Counters
    ) -> None:
        self.caller = caller
        self.body = body
        self.model: str = body["model"]
        self.admission = admission
        self.draft = draft
        self.counters = counters
        self.request_id = uuid.uuid4().hex
        self.scope = scope_of(user_id=caller.user.pk, release_id=admission.release.pk)
        self.started = time.monotonic()
        self.target: ReplicaTarget | None = None
        self.chunks = 0  # generated choice entries passed on (the estimate when no usage comes)
        self.usage_seen = False
        self.relay_ended = False
        self._finished = False
        self.watch = Watch(self.recheck, float(settings.GATEWAY_RECHECK_SECONDS))

    # The lease and the access check ------------------------------------------------------------

    async def recheck(self) -> errors.GatewayError | None:
        checkpoint = self.admission.checkpoint
        error = await in_thread(access_recheck)(
            user_id=self.caller.user.pk,
            api_key_id=self.caller.api_key_id,
            release_id=self.admission.release.pk,
            checkpoint_id=checkpoint.pk if checkpoint is not None else None,
        )
        if error is None:
            await self.counters.renew(
                scope=self.scope,
                replica_id=self.target.replica_id if self.target else None,
                request_id=self.request_id,
                now=time.time(),
            )
        return error

    def _on_replica(self, target: ReplicaTarget | None) -> None:
        self.target = target
        self.draft.replica_id = target.replica_id if target else None
        self.draft.deployment_id = target.deployment_id if target else None

    async def open(self) -> proxy.Opened:
        payload = dict(self.body)
        if payload.get("stream"):
            # Ask for usage always, so the row is exact; the caller gets the usage chunk only if it asked.
            options = payload.get("stream_options")
            if options is None or isinstance(options, dict):
                payload["stream_options"] = {**(options or {}), "include_usage": True}
        opening = asyncio.ensure_future(
            proxy.open_completion(
                targets=self.admission.targets,
                body=payload,
                fallback_model=self.model,
                counters=self.counters,
                request_id=self.request_id,
                on_replica=self._on_replica,
            )
        )
        try:
            await self.watch.until(opening)
        except BaseException:
            opening.cancel()
            raise
        return opening.result()

    # Outcomes ----------------------------------------------------------------------------------

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def refuse(self, error: errors.GatewayError, *, status: str) -> JsonResponse:
        self.draft.status = status
        self.draft.http_status = error.status
        self.draft.error_code = error.code
        return error.response()

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.draft.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.draft.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.usage_seen = True

    async def finish(self) -> None:
        """Free the leases and write the usage row; runs once, shielded from the request's cancellation."""
        if self._finished:
            return
        self._finished = True
        await asyncio.shield(_keep(asyncio.ensure_future(self._finish())))

    async def _finish(self) -> None:
        try:
            self.draft.latency_ms = self.elapsed_ms()
            if not self.usage_seen and self.target is not None and self.draft.status != UsageStatus.UNAVAILABLE:
                # The engine never reported usage (the client left, access was cut, the engine failed):
                # count what we can, and say it is a count.
                self.draft.usage_exact = False
                self.draft.completion_tokens = self.chunks
                prompt_tokens = await proxy.count_prompt_tokens(self.target, self.body.get("prompt"))
                self.draft.prompt_tokens = prompt_tokens or 0
        finally:
            await self.counters.release(
                scope=self.scope, replica_id=self.target.replica_id if self.target else None, request_id=self.request_id
            )
            await in_thread(usage_record)(self.draft)

    # Plain (non-streamed) ---------------------------------------------------------------------

    async def run(self) -> HttpResponseBase:
        try:
            opened = await self.open()
            reading = asyncio.ensure_future(opened.response.aread())
            try:
                await self.watch.until(reading)
            finally:
                if not reading.done():
                    reading.cancel()
                await opened.response.aclose()
            return self._plain_response(opened.response)
        except errors.GatewayError as error:
            return self.refuse(error, status=_status_of(error))
        except Cut as cut:
            return self.refuse(cut.error, status=UsageStatus.CUT)
        except httpx2.HTTPError as error:
            log.warning("engine %s failed reading a completion: %r", self.target.url if self.target else "-", error)
            failure = errors.GatewayError(
                502, f"The engine failed: {type(error).__name__}.", type="server_error", code="bad_gateway"
            )
            return self.refuse(failure, status=UsageStatus.ENGINE_ERROR)
        except asyncio.CancelledError:
            self.draft.status, self.draft.http_status = UsageStatus.CLIENT_CLOSED, 499
            raise
        finally:
            await self.finish()

    def _plain_response(self, response: httpx2.Response) -> JsonResponse:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200 or not isinstance(payload, dict):
            return self._engine_error(response, payload)
        self.take_usage(payload.get("usage"))
        payload["model"] = self.model
        return JsonResponse(payload, json_dumps_params={"ensure_ascii": False})

    def _engine_error(self, response: httpx2.Response, payload: Any) -> JsonResponse:
        """The engine's refusal, passed on in OpenAI's shape (its 400s name the bad field)."""
        status = response.status_code if response.status_code >= 400 else 502
        if not (isinstance(payload, dict) and isinstance(payload.get("error"), dict)):
            payload = errors.error_body(f"The engine answered {response.status_code}.", type="server_error")
        self.draft.status = UsageStatus.ENGINE_ERROR
        self.draft.http_status = status
        self.draft.error_code = str(payload["error"].get("code") or payload["error"].get("type") or "")
        out = JsonResponse(payload, status=status)
        if "retry-after" in response.headers:
            out["Retry-After"] = response.headers["retry-after"]
        return out

    # Streamed ---------------------------------------------------------------------------------

    async def start_stream(self) -> HttpResponseBase:
        """Open the engine's stream; its errors before the first byte are plain JSON errors."""
        try:
            opened = await self.open()
            if opened.response.status_code != 200:
                try:
                    await opened.response.aread()
                finally:
                    await opened.response.aclose()
                try:
                    payload = opened.response.json()
                except ValueError:
                    payload = None
                response = self._engine_error(opened.response, payload)
                await self.finish()
                return response
        except errors.GatewayError as error:
            response = self.refuse(error, status=_status_of(error))
            await self.finish()
            return response
        except Cut as cut:
            response = self.refuse(cut.error, status=UsageStatus.CUT)
            await self.finish()
            return response
        except asyncio.CancelledError:
            self.draft.status, self.draft.http_status = UsageStatus.CLIENT_CLOSED, 499
            await self.finish()
            raise
        streaming = StreamingHttpResponse(self.relay(opened), content_type="text/event-stream; charset=utf-8")
        streaming["Cache-Control"] = "no-cache"
        streaming["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        # Django closes the response when it is done with it, also when the client left before the body
        # was read to its end: the engine's stream is closed, the leases freed and the row written then.
        loop = asyncio.get_running_loop()
        streaming._resource_closers.append(  # type: ignore[attr-defined]
            lambda: loop.call_soon_threadsafe(lambda: _keep(asyncio.ensure_future(self.abandon(opened))))
        )
        return streaming

    async def abandon(self, opened: proxy.Opened) -> None:
        if not self.relay_ended and self.draft.status == UsageStatus.OK:
            self.draft.status, self.draft.http_status = UsageStatus.CLIENT_CLOSED, 499
        await opened.response.aclose()
        await self.finish()

    async def relay(self, opened: proxy.Opened) -> AsyncIterator[bytes]:
        """Pass the engine's events on one by one, as they come: nothing is buffered. The usage row is
        written before the last event goes out, so a client that reads [DONE] finds its row."""
        wants_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        events = proxy.sse_events(opened.response)
        pending: asyncio.Future[bytes | None] | None = None
        last: bytes | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(events, None))
                try:
                    await self.watch.until(pending)
                except Cut as cut:
                    self.draft.status, self.draft.error_code = UsageStatus.CUT, cut.error.code
                    last = b"data: " + proxy.dumps(cut.error.body()) + b"\n\n"
                    break
                event = pending.result()
                pending = None
                if event is None:
                    # The engine closed the stream without [DONE]: tell the client it is incomplete.
                    self.draft.status, self.draft.error_code = UsageStatus.ENGINE_ERROR, "stream_cut"
                    failure = errors.error_body(
                        "The engine ended the stream early.", type="server_error", code="stream_cut"
                    )
                    last = b"data: " + proxy.dumps(failure) + b"\n\n"
                    break
                out = self._relay_event(event, wants_usage)
                if out == DONE:
                    last = out
                    break
                if out is not None:
                    yield out
        except httpx2.HTTPError as error:
            self.draft.status, self.draft.error_code = UsageStatus.ENGINE_ERROR, "engine_failed"
            failure = errors.error_body(f"The engine failed mid-stream: {type(error).__name__}.", type="server_error")
            last = b"data: " + proxy.dumps(failure) + b"\n\n"
        finally:
            if last is None and self.draft.status == UsageStatus.OK:
                # Cancelled (the client disconnected) or closed at a yield.
                self.draft.status, self.draft.http_status = UsageStatus.CLIENT_CLOSED, 499
            if pending is not None and not pending.done():
                pending.cancel()
            await self._end(opened)
        if last is not None:
            yield last

    async def _end(self, opened: proxy.Opened) -> None:
        self.relay_ended = True
        await opened.response.aclose()  # the engine sees the disconnect and frees the sequences
        await self.finish()

    def _relay_event(self, event: bytes, wants_usage: bool) -> bytes | None:
        data = proxy.event_data(event)
        if data == b"[DONE]":
            return DONE
        try:
            payload = json.loads(data)
        except ValueError:
            return event + b"\n\n"
        if not isinstance(payload, dict):
            return event + b"\n\n"
        if isinstance(payload.get("error"), dict):
            self.draft.status = UsageStatus.ENGINE_ERROR
            self.draft.error_code = str(payload["error"].get("code") or payload["error"].get("type") or "")
            return b"data: " + proxy.dumps(payload) + b"\n\n"
        choices = payload.get("choices") or []
        if not choices and payload.get("usage"):
            self.take_usage(payload["usage"])
            if not wants_usage:
                return None
        elif choices:
            if self.draft.first_token_ms is None:
                self.draft.first_token_ms = self.elapsed_ms()
            self.chunks += len(choices)
            if not wants_usage:
                payload.pop("usage", None)
        payload["model"] = self.model
        return b"data: " + proxy.dumps(payload) + b"\n\n"


def _status_of(error: errors.GatewayError) -> str:
    if error.status in (503,):
        return UsageStatus.UNAVAILABLE
    if error.status in (502, 504) or error.code == "engine_queue_full":
        return UsageStatus.ENGINE_ERROR
    return UsageStatus.REFUSED


# --- Views ------------------------------------------------------------------------------------


def _method_not_allowed(allowed: str) -> JsonResponse:
    response = errors.GatewayError(
        405, f"Use {allowed}.", type="invalid_request_error", code="method_not_allowed"
    ).response()
    response["Allow"] = allowed
    return response


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed("POST")
    created_at = timezone.now()
    try:
        caller = await authenticate(request)
    except errors.GatewayError as error:
        return error.response()
    draft = UsageDraft(created_at=created_at, user_id=caller.user.pk, api_key_id=caller.api_key_id, model="")
    try:
        body = parse_body(request)
    except errors.GatewayError as error:
        await _record_refusal(draft, error)
        return error.response()
    draft.model = body["model"]
    draft.stream = bool(body.get("stream"))
    try:
        admission = await in_thread(_admit)(caller.user, body["model"], created_at, draft)
    except errors.GatewayError as error:
        await _record_refusal(draft, error)
        return error.response()
    counters = get_counters()
    completion = Completion(caller=caller, body=body, admission=admission, draft=draft, counters=counters)
    refusal = await counters.admit(
        scope=completion.scope,
        request_id=completion.request_id,
        requests_per_minute=admission.limits.requests_per_minute,
        max_concurrent=admission.limits.max_concurrent,
        now=time.time(),
    )
    if refusal is not None:
        limited = _counter_error(refusal.limit, refusal.retry_after, admission)
        await _record_refusal(draft, limited)
        return limited.response()
    if draft.stream:
        return await completion.start_stream()
    return await completion.run()


def _admit(user: User, model: str, now: datetime, draft: UsageDraft) -> Admission:
    try:
        admission = completion_admission(user=user, model=model, now=now)
    except errors.GatewayError as error:
        draft.release_id = error.release_id
        raise
    draft.release_id = admission.release.pk
    return admission


def _counter_error(limit: str, retry_after: int, admission: Admission) -> errors.GatewayError:
    slug = admission.release.slug
    if limit == "requests_per_minute":
        message = (
            f"Rate limit reached for {slug}: {admission.limits.requests_per_minute} requests per minute. "
            f"Retry in {retry_after} s."
        )
    else:
        message = (
            f"Concurrency limit reached for {slug}: at most {admission.limits.max_concurrent} requests at once. "
            "Retry when one of yours finishes."
        )
    return errors.quota_exceeded(limit, message, retry_after=retry_after)


async def _record_refusal(draft: UsageDraft, error: errors.GatewayError) -> None:
    draft.status = _status_of(error)
    draft.http_status = error.status
    draft.error_code = error.code
    await in_thread(usage_record)(draft)


def _model_entry(model: ServedModel) -> dict[str, Any]:
    release = model.release
    if model.checkpoint is not None:
        # The caller's own fine-tuning result; `parent` names the base model (vLLM's field for adapters).
        return {
            "id": model.id,
            "object": "model",
            "created": calendar.timegm(model.checkpoint.created_at.utctimetuple()),
            "owned_by": model.checkpoint.owner.email if model.checkpoint.owner else "",
            "parent": release.slug,
        }
    card = getattr(release, "model_card", None) if hasattr(release, "model_card") else None
    return {
        "id": model.id,
        "object": "model",
        "created": calendar.timegm(card.release_date.timetuple()) if card is not None else 0,
        "owned_by": release.family.organization,
    }


def _models(user: Any) -> list[dict[str, Any]]:
    return [_model_entry(model) for model in user_models(user=user)]


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponseBase:
    """The models the caller may use now: served releases whose access check passes, and the caller's
    own served private checkpoints of such releases."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        caller = await authenticate(request)
    except errors.GatewayError as error:
        return error.response()
    return JsonResponse({"object": "list", "data": await in_thread(_models)(caller.user)})


@csrf_exempt
async def model_detail(request: HttpRequest, model: str) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        caller = await authenticate(request)
    except errors.GatewayError as error:
        return error.response()
    for entry in await in_thread(_models)(caller.user):
        if entry["id"] == model:
            return JsonResponse(entry)
    return errors.model_not_found(model).response()


@csrf_exempt
async def openapi_schema(request: HttpRequest) -> HttpResponseBase:
    """`GET /v1/openapi.json`: the API's description (public: it holds nothing but the API's shape)."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    return JsonResponse(openapi_document(), json_dumps_params={"ensure_ascii": False})


@csrf_exempt
async def not_found(request: HttpRequest, rest: str) -> HttpResponseBase:
    return errors.GatewayError(
        404,
        f"No such endpoint: /v1/{rest}. The portal serves POST /v1/completions and GET /v1/models.",
        type="invalid_request_error",
        code="unknown_url",
    ).response()
