"""Writes of the access app: accounts, license acceptance, the application workflow and grants.

Views, API views, tasks and commands validate their input and call exactly one function here.
Every state change of an application is one conditional UPDATE (so two reviewers can never both
decide), plus an append-only audit event and a notification, in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import pycountry
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import (
    ApiKey,
    Application,
    ApplicationMessage,
    ApplicationStatus,
    AuditEvent,
    Grant,
    GrantStatus,
    LicenseAcceptance,
    LicenseVersion,
    OrganizationType,
    RejectionTemplate,
    Release,
    ReviewerNote,
    User,
)
from access.models.applications import OPEN_STATUSES, PENDING_STATUSES
from access.notifications import notify, notify_reviewers

_EMAIL_VERIFY_SALT = "access.email-verify"
MAX_PUBLICATIONS = 20


@dataclass(frozen=True)
class RequestMeta:
    """Where an action came from, for the audit log and license acceptances."""

    ip: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: Any) -> RequestMeta:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "") if settings.PRODUCTION else ""
        ip = forwarded.split(",")[0].strip() if forwarded else request.META.get("REMOTE_ADDR")
        return cls(ip=ip or None, user_agent=request.META.get("HTTP_USER_AGENT", "")[:500])


SYSTEM = RequestMeta()


def audit_record(
    *,
    actor: User | None,
    action: str,
    target: Any,
    meta: RequestMeta,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    application: Application | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        application=application,
        before=before,
        after=after,
        ip_address=meta.ip,
        user_agent=meta.user_agent,
    )


# --- Accounts ---------------------------------------------------------------------------------


def user_register(*, email: str, password: str, full_name: str, affiliation: str, meta: RequestMeta) -> User:
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput("Enter a valid email address.", field="email") from None
    if User.objects.filter(email__iexact=email).exists():
        raise InvalidInput("An account with this email already exists. Sign in, or reset your password.", field="email")
    candidate = User(email=email, full_name=full_name.strip(), affiliation=affiliation.strip())
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from None
    with transaction.atomic():
        user = User.objects.create_user(
            email, password, full_name=candidate.full_name, affiliation=candidate.affiliation
        )
        audit_record(actor=user, action="user.register", target=user, meta=meta, after={"email": email})
        user_send_verification(user=user)
    return user


def email_verification_token(user: User) -> str:
    return signing.TimestampSigner(salt=_EMAIL_VERIFY_SALT).sign_object({"u": user.pk, "e": user.email})


def user_send_verification(*, user: User) -> None:
    link = settings.SITE_URL + reverse("verify-email", args=[email_verification_token(user)])
    notify(
        user=user,
        subject="Confirm your email address",
        body=(
            f"Hello {user.get_short_name()},\n\nConfirm this address to apply for model access:\n{link}\n\n"
            f"The link is valid for {settings.EMAIL_VERIFICATION_MAX_AGE.days} days."
        ),
    )


def user_verify_email(*, token: str, meta: RequestMeta) -> User:
    try:
        data = signing.TimestampSigner(salt=_EMAIL_VERIFY_SALT).unsign_object(
            token, max_age=settings.EMAIL_VERIFICATION_MAX_AGE
        )
    except signing.SignatureExpired:
        raise InvalidInput("This verification link has expired. Sign in and ask for a new one.") from None
    except signing.BadSignature:
        raise InvalidInput("This verification link is not valid. Copy the whole link from the email.") from None
    user = User.objects.filter(pk=data.get("u"), email=data.get("e")).first()
    if user is None:
        raise InvalidInput("This verification link no longer matches an account. Ask for a new one.")
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        audit_record(actor=user, action="user.verify_email", target=user, meta=meta, after={"email": user.email})
    return user


def user_update_profile(*, user: User, full_name: str, affiliation: str, meta: RequestMeta) -> User:
    before = {"full_name": user.full_name, "affiliation": user.affiliation}
    user.full_name = full_name.strip()
    user.affiliation = affiliation.strip()
    user.save(update_fields=["full_name", "affiliation"])
    audit_record(
        actor=user,
        action="user.update_profile",
        target=user,
        meta=meta,
        before=before,
        after={"full_name": user.full_name, "affiliation": user.affiliation},
    )
    return user


def reviewer_group() -> Group:
    from django.contrib.auth.models import Permission

    group, _ = Group.objects.get_or_create(name=settings.REVIEWER_GROUP)
    group.permissions.add(Permission.objects.get(codename="review_application", content_type__app_label="access"))
    return group


def api_key_create(*, user: User, name: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create an API key; the raw key is returned once and never stored."""
    name = name.strip()
    if not name:
        raise InvalidInput("Give the key a name so you can recognise it later.", field="name")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The expiry must be in the future.", field="expires_at")
    raw, prefix, key_hash = ApiKey.generate()
    key = ApiKey.objects.create(user=user, name=name[:100], key_prefix=prefix, key_hash=key_hash, expires_at=expires_at)
    audit_record(actor=user, action="api_key.create", target=key, meta=SYSTEM, after={"name": key.name})
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: User) -> None:
    if key.revoked_at is None:
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        audit_record(actor=actor, action="api_key.revoke", target=key, meta=SYSTEM)


# --- License acceptance -----------------------------------------------------------------------


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


# --- Applications -----------------------------------------------------------------------------

_DOI = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)$", re.IGNORECASE)


def normalize_publication(value: str) -> str:
    """A DOI (bare, doi: or doi.org URL) becomes `doi:10.x/y`; an http(s) URL is kept; anything else fails."""
    value = value.strip()
    match = _DOI.match(value)
    if match:
        return f"doi:{match.group(1)}"
    parsed = urlparse(value)
    if parsed.scheme in {"http", "https"} and parsed.netloc and "." in parsed.netloc and " " not in value:
        return value
    raise InvalidInput(f"{value[:80]!r} is neither a URL (https://…) nor a DOI (10.1234/abcd).", field="publications")


@dataclass
class ApplicationInput:
    full_name: str
    affiliation: str
    organization_type: str
    role: str
    country: str
    research_purpose: str
    intended_use: str
    publications: list[str] = field(default_factory=list)
    license_version_id: int | None = None
    non_commercial_attested: bool = False
    accept_license: bool = False

    def clean(self) -> dict[str, str]:
        """Normalise in place and return field errors (empty when valid)."""
        errors: dict[str, str] = {}
        for name in ("full_name", "affiliation", "role", "research_purpose", "intended_use"):
            setattr(self, name, (getattr(self, name) or "").strip())
            if not getattr(self, name):
                errors[name] = "This field is required."
        for name, limit in (("full_name", 200), ("affiliation", 200), ("role", 200)):
            if len(getattr(self, name)) > limit:
                errors[name] = f"Keep this under {limit} characters."
        if self.organization_type not in OrganizationType.values:
            errors["organization_type"] = "Choose one of: " + ", ".join(OrganizationType.labels) + "."
        self.country = (self.country or "").strip().upper()
        if pycountry.countries.get(alpha_2=self.country) is None if self.country else True:
            errors["country"] = "Choose your country from the list (ISO 3166 code such as DE or US)."
        minimum = settings.RESEARCH_PURPOSE_MIN_LENGTH
        if self.research_purpose and len(self.research_purpose) < minimum:
            errors["research_purpose"] = (
                f"Describe your research purpose in at least {minimum} characters "
                f"(you wrote {len(self.research_purpose)})."
            )
        publications = [p for p in (self.publications or []) if p and p.strip()]
        if len(publications) > MAX_PUBLICATIONS:
            errors["publications"] = f"List at most {MAX_PUBLICATIONS} publications."
        else:
            cleaned = []
            for publication in publications:
                try:
                    cleaned.append(normalize_publication(publication))
                except InvalidInput as exc:
                    errors["publications"] = exc.message
                    break
            self.publications = cleaned
        if not self.accept_license:
            errors["accept_license"] = "You must accept the license to apply."
        if not self.non_commercial_attested:
            errors["non_commercial_attested"] = "You must attest that your use is non-commercial."
        return errors


def _ensure_can_apply(*, user: User, release: Release, renewal_of: Grant | None) -> None:
    if not release.is_gated:
        raise InvalidInput(
            f"{release.name} is an open release: accept its license and download, no application needed.",
            field="release",
        )
    if not user.email_verified:
        raise NotAllowed("Verify your email address first: we sent you a link when you signed up.")
    if Application.objects.filter(applicant=user, release=release, status__in=OPEN_STATUSES).exists():
        raise Conflict(f"You already have an open application for {release.name}; follow it on its status page.")
    if renewal_of is None:
        active = Grant.objects.filter(
            user=user, release=release, status=GrantStatus.ACTIVE, expires_at__gt=timezone.now()
        )
        if active.exists():
            raise Conflict(f"You already have access to {release.name}. Ask for a renewal when it nears expiry.")
        last_rejection = (
            Application.objects.filter(applicant=user, release=release, status=ApplicationStatus.REJECTED)
            .order_by("-decided_at")
            .values_list("decided_at", flat=True)
            .first()
        )
        if last_rejection is not None:
            allowed_from = last_rejection + timedelta(days=settings.REAPPLY_COOLDOWN_DAYS)
            if timezone.now() < allowed_from:
                raise NotAllowed(
                    f"Your last application for {release.name} was declined; you can apply again from "
                    f"{allowed_from:%Y-%m-%d}."
                )


def application_submit(
    *, applicant: User, release: Release, data: ApplicationInput, meta: RequestMeta, renewal_of: Grant | None = None
) -> Application:
    _ensure_can_apply(user=applicant, release=release, renewal_of=renewal_of)
    errors = data.clean()
    if errors:
        name, message = next(iter(errors.items()))
        exc = InvalidInput(message, field=name)
        exc.errors = errors  # type: ignore[attr-defined]
        raise exc
    try:
        with transaction.atomic():
            acceptance = license_accept(
                user=applicant, release=release, license_version_id=data.license_version_id, meta=meta
            )
            application = Application.objects.create(
                applicant=applicant,
                release=release,
                renewal_of=renewal_of,
                full_name=data.full_name,
                email=applicant.email,
                affiliation=data.affiliation,
                organization_type=data.organization_type,
                role=data.role,
                country=data.country,
                research_purpose=data.research_purpose,
                intended_use=data.intended_use,
                publications=data.publications,
                license_acceptance=acceptance,
                non_commercial_attested=True,
                submitted_ip=meta.ip,
                submitted_at=timezone.now(),
            )
            audit_record(
                actor=applicant,
                action="application.submit",
                target=application,
                application=application,
                meta=meta,
                after={"status": application.status, "renewal_of": renewal_of.pk if renewal_of else None},
            )
            _notify_applicant(application, "received")
            notify_reviewers(
                subject=f"New application #{application.pk} for {release.name}",
                body=f"{application.full_name} ({application.affiliation}) applied for {release.name}.",
                url=reverse("review-detail", args=[application.pk]),
            )
    except IntegrityError:
        # The partial unique index caught a concurrent duplicate submission.
        raise Conflict(f"You already have an open application for {release.name}.") from None
    return application


def _snapshot(application: Application) -> dict[str, Any]:
    return {"status": application.status, "version": application.version}


_APPLICANT_MESSAGES = {
    "received": ("We received your application for {release}", "Your application #{pk} is in the review queue."),
    ApplicationStatus.IN_REVIEW: ("Your application for {release} is in review", "A reviewer is looking at #{pk}."),
    ApplicationStatus.NEEDS_INFO: (
        "We need more information about your application for {release}",
        "A reviewer asked a question about #{pk}. Answer it on the status page to return to the queue.",
    ),
    ApplicationStatus.APPROVED: (
        "Your application for {release} is approved",
        "You may use {release} until {expiry}. The status page has the details.",
    ),
    ApplicationStatus.REJECTED: ("Your application for {release} was declined", "Reason: {reason}"),
    ApplicationStatus.WITHDRAWN: ("You withdrew your application for {release}", "Application #{pk} is closed."),
}


def _notify_applicant(application: Application, event: str, *, expiry: datetime | None = None) -> None:
    subject, body = _APPLICANT_MESSAGES[event]
    values = {
        "release": application.release.name,
        "pk": application.pk,
        "expiry": f"{expiry:%Y-%m-%d}" if expiry else "",
        "reason": application.rejection_reason,
    }
    notify(
        user=application.applicant,
        subject=subject.format(**values),
        body=body.format(**values),
        url=reverse("application-detail", args=[application.pk]),
    )


_ACTION_PAST = {
    "application.start_review": "moved into review",
    "application.request_info": "sent back for information",
    "application.answer": "answered",
    "application.approve": "approved",
    "application.reject": "rejected",
    "application.withdraw": "withdrawn",
}


def _transition(
    application: Application,
    *,
    actor: User,
    action: str,
    to: str,
    allowed_from: tuple[str, ...],
    meta: RequestMeta,
    expected_version: int | None = None,
    **updates: Any,
) -> Application:
    """Move `application` to `to` if, and only if, nobody moved it first.

    One conditional UPDATE decides the race: the loser gets a Conflict naming what happened.
    """
    rows = Application.objects.filter(pk=application.pk, status__in=allowed_from)
    if expected_version is not None:
        rows = rows.filter(version=expected_version)
    before = _snapshot(application)
    changed = rows.update(status=to, version=F("version") + 1, updated_at=timezone.now(), **updates)
    if changed != 1:
        current = Application.objects.select_related("decided_by").get(pk=application.pk)
        if current.decided_by is not None and current.status in (
            ApplicationStatus.APPROVED,
            ApplicationStatus.REJECTED,
        ):
            raise Conflict(
                f"Application #{current.pk} was already {current.get_status_display().lower()} by "
                f"{current.decided_by.get_full_name()} at {current.decided_at:%Y-%m-%d %H:%M} UTC. Reload the page."
            )
        if current.status not in allowed_from:
            raise Conflict(
                f"Application #{current.pk} is now '{current.get_status_display()}', so it cannot be "
                f"{_ACTION_PAST[action]} from here. Reload the page."
            )
        raise Conflict(f"Application #{current.pk} changed since you opened it. Reload the page and try again.")
    application.refresh_from_db()
    audit_record(
        actor=actor,
        action=action,
        target=application,
        application=application,
        meta=meta,
        before=before,
        after={**_snapshot(application), **{k: _jsonable(v) for k, v in updates.items()}},
    )
    return application


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "pk"):
        return value.pk
    return value


def _require_reviewer(user: User) -> None:
    if not user.is_reviewer:
        raise NotAllowed("Only reviewers can do this.")


def application_start_review(*, application: Application, reviewer: User, meta: RequestMeta) -> Application:
    _require_reviewer(reviewer)
    with transaction.atomic():
        application = _transition(
            application,
            actor=reviewer,
            action="application.start_review",
            to=ApplicationStatus.IN_REVIEW,
            allowed_from=(ApplicationStatus.SUBMITTED,),
            meta=meta,
            reviewer=reviewer,
        )
        _notify_applicant(application, ApplicationStatus.IN_REVIEW)
    return application


def application_request_info(
    *, application: Application, reviewer: User, message: str, meta: RequestMeta, expected_version: int | None = None
) -> Application:
    _require_reviewer(reviewer)
    message = message.strip()
    if not message:
        raise InvalidInput("Write the question the applicant should answer.", field="message")
    with transaction.atomic():
        application = _transition(
            application,
            actor=reviewer,
            action="application.request_info",
            to=ApplicationStatus.NEEDS_INFO,
            allowed_from=PENDING_STATUSES,
            meta=meta,
            expected_version=expected_version,
            reviewer=reviewer,
        )
        ApplicationMessage.objects.create(
            application=application, author=reviewer, kind=ApplicationMessage.Kind.INFO_REQUEST, body=message
        )
        _notify_applicant(application, ApplicationStatus.NEEDS_INFO)
    return application


def application_answer(*, application: Application, applicant: User, message: str, meta: RequestMeta) -> Application:
    if application.applicant_id != applicant.pk:
        raise NotAllowed("Only the applicant can answer this application's questions.")
    message = message.strip()
    if not message:
        raise InvalidInput("Write your answer before sending it.", field="message")
    with transaction.atomic():
        application = _transition(
            application,
            actor=applicant,
            action="application.answer",
            to=ApplicationStatus.IN_REVIEW,
            allowed_from=(ApplicationStatus.NEEDS_INFO,),
            meta=meta,
        )
        ApplicationMessage.objects.create(
            application=application, author=applicant, kind=ApplicationMessage.Kind.APPLICANT_REPLY, body=message
        )
        notify_reviewers(
            subject=f"Application #{application.pk} answered",
            body=f"{application.full_name} answered the information request for {application.release.name}.",
            url=reverse("review-detail", args=[application.pk]),
            only=[application.reviewer] if application.reviewer_id else None,
        )
    return application


def application_approve(
    *,
    application: Application,
    reviewer: User,
    meta: RequestMeta,
    expires_at: datetime | None = None,
    expected_version: int | None = None,
) -> Grant:
    """Approve and create the grant (or extend it, for a renewal)."""
    _require_reviewer(reviewer)
    now = timezone.now()
    if expires_at is None:
        expires_at = now + timedelta(days=settings.GRANT_DEFAULT_DAYS)
    if expires_at <= now:
        raise InvalidInput("The grant must expire in the future.", field="expires_at")
    with transaction.atomic():
        application = _transition(
            application,
            actor=reviewer,
            action="application.approve",
            to=ApplicationStatus.APPROVED,
            allowed_from=PENDING_STATUSES,
            meta=meta,
            expected_version=expected_version,
            decided_at=now,
            decided_by=reviewer,
            reviewer=reviewer,
        )
        renewed = application.renewal_of
        if renewed is not None and renewed.status == GrantStatus.ACTIVE:
            before = {"expires_at": renewed.expires_at.isoformat()}
            Grant.objects.filter(pk=renewed.pk).update(expires_at=max(expires_at, renewed.expires_at))
            renewed.refresh_from_db()
            grant = renewed
            audit_record(
                actor=reviewer,
                action="grant.renew",
                target=grant,
                application=application,
                meta=meta,
                before=before,
                after={"expires_at": grant.expires_at.isoformat()},
            )
        else:
            grant = Grant.objects.create(
                user=application.applicant,
                release=application.release,
                application=application,
                starts_at=now,
                expires_at=expires_at,
            )
            audit_record(
                actor=reviewer,
                action="grant.create",
                target=grant,
                application=application,
                meta=meta,
                after={
                    "user": grant.user_id,
                    "release": application.release.slug,
                    "expires_at": expires_at.isoformat(),
                },
            )
        _notify_applicant(application, ApplicationStatus.APPROVED, expiry=grant.expires_at)
    return grant


def application_reject(
    *, application: Application, reviewer: User, reason: str, meta: RequestMeta, expected_version: int | None = None
) -> Application:
    _require_reviewer(reviewer)
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Give the applicant a reason: pick a template or write one.", field="reason")
    with transaction.atomic():
        application = _transition(
            application,
            actor=reviewer,
            action="application.reject",
            to=ApplicationStatus.REJECTED,
            allowed_from=PENDING_STATUSES,
            meta=meta,
            expected_version=expected_version,
            decided_at=timezone.now(),
            decided_by=reviewer,
            reviewer=reviewer,
            rejection_reason=reason,
        )
        _notify_applicant(application, ApplicationStatus.REJECTED)
    return application


def application_withdraw(*, application: Application, applicant: User, meta: RequestMeta) -> Application:
    if application.applicant_id != applicant.pk:
        raise NotAllowed("Only the applicant can withdraw an application.")
    with transaction.atomic():
        application = _transition(
            application,
            actor=applicant,
            action="application.withdraw",
            to=ApplicationStatus.WITHDRAWN,
            allowed_from=OPEN_STATUSES,
            meta=meta,
        )
        _notify_applicant(application, ApplicationStatus.WITHDRAWN)
    return application


def application_add_note(*, application: Application, reviewer: User, body: str, meta: RequestMeta) -> ReviewerNote:
    _require_reviewer(reviewer)
    body = body.strip()
    if not body:
        raise InvalidInput("The note is empty.", field="body")
    note = ReviewerNote.objects.create(application=application, author=reviewer, body=body)
    audit_record(actor=reviewer, action="application.note", target=note, application=application, meta=meta)
    return note


@dataclass
class BulkResult:
    decided: list[int] = field(default_factory=list)
    conflicts: dict[int, str] = field(default_factory=dict)


def applications_bulk_decide(
    *, application_ids: list[int], reviewer: User, decision: str, meta: RequestMeta, reason: str = ""
) -> BulkResult:
    """Approve or reject many; each is its own transaction, and conflicts are reported, not fatal.

    A rejection reason may use the {name} and {release} placeholders: each applicant gets their own.
    """
    _require_reviewer(reviewer)
    if decision not in {"approve", "reject"}:
        raise InvalidInput("The decision must be 'approve' or 'reject'.", field="decision")
    if decision == "reject" and not reason.strip():
        raise InvalidInput("A bulk rejection needs a reason.", field="reason")
    result = BulkResult()
    for application in Application.objects.filter(pk__in=application_ids).select_related("release", "applicant"):
        try:
            if decision == "approve":
                application_approve(application=application, reviewer=reviewer, meta=meta)
            else:
                application_reject(
                    application=application,
                    reviewer=reviewer,
                    reason=_fill_placeholders(reason, application),
                    meta=meta,
                )
            result.decided.append(application.pk)
        except Conflict as exc:
            result.conflicts[application.pk] = exc.message
    missing = set(application_ids) - set(result.decided) - set(result.conflicts)
    for pk in sorted(missing):
        result.conflicts[pk] = f"Application #{pk} does not exist."
    return result


def _fill_placeholders(text: str, application: Application) -> str:
    return text.replace("{release}", application.release.name).replace("{name}", application.full_name)


def rejection_template_render(*, template: RejectionTemplate, application: Application) -> str:
    return _fill_placeholders(template.body, application)


# --- Grants -----------------------------------------------------------------------------------


def grant_request_renewal(
    *, grant: Grant, user: User, meta: RequestMeta, license_version_id: int | None
) -> Application:
    """A self-service renewal: a new application copied from the last one, marked as a renewal."""
    if grant.user_id != user.pk:
        raise NotAllowed("Only the grant holder can ask to renew it.")
    if grant.status != GrantStatus.ACTIVE or grant.expires_at <= timezone.now():
        raise NotAllowed("This grant is no longer active: apply again instead of renewing.")
    window = timedelta(days=settings.GRANT_RENEWAL_WINDOW_DAYS)
    if grant.expires_at - timezone.now() > window:
        raise NotAllowed(
            f"Renewal opens {settings.GRANT_RENEWAL_WINDOW_DAYS} days before expiry, on "
            f"{grant.expires_at - window:%Y-%m-%d}."
        )
    previous = grant.application
    if previous is None:
        raise NotAllowed("This grant was made by an operator; ask them to extend it.")
    data = ApplicationInput(
        full_name=previous.full_name,
        affiliation=previous.affiliation,
        organization_type=previous.organization_type,
        role=previous.role,
        country=previous.country,
        research_purpose=previous.research_purpose,
        intended_use=previous.intended_use,
        publications=list(previous.publications),
        license_version_id=license_version_id,
        non_commercial_attested=True,
        accept_license=True,
    )
    return application_submit(applicant=user, release=grant.release, data=data, meta=meta, renewal_of=grant)


def grant_revoke(*, grant: Grant, actor: User, reason: str, meta: RequestMeta) -> Grant:
    if not (actor.is_reviewer or actor.is_staff):
        raise NotAllowed("Only reviewers and operators can revoke grants.")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the grant is revoked; the holder is told.", field="reason")
    with transaction.atomic():
        changed = Grant.objects.filter(pk=grant.pk, status=GrantStatus.ACTIVE).update(
            status=GrantStatus.REVOKED, revoked_at=timezone.now(), revoked_by=actor, revoke_reason=reason
        )
        if not changed:
            raise Conflict(f"Grant #{grant.pk} is already revoked.")
        grant.refresh_from_db()
        audit_record(
            actor=actor,
            action="grant.revoke",
            target=grant,
            application=grant.application,
            meta=meta,
            before={"status": GrantStatus.ACTIVE},
            after={"status": GrantStatus.REVOKED, "reason": reason},
        )
        notify(
            user=grant.user,
            subject=f"Your access to {grant.release.name} was revoked",
            body=f"Reason: {reason}",
            url=reverse("my-applications"),
        )
    return grant


def license_version_publish(*, license_id: int, version: str, text: str, actor: User | None) -> LicenseVersion:
    """Publish a new license version; every holder must accept it again before their next use."""
    lv = LicenseVersion.objects.create(license_id=license_id, version=version, text=text, published_at=timezone.now())
    audit_record(actor=actor, action="license.publish", target=lv, meta=SYSTEM, after={"version": version})
    return lv


def grants_remind_expiring(*, now: datetime | None = None) -> int:
    """Notify each holder once when their grant enters the renewal window."""
    now = now or timezone.now()
    window_end = now + timedelta(days=settings.GRANT_RENEWAL_WINDOW_DAYS)
    due = Grant.objects.filter(
        status=GrantStatus.ACTIVE, expires_at__gt=now, expires_at__lte=window_end, expiry_reminder_sent_at__isnull=True
    ).select_related("user", "release")
    sent = 0
    for grant in due:
        # Claim the reminder first, so two sweepers never send it twice.
        if not Grant.objects.filter(pk=grant.pk, expiry_reminder_sent_at__isnull=True).update(
            expiry_reminder_sent_at=now
        ):
            continue
        notify(
            user=grant.user,
            subject=f"Your access to {grant.release.name} expires on {grant.expires_at:%Y-%m-%d}",
            body="You can ask for a renewal from your access page; a reviewer confirms it.",
            url=reverse("my-applications"),
        )
        sent += 1
    return sent


# --- Notifications ----------------------------------------------------------------------------


def notifications_mark_read(*, user: User, ids: list[int]) -> int:
    """Mark the user's own notifications among `ids` as read; returns how many changed."""
    from access.models import Notification

    return Notification.objects.filter(user=user, pk__in=ids, read_at__isnull=True).update(read_at=timezone.now())
