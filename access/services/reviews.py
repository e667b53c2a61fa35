"""The reviewer's side of the workflow: take, question, approve, reject, note, and bulk decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from access import selectors
from access.errors import AccessError, InvalidInput, NotAllowed
from access.models import (
    Application,
    ApplicationMessage,
    ApplicationStatus,
    Grant,
    RejectionTemplate,
    ReviewerNote,
    User,
)
from access.models.applications import PENDING_STATUSES
from access.services.audit import RequestMeta, audit_record
from access.services.grants import grant_for_approval
from access.services.workflow import notify_applicant, transition


def _require_reviewer_of(application: Application, reviewer: User) -> None:
    """Reviewers act on other people's applications only: nobody takes, questions or decides their own."""
    selectors.require_reviewer(reviewer, to="review applications")
    if application.applicant_id == reviewer.pk:
        raise NotAllowed(f"Application #{application.pk} is your own: another reviewer must handle it.")


def application_start_review(
    *, application: Application, reviewer: User, meta: RequestMeta, expected_version: int | None = None
) -> Application:
    _require_reviewer_of(application, reviewer)
    with transaction.atomic():
        application = transition(
            application,
            actor=reviewer,
            action="application.start_review",
            to=ApplicationStatus.IN_REVIEW,
            allowed_from=(ApplicationStatus.SUBMITTED,),
            meta=meta,
            expected_version=expected_version,
            reviewer=reviewer,
        )
        notify_applicant(application, ApplicationStatus.IN_REVIEW)
    return application


def application_request_info(
    *, application: Application, reviewer: User, message: str, meta: RequestMeta, expected_version: int | None = None
) -> Application:
    _require_reviewer_of(application, reviewer)
    message = message.strip()
    if not message:
        raise InvalidInput("Write the question the applicant should answer.", field="message")
    with transaction.atomic():
        application = transition(
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
        notify_applicant(application, ApplicationStatus.NEEDS_INFO, question=message)
    return application


def application_approve(
    *,
    application: Application,
    reviewer: User,
    meta: RequestMeta,
    expires_at: datetime | None = None,
    expected_version: int | None = None,
) -> Grant:
    """Approve, and give the applicant access until `expires_at` (see `grant_for_approval`)."""
    _require_reviewer_of(application, reviewer)
    now = timezone.now()
    if expires_at is None:
        expires_at = now + timedelta(days=settings.GRANT_DEFAULT_DAYS)
    if expires_at <= now:
        raise InvalidInput("The grant must expire in the future.", field="expires_at")
    with transaction.atomic():
        application = transition(
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
        grant = grant_for_approval(application=application, reviewer=reviewer, expires_at=expires_at, meta=meta)
        notify_applicant(application, ApplicationStatus.APPROVED, expiry=grant.expires_at)
    return grant


def application_reject(
    *, application: Application, reviewer: User, reason: str, meta: RequestMeta, expected_version: int | None = None
) -> Application:
    _require_reviewer_of(application, reviewer)
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Give the applicant a reason: pick a template or write one.", field="reason")
    with transaction.atomic():
        application = transition(
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
        notify_applicant(application, ApplicationStatus.REJECTED)
    return application


def application_add_note(*, application: Application, reviewer: User, body: str, meta: RequestMeta) -> ReviewerNote:
    _require_reviewer_of(application, reviewer)
    body = body.strip()
    if not body:
        raise InvalidInput("The note is empty.", field="body")
    note = ReviewerNote.objects.create(application=application, author=reviewer, body=body)
    audit_record(actor=reviewer, action="application.note", target=note, application=application, meta=meta)
    return note


@dataclass
class BulkResult:
    decided: list[int] = field(default_factory=list)
    conflicts: dict[int, str] = field(default_factory=dict)  # id -> why it was not decided


def applications_bulk_decide(
    *, application_ids: list[int], reviewer: User, decision: str, meta: RequestMeta, reason: str = ""
) -> BulkResult:
    """Approve or reject many; each is its own transaction, and one that cannot be decided (changed
    first, the reviewer's own, no such id...) is reported with the reason, not fatal to the others.

    A rejection reason may use the {name} and {release} placeholders: each applicant gets their own.
    """
    selectors.require_reviewer(reviewer, to="decide applications")
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
        except AccessError as exc:
            result.conflicts[application.pk] = exc.message
    missing = set(application_ids) - set(result.decided) - set(result.conflicts)
    for pk in sorted(missing):
        result.conflicts[pk] = f"Application #{pk} does not exist."
    return result


def _fill_placeholders(text: str, application: Application) -> str:
    return text.replace("{release}", application.release.name).replace("{name}", application.full_name)


def rejection_template_render(*, template: RejectionTemplate, application: Application) -> str:
    return _fill_placeholders(template.body, application)
