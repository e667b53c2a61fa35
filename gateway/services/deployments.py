"""Deployments: add, drain, remove, and the periodic health checks that keep each replica's status.

Health checks are a Celery beat task (`gateway.tasks.check_deployments`), not a `jobs` job: a check is
a few short HTTP requests whose only state is the replica row it overwrites; a run that dies loses
nothing the next run (seconds later) does not redo, and two overlapping runs both write a true
observation. There is nothing to claim, heartbeat or reap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import Release, User
from access.services.audit import RequestMeta, audit_record
from artifacts.models import Checkpoint
from gateway.engine_secrets import SecretFileError, read_engine_secret
from gateway.models import Deployment, Replica, ReplicaStatus
from gateway.selectors import can_manage_deployments, is_operator

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 5.0


# --- Input checks -----------------------------------------------------------------------------


def normalise_engine_url(url: str) -> str:
    """`http://host:port` (no trailing slash) or an InvalidInput naming what is wrong."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput(f"Engine URL {url!r}: use http://HOST:PORT (the engine's --host and --port).", field="urls")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(f"Engine URL {url!r}: no user, password, query or fragment.", field="urls")
    if parts.path not in {"", "/"}:
        raise InvalidInput(
            f"Engine URL {url!r}: give the engine's base URL without a path (the gateway adds /v1/completions).",
            field="urls",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidInput(f"Engine URL {url!r}: the port is not a number between 0 and 65535.", field="urls") from None
    return f"{parts.scheme}://{parts.netloc}"


def check_secret_file(path: str, *, restrict: bool) -> str:
    """The absolute path of a usable secret file. `restrict`: it must lie under GATEWAY_SECRETS_DIR
    (pages; the management command may name any file)."""
    if not path.strip():
        raise InvalidInput("Name the file holding the engine secret (the engine's --secret-file).", field="secret_file")
    resolved = Path(path.strip()).expanduser().resolve()
    if restrict:
        root = Path(settings.GATEWAY_SECRETS_DIR).resolve()
        if not resolved.is_relative_to(root):
            raise InvalidInput(
                f"Secret files named here must lie under {root} (GATEWAY_SECRETS_DIR); "
                "use `manage.py deployment_add` for a file elsewhere.",
                field="secret_file",
            )
    if not resolved.is_file():
        raise InvalidInput(f"Secret file {resolved} does not exist or is not a file.", field="secret_file")
    try:
        read_engine_secret(resolved)
    except SecretFileError as error:
        raise InvalidInput(str(error), field="secret_file") from None
    return str(resolved)


# --- Writes -----------------------------------------------------------------------------------


def deployment_add(
    *,
    release: Release,
    checkpoint: Checkpoint,
    urls: list[str],
    secret_file: str,
    actor: User | None,
    meta: RequestMeta,
    tp_size: int = 1,
    max_context: int | None = None,
    restrict_secret_dir: bool = True,
) -> Deployment:
    """Register an engine (one or more replicas of it) serving `checkpoint` of `release`.

    A public checkpoint is served as the release's model (its slug) to everyone the release allows; a
    private one (a fine-tuning result) as `<release-slug>:<variant>` to its owner only (`Deployment.model_id`,
    `gateway.selectors.completion_admission`). `actor` None is the management command (someone with a
    shell on the portal host)."""
    if actor is not None and not can_manage_deployments(actor, "add"):
        raise NotAllowed("Only superusers (or accounts given 'Can add deployment') can add engines.")
    if checkpoint.release_id != release.pk:
        raise InvalidInput(
            f"Checkpoint #{checkpoint.pk} ({checkpoint}) belongs to {checkpoint.release.slug}, not {release.slug}.",
            field="checkpoint",
        )
    if not checkpoint.is_servable:
        raise InvalidInput(
            f"Checkpoint #{checkpoint.pk} ({checkpoint}) is {checkpoint.state}: only a ready (verified) checkpoint "
            "can be served.",
            field="checkpoint",
        )
    if tp_size < 1 or release.n_heads % tp_size:
        raise InvalidInput(
            f"tp={tp_size} does not divide the {release.n_heads} attention heads of {release.slug}; "
            "use a divisor of the head count.",
            field="tp_size",
        )
    if max_context is not None and max_context < 1:
        raise InvalidInput("The maximum context must be at least 1 token (or empty: learned from the engine).")
    normalised = list(dict.fromkeys(normalise_engine_url(url) for url in urls if url.strip()))
    if not normalised:
        raise InvalidInput("Give at least one engine URL, e.g. http://127.0.0.1:9000.", field="urls")
    path = check_secret_file(secret_file, restrict=restrict_secret_dir)
    with transaction.atomic():
        taken = (
            Replica.objects.filter(url__in=normalised, deployment__removed_at__isnull=True)
            .select_related("deployment")
            .first()
        )
        if taken is not None:
            raise Conflict(f"{taken.url} already serves {taken.deployment}; remove that deployment first.")
        deployment = Deployment.objects.create(
            release=release,
            checkpoint=checkpoint,
            secret_file=path,
            tp_size=tp_size,
            max_context=max_context,
            created_by=actor,
        )
        Replica.objects.bulk_create([Replica(deployment=deployment, url=url) for url in normalised])
        audit_record(
            actor=actor,
            action="deployment.add",
            target=deployment,
            meta=meta,
            after={
                "release": release.slug,
                "checkpoint": checkpoint.pk,
                "model": deployment.model_id,
                "owner": checkpoint.owner_id,
                "urls": normalised,
                "secret_file": path,
                "tp_size": tp_size,
            },
        )
    return deployment


def deployment_set_draining(*, deployment: Deployment, draining: bool, actor: User, meta: RequestMeta) -> Deployment:
    """A draining deployment takes no new requests; those running finish. Undraining puts it back."""
    if not is_operator(actor) and not can_manage_deployments(actor, "change"):
        raise NotAllowed("Only operators can drain deployments.")
    if deployment.is_removed:
        raise Conflict(f"{deployment} was removed.")
    if Deployment.objects.filter(pk=deployment.pk).exclude(draining=draining).update(draining=draining):
        audit_record(
            actor=actor,
            action="deployment.drain" if draining else "deployment.undrain",
            target=deployment,
            meta=meta,
            before={"draining": not draining},
            after={"draining": draining},
        )
    deployment.refresh_from_db()
    return deployment


def deployment_remove(*, deployment: Deployment, actor: User | None, meta: RequestMeta) -> Deployment:
    """Stop routing to it for good. The row stays (usage rows name it); its URLs may serve a new one."""
    if actor is not None and not can_manage_deployments(actor, "delete"):
        raise NotAllowed("Only superusers (or accounts given 'Can delete deployment') can remove engines.")
    now = timezone.now()
    if not Deployment.objects.filter(pk=deployment.pk, removed_at__isnull=True).update(removed_at=now, draining=True):
        raise Conflict(f"{deployment} was already removed.")
    audit_record(actor=actor, action="deployment.remove", target=deployment, meta=meta)
    deployment.refresh_from_db()
    return deployment


def replica_mark_failing(*, replica_id: int, error: str) -> None:
    """The proxy could not reach the replica: skip it until a health check sees it healthy again."""
    Replica.objects.filter(pk=replica_id).update(
        status=ReplicaStatus.FAILING,
        last_error=error[:2000],
        consecutive_failures=F("consecutive_failures") + 1,
        checked_at=timezone.now(),
    )


# --- Health checks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    status: str
    error: str = ""
    engine_model: str = ""
    max_context: int | None = None


def replica_probe(url: str, *, secret_file: str, client: httpx2.Client) -> Observation:
    """GET /health (no secret needed); when healthy, GET /v1/models for the served name and context."""
    try:
        health = client.get(f"{url}/health")
    except httpx2.HTTPError as error:
        return Observation(ReplicaStatus.FAILING, f"GET {url}/health: {type(error).__name__}: {error}")
    if health.status_code == 503:
        detail = _json(health).get("error") or _json(health).get("status") or "loading"
        status = ReplicaStatus.FAILING if _json(health).get("status") == "failed" else ReplicaStatus.LOADING
        return Observation(status, f"/health answered 503: {detail}")
    if health.status_code != 200:
        return Observation(ReplicaStatus.FAILING, f"/health answered {health.status_code}")
    try:
        secret = read_engine_secret(secret_file)
    except SecretFileError as error:
        return Observation(ReplicaStatus.FAILING, str(error))
    try:
        models = client.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    except httpx2.HTTPError as error:
        return Observation(ReplicaStatus.FAILING, f"GET {url}/v1/models: {type(error).__name__}: {error}")
    if models.status_code == 401:
        return Observation(ReplicaStatus.FAILING, "The engine refused the secret (401): the secret files differ.")
    if models.status_code != 200:
        return Observation(ReplicaStatus.FAILING, f"/v1/models answered {models.status_code}")
    data = _json(models).get("data") or [{}]
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    max_len = first.get("max_model_len")
    return Observation(
        ReplicaStatus.HEALTHY,
        engine_model=str(first.get("id") or ""),
        max_context=max_len if isinstance(max_len, int) and max_len > 0 else None,
    )


def _json(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def replica_record(replica: Replica, observation: Observation, *, now: datetime) -> None:
    healthy = observation.status == ReplicaStatus.HEALTHY
    Replica.objects.filter(pk=replica.pk).update(
        status=observation.status,
        checked_at=now,
        last_error=observation.error[:2000],
        **(
            {"healthy_at": now, "consecutive_failures": 0}
            if healthy
            else {"consecutive_failures": F("consecutive_failures") + 1}
        ),
    )
    if healthy:
        updates: dict[str, Any] = {}
        if observation.engine_model and observation.engine_model != replica.deployment.engine_model:
            updates["engine_model"] = observation.engine_model
        if observation.max_context and observation.max_context != replica.deployment.max_context:
            updates["max_context"] = observation.max_context
        if updates:
            Deployment.objects.filter(pk=replica.deployment_id).update(**updates)


def deployments_check_health(*, now: datetime | None = None, client: httpx2.Client | None = None) -> dict[str, int]:
    """Probe every replica of every deployment not removed; returns how many are in each status."""
    now = now or timezone.now()
    replicas = Replica.objects.filter(deployment__removed_at__isnull=True).select_related("deployment")
    counts: dict[str, int] = {}
    own = client is None
    client = client or httpx2.Client(timeout=HEALTH_TIMEOUT_SECONDS, trust_env=False)
    try:
        for replica in replicas.order_by("pk"):
            observation = replica_probe(replica.url, secret_file=replica.deployment.secret_file, client=client)
            replica_record(replica, observation, now=now)
            if observation.status != ReplicaStatus.HEALTHY and replica.status == ReplicaStatus.HEALTHY:
                log.warning("replica %s of %s is %s: %s", replica.url, replica.deployment, observation.status,
                            observation.error)  # fmt: skip
            counts[observation.status] = counts.get(observation.status, 0) + 1
    finally:
        if own:
            client.close()
    return counts
