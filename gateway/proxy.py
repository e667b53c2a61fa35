"""The gateway's side of the engines: a pooled async HTTP client per event loop, the choice of a replica
(least outstanding requests, failing over on a refused connection, a loading engine or a full queue),
and reading the engine's server-sent events one at a time.

Plain asyncio and httpx; the only Django it touches is the settings and the one service that marks a
replica failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
from django.conf import settings

from gateway import errors
from gateway.counters import Counters
from gateway.database import in_thread
from gateway.engine_secrets import SecretFileError, read_engine_secret
from gateway.selectors import ReplicaTarget
from gateway.services.deployments import replica_mark_failing

log = logging.getLogger(__name__)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = weakref.WeakKeyDictionary()
# The model id each deployment's engine answers to, when its row does not know it yet.
_engine_names: dict[int, str] = {}


def engine_client() -> httpx2.AsyncClient:
    """One client (one connection pool) per event loop: a uvicorn worker has one loop."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        connect = float(settings.GATEWAY_CONNECT_TIMEOUT_SECONDS)
        client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(
                connect=connect, read=float(settings.GATEWAY_ENGINE_TIMEOUT_SECONDS), write=30.0, pool=connect
            ),
            limits=httpx2.Limits(max_connections=2048, max_keepalive_connections=256, keepalive_expiry=30.0),
            trust_env=False,  # engines are on the internal network: never through an HTTP proxy
        )
        _clients[loop] = client
    return client


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def engine_model_name(target: ReplicaTarget, secret: str, fallback: str) -> str:
    """The id the engine serves under: the row's (from the health check), else asked once."""
    if target.engine_model:
        return target.engine_model
    known = _engine_names.get(target.deployment_id)
    if known:
        return known
    try:
        response = await engine_client().get(f"{target.url}/v1/models", headers=_auth(secret))
        name = str(response.json()["data"][0]["id"])
    except Exception:  # noqa: BLE001 - the completion itself will say what is wrong
        return fallback
    _engine_names[target.deployment_id] = name
    return name


@dataclass
class Opened:
    target: ReplicaTarget
    response: httpx2.Response  # headers read, body not yet


async def open_completion(
    *,
    targets: list[ReplicaTarget],
    body: dict[str, Any],
    fallback_model: str,
    counters: Counters,
    request_id: str,
    on_replica: Callable[[ReplicaTarget | None], None],
) -> Opened:
    """POST /v1/completions to the replica with the fewest outstanding requests, and return as soon as
    its response headers arrive. A replica that refuses the connection is marked failing and the next
    one tried; one that is loading (503) or whose queue is full (429) is passed over while another is
    left. `on_replica` learns which replica holds the request's lease (None: none does)."""
    remaining = list(targets)
    random.shuffle(remaining)  # ties in the least-outstanding choice go to a random replica
    client = engine_client()
    last: errors.GatewayError | None = None
    engine_refusal: httpx2.Response | None = None
    while remaining:
        chosen = await counters.pick_replica(
            replica_ids=[target.replica_id for target in remaining], request_id=request_id, now=time.time()
        )
        target = next(t for t in remaining if t.replica_id == chosen)
        remaining.remove(target)
        on_replica(target)

        async def give_up(error: errors.GatewayError, target: ReplicaTarget = target) -> None:
            nonlocal last
            on_replica(None)
            await counters.release_replica(replica_id=target.replica_id, request_id=request_id)
            last = error

        try:
            secret = read_engine_secret(target.secret_file)
        except SecretFileError as error:
            log.error("deployment %s: %s", target.deployment_id, error)
            await give_up(errors.unavailable("The engine is misconfigured; the operators are told."))
            continue
        payload = {**body, "model": await engine_model_name(target, secret, fallback_model)}
        request = client.build_request("POST", f"{target.url}/v1/completions", json=payload, headers=_auth(secret))
        try:
            response = await client.send(request, stream=True)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as error:
            log.warning("replica %s refused the connection: %s", target.url, error)
            await in_thread(replica_mark_failing)(
                replica_id=target.replica_id, error=f"connection failed: {type(error).__name__}: {error}"
            )
            await give_up(errors.unavailable("No engine could be reached; try again shortly."))
            continue
        except httpx2.TimeoutException:
            await give_up(
                errors.GatewayError(504, "The engine did not answer in time.", type="server_error", code="timeout")
            )
            break  # it may have worked on the request: never send it twice
        except httpx2.HTTPError as error:
            log.warning("replica %s failed to answer: %r", target.url, error)
            await give_up(
                errors.GatewayError(
                    502, f"The engine failed: {type(error).__name__}.", type="server_error", code="bad_gateway"
                )
            )
            break
        if response.status_code in (429, 503) and remaining:
            await response.aclose()
            engine_refusal = response
            await give_up(errors.unavailable("The engine is busy."))
            continue
        return Opened(target=target, response=response)
    if engine_refusal is not None and engine_refusal.status_code == 429:
        retry = engine_refusal.headers.get("retry-after", "1")
        raise errors.GatewayError(
            429,
            "Every engine of this model has a full queue; retry shortly.",
            type="rate_limit_error",
            code="engine_queue_full",
            retry_after=int(retry) if retry.isdigit() else 1,
        )
    assert last is not None
    raise last


async def sse_events(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The engine's events (without the blank line that ends each), as each one completes: nothing is
    held back beyond the end of the event being read."""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[:end], buffer[end + 2 :]
            if event.strip():
                yield event
    if buffer.strip():
        yield buffer


def event_data(event: bytes) -> bytes:
    """The `data:` payload of one event (several data lines are joined with newlines)."""
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


async def count_prompt_tokens(target: ReplicaTarget, prompt: Any) -> int | None:
    """The prompt's token count from the engine's /tokenize (for a request whose usage the engine never
    reported); None when it cannot be had."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list):
        prompts = prompt
    else:
        return None
    total = 0
    try:
        secret = read_engine_secret(target.secret_file)
        for item in prompts:
            if isinstance(item, list):
                total += len(item)
                continue
            response = await engine_client().post(
                f"{target.url}/tokenize", json={"prompt": item}, headers=_auth(secret), timeout=5.0
            )
            total += int(response.json()["count"])
    except Exception as error:  # noqa: BLE001 - an estimate; the row says it is not exact
        log.info("could not count the prompt's tokens at %s: %s", target.url, error)
        return None
    return total


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
