"""All writes of the artifacts app: import, verification, link issuing and download redemption.

Who may download is decided only by `access.selectors.release_access_check`, asked afresh at every
redemption, so a revocation applies even to links issued before it.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import Release, User
from access.selectors import release_access_check
from access.services import SYSTEM, RequestMeta, audit_record
from artifacts.checksums import (
    ChecksumListError,
    UnknownFormat,
    detect_format,
    detect_tp_size,
    match_published,
    parse_published_sums,
)
from artifacts.hashing import Progress, hash_files
from artifacts.http import ByteRange, RangeNotSatisfiable, etag_matches, parse_range
from artifacts.models import (
    Checkpoint,
    CheckpointFile,
    CheckpointFormat,
    CheckpointState,
    ChecksumSource,
    DownloadEvent,
    JobStatus,
    VerificationJob,
)
from artifacts.signing import BadSignature, read_link, sign_link
from artifacts.sources import SourceError, open_source
from artifacts.storage import StorageError, UnsafeKey, get_storage

log = logging.getLogger(__name__)

_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# --- Import -----------------------------------------------------------------------------------


@dataclass
class ImportResult:
    checkpoint: Checkpoint
    job: VerificationJob | None
    copied: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    unchanged: bool = False


def checkpoint_import(
    *,
    release: Release,
    source_uri: str,
    fmt: str | None = None,
    checksums_text: str | None = None,
    variant: str | None = None,
    label: str = "",
    description: str = "",
    dtype: str = "",
    actor: User | None = None,
    enqueue: bool = True,
) -> ImportResult:
    """Register the files under `source_uri` as a checkpoint of `release`, streaming each into
    storage unless an object of the same size is already there, then queue verification.

    Re-importing an unchanged, verified checkpoint is a no-op.
    """
    try:
        source = open_source(source_uri)
    except SourceError as error:
        raise InvalidInput(str(error), field="source") from None
    paths = [item.path for item in source.files]
    if fmt:
        if fmt not in CheckpointFormat.values:
            raise InvalidInput(
                f"Unknown format {fmt!r}; use one of {', '.join(CheckpointFormat.values)}.", field="format"
            )
    else:
        try:
            fmt = detect_format(paths, read_text=source.read_text)
        except UnknownFormat as error:
            raise InvalidInput(str(error), field="format") from None
    published = None
    if checksums_text is not None:
        try:
            published = parse_published_sums(checksums_text)
        except ChecksumListError as error:
            raise InvalidInput(str(error), field="checksums") from None
    variant = variant or fmt
    if not _VARIANT.match(variant):
        raise InvalidInput(
            f"Variant {variant!r}: use letters, digits, '.', '_' or '-' (up to 100), starting with a letter or digit.",
            field="variant",
        )
    if not dtype and fmt in {"hf", "native"} and "config.json" in paths:
        try:
            config = json.loads(source.read_text("config.json"))
            # transformers 5 writes "dtype", 4.x "torch_dtype".
            dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
        except (ValueError, OSError):
            dtype = ""

    existing = Checkpoint.objects.filter(release=release, variant=variant).first()
    if existing is not None:
        if existing.state == CheckpointState.RETIRED:
            raise Conflict(f"{existing} is retired; import under a new --variant.", field="variant")
        if existing.verification_jobs.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exists():
            raise Conflict(f"{existing} is being verified; wait for it to finish, then import again.")

    prefix = f"checkpoints/{release.slug}/{variant}"
    storage = get_storage()
    result = ImportResult(checkpoint=existing or Checkpoint(), job=None)
    for item in source.files:
        key = f"{prefix}/{item.path}"
        try:
            if storage.exists(key) and storage.size(key) == item.size:
                result.already_stored.append(item.path)
                continue
            with item.open() as stream:
                storage.write_stream(key, stream, size=item.size)
        except (StorageError, UnsafeKey, OSError) as error:
            raise InvalidInput(f"Could not store {item.path}: {error}", field="source") from None
        result.copied.append(item.path)

    matches: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    if published is not None:
        matches, unmatched = match_published(published, paths)

    with transaction.atomic():
        checkpoint, created = Checkpoint.objects.select_for_update().get_or_create(
            release=release,
            variant=variant,
            defaults={"format": fmt, "storage_prefix": prefix, "source_uri": source.uri},
        )
        old_files = {f.path: f for f in checkpoint.files.all()}
        gone = set(old_files) - set(paths)
        if gone and DownloadEvent.objects.filter(file__in=[old_files[p] for p in gone]).exists():
            raise Conflict(
                f"{checkpoint} was downloaded and {len(gone)} of its files are missing from {source.uri}; "
                "import the new file set under a new --variant.",
                field="variant",
            )
        changed = (
            created
            or bool(gone)
            or bool(result.copied)
            or published is not None
            or checkpoint.state != CheckpointState.READY
            or any(item.path not in old_files or old_files[item.path].size != item.size for item in source.files)
        )
        if not changed:
            result.checkpoint, result.unchanged = checkpoint, True
            return result
        CheckpointFile.objects.filter(checkpoint=checkpoint, path__in=gone).delete()
        for item in source.files:
            row = old_files.get(item.path)
            sums = matches.get(item.path, {})
            fresh = row is None or row.size != item.size or item.path in result.copied
            values: dict[str, Any] = {"size": item.size, "storage_key": f"{prefix}/{item.path}", "error": ""}
            if fresh:
                values.update(
                    sha256="",
                    md5="",
                    verified_at=None,
                    expected_sha256="",
                    expected_md5="",
                    expected_source=ChecksumSource.NONE,
                )
            if sums:
                values.update(
                    expected_sha256=sums.get("sha256", ""),
                    expected_md5=sums.get("md5", ""),
                    expected_source=ChecksumSource.PUBLISHED,
                )
            CheckpointFile.objects.update_or_create(checkpoint=checkpoint, path=item.path, defaults=values)
        checkpoint.format = fmt
        checkpoint.tp_size = detect_tp_size(fmt, paths)
        checkpoint.dtype = dtype or checkpoint.dtype
        checkpoint.label = label or checkpoint.label
        checkpoint.description = description or checkpoint.description
        checkpoint.source_uri = source.uri
        checkpoint.storage_prefix = prefix
        checkpoint.state = CheckpointState.REGISTERED
        checkpoint.state_reason = "Imported; waiting for verification."
        if published is not None:
            checkpoint.published_checksums = {
                "kind": published.kind,
                "unmatched": unmatched,
                "listed": len(published.names()),
            }
        checkpoint.save()
        audit_record(
            actor=actor,
            action="checkpoint.import",
            target=checkpoint,
            meta=SYSTEM,
            after={
                "source": source.uri,
                "format": fmt,
                "files": len(paths),
                "copied": len(result.copied),
                "published_list": published.kind if published else None,
            },
        )
        result.checkpoint = checkpoint
        if enqueue:
            result.job = verification_enqueue(checkpoint=checkpoint, actor=actor)
    return result


# --- Verification -----------------------------------------------------------------------------


def verification_enqueue(
    *, checkpoint: Checkpoint, actor: User | None = None, dispatch: bool = True
) -> VerificationJob:
    """Queue a verification pass; with one already queued or running, return that one instead."""
    if checkpoint.state == CheckpointState.RETIRED:
        raise Conflict(f"{checkpoint} is retired; it is not verified any more.")
    with transaction.atomic():
        Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).first()
        active = checkpoint.verification_jobs.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).first()
        if active is not None:
            return active
        job = VerificationJob.objects.create(
            checkpoint=checkpoint,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
            files_total=checkpoint.files.count(),
            bytes_total=checkpoint.files.aggregate(total=Sum("size"))["total"] or 0,
        )
        if dispatch:
            from artifacts.tasks import verify_checkpoint

            # robust: with the broker down the job stays queued and the reaper sends it again.
            transaction.on_commit(lambda: verify_checkpoint.delay(job.pk), robust=True)
    return job


def verification_run(*, job_id: int, workers: int | None = None) -> VerificationJob | None:
    """Hash every stored file of the job's checkpoint and decide: ready or quarantined.

    Claims the job with a conditional UPDATE, so a duplicate delivery or a re-run of a finished job
    does nothing; a job whose worker died (stale heartbeat) may be claimed again.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.ARTIFACTS_VERIFY_STALE_SECONDS)
    claimed = (
        VerificationJob.objects.filter(pk=job_id)
        .filter(Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, heartbeat_at__lt=stale))
        .update(
            status=JobStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            bytes_hashed=0,
            files_done=0,
        )
    )
    job = VerificationJob.objects.select_related("checkpoint__release").filter(pk=job_id).first()
    if job is None or not claimed:
        return job
    checkpoint = job.checkpoint
    if (
        not Checkpoint.objects.filter(pk=checkpoint.pk)
        .exclude(state=CheckpointState.RETIRED)
        .update(state=CheckpointState.VERIFYING, state_reason=f"Verification #{job.pk} running.")
    ):
        _finish_job(job, JobStatus.ERROR, {"error": "The checkpoint was retired before verification started."})
        return job
    files = list(checkpoint.files.order_by("path"))
    VerificationJob.objects.filter(pk=job.pk).update(files_total=len(files), bytes_total=sum(f.size for f in files))
    storage = get_storage()
    last_beat = [time.monotonic()]

    def beat(progress: Progress) -> None:
        if time.monotonic() - last_beat[0] < 1.0 and progress.files_done < len(files):
            return
        last_beat[0] = time.monotonic()
        VerificationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            bytes_hashed=progress.bytes_hashed, files_done=progress.files_done, heartbeat_at=timezone.now()
        )

    started = time.monotonic()
    try:
        digests, failures = hash_files(
            [(f.path, lambda f=f: storage.open_read(f.storage_key)) for f in files],
            workers=workers if workers is not None else settings.ARTIFACTS_VERIFY_WORKERS,
            on_tick=beat,
        )
    except Exception as error:
        # A time limit or a crash of the pool: the bytes were not judged, so no quarantine.
        Checkpoint.objects.filter(pk=checkpoint.pk, state=CheckpointState.VERIFYING).update(
            state=CheckpointState.REGISTERED,
            state_reason=f"Verification #{job.pk} did not finish: {error}. Verify again.",
        )
        _finish_job(job, JobStatus.ERROR, {"error": f"{type(error).__name__}: {error}"})
        raise
    seconds = time.monotonic() - started

    by_path = {f.path: f for f in files}
    problems: dict[str, list[str]] = {}
    for failure in failures:
        problems.setdefault(failure.name, []).append(f"unreadable: {failure.error}")
    computed = {d.name: d for d in digests}
    for name, digest in computed.items():
        row = by_path[name]
        if digest.size != row.size:
            problems.setdefault(name, []).append(f"size {digest.size} bytes, registered {row.size}")
        if row.expected_sha256 and digest.sha256 != row.expected_sha256:
            problems.setdefault(name, []).append(
                f"sha256 {digest.sha256} does not match the {row.get_expected_source_display().lower()} "
                f"{row.expected_sha256}"
            )
        if row.expected_md5 and digest.md5 != row.expected_md5:
            problems.setdefault(name, []).append(
                f"md5 {digest.md5} does not match the {row.get_expected_source_display().lower()} {row.expected_md5}"
            )
    unmatched = list((checkpoint.published_checksums or {}).get("unmatched", []))
    for name in unmatched:
        problems.setdefault(name, []).append("listed in the published checksums but missing from the checkpoint")

    finished = timezone.now()
    bad_files = [{"path": name, "problem": "; ".join(items)} for name, items in sorted(problems.items())]
    report = {
        "bad_files": bad_files,
        "checked": len(digests),
        "bytes": sum(d.size for d in digests),
        "seconds": round(seconds, 3),
        "published_list": (checkpoint.published_checksums or {}).get("kind"),
    }
    with transaction.atomic():
        for name, digest in computed.items():
            row = by_path[name]
            ok = name not in problems
            row.sha256, row.md5 = digest.sha256, digest.md5
            row.error = "" if ok else "; ".join(problems[name])
            row.verified_at = finished if ok else None
            if ok:
                # Trust anchors for the next pass: the published sum, else this first verification.
                row.expected_source = row.expected_source or ChecksumSource.FIRST_VERIFICATION
                row.expected_sha256 = row.expected_sha256 or digest.sha256
                row.expected_md5 = row.expected_md5 or digest.md5
            row.save(
                update_fields=[
                    "sha256",
                    "md5",
                    "error",
                    "verified_at",
                    "expected_sha256",
                    "expected_md5",
                    "expected_source",
                ]
            )
        for failure in failures:
            CheckpointFile.objects.filter(pk=by_path[failure.name].pk).update(
                error="; ".join(problems[failure.name]), verified_at=None
            )
        if bad_files:
            names = ", ".join(item["path"] for item in bad_files[:5]) + (" …" if len(bad_files) > 5 else "")
            Checkpoint.objects.filter(pk=checkpoint.pk, state=CheckpointState.VERIFYING).update(
                state=CheckpointState.QUARANTINED,
                state_reason=f"Verification #{job.pk} found {len(bad_files)} bad file(s): {names}.",
            )
            _finish_job(job, JobStatus.FAILED, report, progress=(len(files), report["bytes"]))
            action = "checkpoint.quarantine"
        else:
            Checkpoint.objects.filter(pk=checkpoint.pk, state=CheckpointState.VERIFYING).update(
                state=CheckpointState.READY,
                verified_at=finished,
                state_reason=f"Verified by #{job.pk}: {len(digests)} files, {report['bytes']} bytes.",
            )
            _finish_job(job, JobStatus.SUCCEEDED, report, progress=(len(files), report["bytes"]))
            action = "checkpoint.verify"
        audit_record(
            actor=None,
            action=action,
            target=checkpoint,
            meta=SYSTEM,
            after={"job": job.pk, "bad_files": bad_files[:20]},
        )
    job.refresh_from_db()
    return job


def _finish_job(
    job: VerificationJob, status: str, report: dict[str, Any], progress: tuple[int, int] | None = None
) -> None:
    values: dict[str, Any] = {
        "status": status,
        "report": report,
        "finished_at": timezone.now(),
        "heartbeat_at": timezone.now(),
    }
    if progress:
        values.update(files_done=progress[0], bytes_hashed=progress[1])
    VerificationJob.objects.filter(pk=job.pk).update(**values)


def verifications_reap_stale(*, now: datetime | None = None) -> int:
    """Fail running jobs whose worker stopped beating; their checkpoints go back to registered."""
    now = now or timezone.now()
    stale = VerificationJob.objects.filter(
        status=JobStatus.RUNNING, heartbeat_at__lt=now - timedelta(seconds=settings.ARTIFACTS_VERIFY_STALE_SECONDS)
    )
    reaped = 0
    for job in stale.select_related("checkpoint"):
        if VerificationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING, heartbeat_at=job.heartbeat_at).update(
            status=JobStatus.ERROR, finished_at=now, report={"error": "The worker stopped sending heartbeats."}
        ):
            Checkpoint.objects.filter(pk=job.checkpoint_id, state=CheckpointState.VERIFYING).update(
                state=CheckpointState.REGISTERED,
                state_reason=f"Verification #{job.pk} stopped (worker lost); verify again.",
            )
            reaped += 1
    from artifacts.tasks import verify_checkpoint

    return reaped + redispatch_lost(VerificationJob.objects.all(), verify_checkpoint, now=now)


def redispatch_lost(jobs: Any, task: Any, *, now: datetime) -> int:
    """Send again the message of queued jobs that nobody claimed for ARTIFACTS_REDISPATCH_SECONDS
    (a broker that lost it, a dispatch that failed). Duplicates are harmless: runs claim the row."""
    cutoff = now - timedelta(seconds=settings.ARTIFACTS_REDISPATCH_SECONDS)
    sent = 0
    for job_id in jobs.filter(status="queued", dispatched_at__lt=cutoff).values_list("pk", flat=True)[:500]:
        if jobs.filter(pk=job_id, status="queued", dispatched_at__lt=cutoff).update(dispatched_at=now):
            task.delay(job_id)
            sent += 1
    return sent


def checkpoint_verify_again(*, checkpoint: Checkpoint, actor: User, meta: RequestMeta) -> VerificationJob:
    if not (actor.is_staff or actor.is_reviewer):
        raise NotAllowed("Only operators and reviewers can start a verification.")
    job = verification_enqueue(checkpoint=checkpoint, actor=actor)
    audit_record(actor=actor, action="checkpoint.verify_again", target=checkpoint, meta=meta, after={"job": job.pk})
    return job


# --- Links and bundles ------------------------------------------------------------------------


@dataclass(frozen=True)
class FileLink:
    file: CheckpointFile
    url: str
    expires_at: datetime


@dataclass
class Bundle:
    checkpoint: Checkpoint
    user: User
    grant_id: int
    issued_at: datetime
    expires_at: datetime
    renewal_url: str
    links: list[FileLink]

    def sha256sums(self) -> str:
        return "".join(f"{link.file.sha256}  {link.file.path}\n" for link in self.links)

    def md5sums(self) -> str:
        return "".join(f"{link.file.md5}  {link.file.path}\n" for link in self.links)

    def manifest(self) -> dict[str, Any]:
        checkpoint = self.checkpoint
        return {
            "release": checkpoint.release.slug,
            "checkpoint": {
                "id": checkpoint.pk,
                "variant": checkpoint.variant,
                "format": checkpoint.format,
                "tp_size": checkpoint.tp_size,
                "dtype": checkpoint.dtype,
                "label": checkpoint.label,
            },
            "user": self.user.email,
            "grant_id": self.grant_id or None,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "renewal_url": self.renewal_url,
            "files": [
                {
                    "path": link.file.path,
                    "size": link.file.size,
                    "sha256": link.file.sha256,
                    "md5": link.file.md5,
                    "url": link.url,
                }
                for link in self.links
            ],
        }

    def download_script(self) -> str:
        return render_download_script(self)


def links_issue(
    *,
    user: User,
    checkpoint: Checkpoint,
    base_url: str,
    link_url: Callable[[str], str],
    renewal_url: str,
    meta: RequestMeta,
    now: datetime | None = None,
    record: bool = True,
) -> Bundle:
    """Fresh signed links to every file of a ready checkpoint for a user allowed to use its release.

    `link_url(token)` makes the path of the redemption endpoint; `base_url` makes it absolute.
    """
    if checkpoint.state != CheckpointState.READY:
        raise NotAllowed(f"{checkpoint} is {checkpoint.get_state_display().lower()}; it cannot be downloaded now.")
    decision = release_access_check(user=user, release=checkpoint.release)
    if not decision.allowed:
        raise NotAllowed(decision.message)
    now = now or timezone.now()
    grant_id = decision.grant.pk if decision.grant is not None else 0
    links: list[FileLink] = []
    expires_at = now
    for row in checkpoint.files.order_by("path"):
        token, expires_at = sign_link(file_id=row.pk, user_id=user.pk, grant_id=grant_id, now=now)
        links.append(FileLink(file=row, url=base_url.rstrip("/") + link_url(token), expires_at=expires_at))
    bundle = Bundle(
        checkpoint=checkpoint,
        user=user,
        grant_id=grant_id,
        issued_at=now,
        expires_at=expires_at,
        renewal_url=base_url.rstrip("/") + renewal_url,
        links=links,
    )
    if record:
        audit_record(
            actor=user,
            action="download.links_issue",
            target=checkpoint,
            meta=meta,
            after={"grant": grant_id or None, "files": len(links), "expires_at": expires_at.isoformat()},
        )
    return bundle


_SCRIPT = r"""#!/usr/bin/env bash
# Downloads {label} for {user}.
# Generated {issued}; the links expire {expires}.
# Usage: bash download.sh [TARGET_DIR]   (PARALLEL=4 by default; re-run to resume)
# Needs bash, curl and sha256sum. Each file resumes where it stopped (curl -C -) and is retried;
# at the end every file is checked with `sha256sum -c SHA256SUMS`.
set -uo pipefail
RENEWAL_URL={renewal}
TARGET="${{1:-{target}}}"
PARALLEL="${{PARALLEL:-4}}"
mkdir -p "$TARGET" && cd "$TARGET" || exit 1
rm -f .links-expired .links-refused

cat > SHA256SUMS <<'OPENRELEASE_SUMS'
{sums}OPENRELEASE_SUMS

fetch() {{
  local size="$1" path="$2" url="$3" code attempt
  mkdir -p "$(dirname "$path")"
  for attempt in 1 2 3 4 5; do
    if [ -f "$path" ] && [ "$(stat -c %s "$path")" = "$size" ]; then return 0; fi
    code=$(curl --silent --show-error --fail --location --continue-at - --retry 3 --retry-delay 2 \
           --connect-timeout 30 --output "$path" --write-out '%{{http_code}}' "$url")
    case "$code" in
      200|206) ;;
      410) echo "$path: the download link expired." >&2; touch .links-expired; return 1 ;;
      403|404|429) echo "$path: refused (HTTP $code)." >&2; touch .links-refused; return 1 ;;
      416) rm -f "$path" ;;  # the partial file is longer than the file: start again
      *) echo "$path: HTTP $code, retrying ($attempt/5)" >&2; sleep "$attempt" ;;
    esac
  done
  [ -f "$path" ] && [ "$(stat -c %s "$path")" = "$size" ]
}}
export -f fetch

xargs -P "$PARALLEL" -L 1 bash -c 'fetch "$@"' _ <<'OPENRELEASE_FILES'
{files}OPENRELEASE_FILES
status=$?

if [ -e .links-expired ]; then
  echo "Your download links expired. Get fresh ones (one click) at:" >&2
  echo "  $RENEWAL_URL" >&2
  echo "then run the new download.sh in the same directory: finished files are kept and partial ones resume." >&2
  exit 10
fi
if [ -e .links-refused ] || [ "$status" -ne 0 ]; then
  echo "Some files could not be downloaded (see above). Your access may have changed: $RENEWAL_URL" >&2
  exit 11
fi
sha256sum -c SHA256SUMS || {{ echo "Checksum mismatch: delete the failed files and run again." >&2; exit 12; }}
echo "All files downloaded and verified in $PWD."
"""


def render_download_script(bundle: Bundle) -> str:
    # Paths are restricted to [A-Za-z0-9._+=@-/] at import and URLs are ours, so the `xargs -L 1`
    # lines split safely on spaces; quote anyway where the shell reads a value.
    files = "".join(f"{link.file.size} {link.file.path} {link.url}\n" for link in bundle.links)
    checkpoint = bundle.checkpoint
    return _SCRIPT.format(
        label=f"{checkpoint.release.name} / {checkpoint.variant}"
        + (f" ({checkpoint.label})" if checkpoint.label else ""),
        user=bundle.user.email,
        issued=bundle.issued_at.strftime("%Y-%m-%d %H:%M UTC"),
        expires=bundle.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        renewal=shlex.quote(bundle.renewal_url),
        target=f"{checkpoint.release.slug}-{checkpoint.variant}",
        sums=bundle.sha256sums(),
        files=files,
    )


# --- Redemption -------------------------------------------------------------------------------


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
    length = 0 if (not_modified or head) else (byte_range.length if byte_range else row.size)
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
            if consumed >= quota * row.size:
                raise DownloadRefused(
                    "quota_exhausted",
                    429,
                    f"{row.path} was already downloaded {consumed / row.size:.1f} times with this access "
                    f"(limit {quota}). Ask the release team if you need more.",
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
        redemption.redirect_url = storage.presigned_url(
            row.storage_key, expires_in=settings.ARTIFACTS_PRESIGNED_URL_SECONDS, filename=row.name
        )
    else:
        redemption.local_path = storage.local_path(row.storage_key)
    return redemption


def download_settle(*, event_id: int, bytes_sent: int) -> None:
    """Lower a download's reserved byte count to what was actually sent (an interrupted transfer)."""
    DownloadEvent.objects.filter(pk=event_id, bytes_served__gt=bytes_sent).update(bytes_served=bytes_sent)
