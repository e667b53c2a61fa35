"""License versions: publishing one, and a user accepting the exact version they were shown."""

from __future__ import annotations

from django.utils import timezone

from access.errors import Conflict, InvalidInput
from access.models import LicenseAcceptance, LicenseVersion, Release, User
from access.services.audit import SYSTEM, RequestMeta, audit_record


def license_accept(
    *, user: User, release: Release, license_version_id: int | None, meta: RequestMeta
) -> LicenseAcceptance:
    """Record that `user` accepted the exact license version they were shown for `release`."""
    current = release.license.current_version
    if current is None:
        raise InvalidInput(f"{release.name} has no published license yet; it cannot be accepted.")
    if license_version_id is None or int(license_version_id) != current.pk:
        raise Conflict(
            f"The license for {release.name} changed while you were reading it: version {current.version} is "
            "now in force. Read it again and accept the current version.",
            field="license_version",
        )
    acceptance = LicenseAcceptance.objects.create(
        user=user, release=release, license_version=current, ip_address=meta.ip, user_agent=meta.user_agent
    )
    audit_record(
        actor=user,
        action="license.accept",
        target=acceptance,
        meta=meta,
        after={"release": release.slug, "license_version": current.version},
    )
    return acceptance


def license_version_publish(*, license_id: int, version: str, text: str, actor: User | None) -> LicenseVersion:
    """Publish a new license version; every holder must accept it again before their next use."""
    lv = LicenseVersion.objects.create(license_id=license_id, version=version, text=text, published_at=timezone.now())
    audit_record(actor=actor, action="license.publish", target=lv, meta=SYSTEM, after={"version": version})
    return lv
