"""Download links: fresh signed links to every file of a checkpoint, and the bundle that carries them
(manifest, checksum lists and the generated `download.sh`)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.utils import timezone

from access.errors import NotAllowed
from access.models import User
from access.selectors import release_access_check
from access.services.audit import RequestMeta, audit_record
from artifacts.models import Checkpoint, CheckpointFile, CheckpointState
from artifacts.signing import sign_link


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


def _human_size(size: int) -> str:
    """`2.0GB`: filesizeformat without its no-break space, so an `xargs` line still splits on spaces."""
    return filesizeformat(size).replace("\xa0", "")


def render_download_script(bundle: Bundle) -> str:
    # Paths are restricted to [A-Za-z0-9._+=@-/] at import and URLs are ours, so the `xargs -L 1`
    # lines split safely on spaces; quote anyway where the shell reads a value.
    # Each line: number, size in bytes, size for people (no spaces), path, URL.
    files = "".join(
        f"{number} {link.file.size} {_human_size(link.file.size)} {link.file.path} {link.url}\n"
        for number, link in enumerate(bundle.links, start=1)
    )
    checkpoint = bundle.checkpoint
    context = {
        "label": f"{checkpoint.release.name} / {checkpoint.variant}"
        + (f" ({checkpoint.label})" if checkpoint.label else ""),
        "user": bundle.user.email,
        "issued": bundle.issued_at.strftime("%Y-%m-%d %H:%M UTC"),
        "expires": bundle.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        "renewal": shlex.quote(bundle.renewal_url),
        "target": f"{checkpoint.release.slug}-{checkpoint.variant}",
        "sums": bundle.sha256sums(),
        "files": files,
        "file_count": len(bundle.links),
        "total_size": _human_size(sum(link.file.size for link in bundle.links)),
    }
    # A shell script, not HTML: the template turns autoescaping off.
    return render_to_string("artifacts/download.sh", context)
