"""Redeeming a signed download link: check everything about one request, record it, say how to serve it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from access.models import User
from access.selectors import release_access_check
from access.services.audit import RequestMeta, audit_record
from artifacts.http import ByteRange, RangeNotSatisfiable, etag_matches, is_plain_range, parse_range
from artifacts.models import CheckpointFile, CheckpointState, DownloadEvent
from artifacts.signing import BadSignature, read_link
from artifacts.storage import get_storage


class DownloadRefused(Exception):
    """A link was not honoured. `code` is stable for clients; the message is for people."""

    def __init__(
        self, code: str, status: int, message: str, *, renewal_url: str | None = None, size: int | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.renewal_url, self.size = renewal_url, size


@dataclass
class Redemption:
    file: CheckpointFile
    etag: str
    byte_range: ByteRange | None
    not_modified: bool
    event: DownloadEvent
    via: str  # portal, x-accel, s3-redirect
    local_path: Path | None = None
    redirect_url: str | None = None


def download_redeem(
    *,
    token: str,
    request_user: Any,
    meta: RequestMeta,
    renewal_url_for: Callable[[int], str],
    range_header: str | None = None,
    if_none_match: str | None = None,
    if_range: str | None = None,
    head: bool = False,
    now: datetime | None = None,
) -> Redemption:
    """Check everything about one request for a signed link, record it, and say how to serve it."""
    now = now or timezone.now()
    try:
        claims = read_link(token)
    except BadSignature:
        raise DownloadRefused(
            "link_invalid",
            403,
            "This download link is not valid (it was changed or cut short); copy it again from your download page.",
        ) from None
    if request_user is not None and request_user.is_authenticated and request_user.pk != claims.user_id:
        raise DownloadRefused(
            "wrong_user",
            403,
            "This download link was issued to another account; get your own links from your download page.",
        )
    row = CheckpointFile.objects.select_related("checkpoint__release__license").filter(pk=claims.file_id).first()
    if row is None:
        raise DownloadRefused("not_found", 404, "This file is no longer offered.")
    checkpoint = row.checkpoint
    if claims.expires <= int(now.timestamp()):
        raise DownloadRefused(
            "link_expired",
            410,
            f"This download link expired on {claims.expires_at:%Y-%m-%d %H:%M} UTC. Get fresh links in one click "
            "at the renewal page.",
            renewal_url=renewal_url_for(checkpoint.pk),
        )
    user = User.objects.filter(pk=claims.user_id).first()
    if user is None:
        raise DownloadRefused("access_denied", 403, "The account this link was issued to no longer exists.")
    if checkpoint.state != CheckpointState.READY:
        raise DownloadRefused(
            "checkpoint_unavailable",
            403,
            f"{checkpoint.release.name} / {checkpoint.variant} is not available for download now.",
        )
    decision = release_access_check(user=user, release=checkpoint.release, now=now)
    if not decision.allowed:
        raise DownloadRefused(decision.reason, 403, decision.message)
    active_grant_id = decision.grant.pk if decision.grant is not None else 0
    if active_grant_id != claims.grant_id:
        raise DownloadRefused(
            "grant_changed",
            403,
            "This link belongs to a grant that is no longer your active one; get fresh links.",
            renewal_url=renewal_url_for(checkpoint.pk),
        )
    etag = f'"{row.sha256}"'
    not_modified = etag_matches(if_none_match, etag, weak=True)
    byte_range: ByteRange | None = None
    if not not_modified and (not if_range or etag_matches(if_range, etag, weak=False)):
        try:
            byte_range = parse_range(range_header, row.size)
        except RangeNotSatisfiable as error:
            raise DownloadRefused(
                "range_not_satisfiable", 416, f"{error} The file has {row.size} bytes.", size=row.size
            ) from None
    storage = get_storage()
    if storage.kind == "s3":
        via = "s3-redirect"
    elif settings.ARTIFACTS_X_ACCEL_PREFIX:
        via = "x-accel"
    else:
        via = "portal"
    # What this request will serve, reserved against the quota before it is served.
    if not_modified or head:
        length = 0
    elif byte_range is None:
        length = row.size
    elif via != "portal" and (if_range or not is_plain_range(range_header)):
        # nginx (X-Accel) and S3 read the client's own headers: they judge If-Range against their ETag,
        # not ours, and may read an unusual spelling of a range otherwise; either way they may answer
        # with the whole file.
        length = row.size
    else:
        length = byte_range.length
    grant = decision.grant
    with transaction.atomic():
        # One redemption of a file at a time, so parallel requests cannot overrun the quota together.
        CheckpointFile.objects.select_for_update().filter(pk=row.pk).first()
        if length and row.size:
            consumed = (
                DownloadEvent.objects.filter(user=user, file=row, grant=grant).aggregate(total=Sum("bytes_served"))[
                    "total"
                ]
                or 0
            )
            quota = settings.ARTIFACTS_DOWNLOAD_QUOTA
            # Reserve what this request will serve before serving it, so ranges plus whole files
            # never add up past the quota; download_settle gives back what an interrupted one did not send.
            left = max(quota * row.size - consumed, 0)
            if length > left:
                raise DownloadRefused(
                    "quota_exhausted",
                    429,
                    f"{row.path} was already downloaded {consumed / row.size:.1f} times with this access "
                    f"(limit {quota}); {left} bytes of the quota are left and this request asks for {length}. "
                    "Ask the release team if you need more.",
                )
        status = 304 if not_modified else (206 if byte_range else 200)
        event = DownloadEvent.objects.create(
            user=user,
            file=row,
            grant=grant,
            status_code=status,
            bytes_served=length,
            range_start=byte_range.start if byte_range else None,
            range_end=byte_range.end if byte_range else None,
            via=via,
            ip_address=meta.ip,
            user_agent=meta.user_agent,
        )
        audit_record(
            actor=user,
            action="download.serve",
            target=row,
            meta=meta,
            after={
                "bytes": length,
                "status": status,
                "grant": grant.pk if grant else None,
                "via": via,
                "range": f"{byte_range.start}-{byte_range.end}" if byte_range else None,
            },
        )
    redemption = Redemption(file=row, etag=etag, byte_range=byte_range, not_modified=not_modified, event=event, via=via)
    if via == "s3-redirect":
        if not (head or not_modified):
            # A range reserved only its length: sign the client's Range header into the URL, so the URL
            # cannot fetch more (the client repeats the header when it follows the redirect).
            redemption.redirect_url = storage.presigned_url(
                row.storage_key,
                expires_in=settings.ARTIFACTS_PRESIGNED_URL_SECONDS,
                filename=row.name,
                range_header=range_header if byte_range and length < row.size else None,
            )
    else:
        redemption.local_path = storage.local_path(row.storage_key)
    return redemption


def download_settle(*, event_id: int, bytes_sent: int) -> None:
    """Lower a download's reserved byte count to what was actually sent (an interrupted transfer)."""
    DownloadEvent.objects.filter(pk=event_id, bytes_served__gt=bytes_sent).update(bytes_served=bytes_sent)
