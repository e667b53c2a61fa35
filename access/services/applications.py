"""The applicant's side of the workflow: who may apply, the application's fields, submit, answer, withdraw."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pycountry
from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from access import selectors
from access.errors import AccessError, Conflict, InvalidInput, NotAllowed
from access.limits import MAX_NAME, MAX_PUBLICATION, MAX_PUBLICATIONS, MAX_TEXT
from access.models import Application, ApplicationMessage, ApplicationStatus, Grant, OrganizationType, Release, User
from access.models.applications import OPEN_STATUSES
from access.notifications import notify_reviewers
from access.services.audit import RequestMeta, audit_record
from access.services.licenses import license_accept
from access.services.workflow import notify_applicant, transition

_DOI = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)$", re.IGNORECASE)


def normalize_publication(value: str) -> str:
    """A DOI (bare, doi: or doi.org URL) becomes `doi:10.x/y`; an http(s) URL is kept; anything else fails."""
    value = value.strip()
    if len(value) > MAX_PUBLICATION:
        raise InvalidInput(f"{value[:80]!r}… is longer than {MAX_PUBLICATION} characters.", field="publications")
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
        for name, limit in (
            ("full_name", MAX_NAME),
            ("affiliation", MAX_NAME),
            ("role", MAX_NAME),
            ("research_purpose", MAX_TEXT),
            ("intended_use", MAX_TEXT),
        ):
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
            cleaned, problems = [], []
            for publication in publications:
                try:
                    cleaned.append(normalize_publication(publication))
                except InvalidInput as exc:
                    problems.append(exc.message)
            if problems:
                # Every bad line at once, so one round trip fixes them all.
                errors["publications"] = " ".join(problems)
            self.publications = cleaned
        if not self.accept_license:
            errors["accept_license"] = "You must accept the license to apply."
        if not self.non_commercial_attested:
            errors["non_commercial_attested"] = "You must attest that your use is non-commercial."
        return errors


# A blocker caused by another row that may change soon (an open application, a current grant) is a
# conflict; one that only time or an operator lifts is a refusal.
_BLOCKER_ERRORS: dict[str, type[AccessError]] = {
    "open_application": Conflict,
    "renewal_pending": Conflict,
    "has_access": Conflict,
    "cooldown": NotAllowed,
    "grant_ended": NotAllowed,
    "operator_grant": NotAllowed,
    "too_early": NotAllowed,
}


def _ensure_can_apply(*, user: User, release: Release, renewal_of: Grant | None) -> None:
    if not release.is_gated:
        raise InvalidInput(
            f"{release.name} is an open release: accept its license and download, no application needed.",
            field="release",
        )
    if not user.email_verified:
        raise NotAllowed("Verify your email address first: we sent you a link when you signed up.")
    blocker = selectors.apply_blocker(user=user, release=release, renewal_of=renewal_of)
    if blocker is not None:
        raise _BLOCKER_ERRORS[blocker.code](blocker.message)


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
            notify_applicant(application, "received")
            notify_reviewers(
                subject=f"New application #{application.pk} for {release.name}",
                body=f"{application.full_name} ({application.affiliation}) applied for {release.name}.",
                url=reverse("review-detail", args=[application.pk]),
            )
    except IntegrityError:
        # The partial unique index caught a concurrent duplicate submission.
        raise Conflict(f"You already have an open application for {release.name}.") from None
    return application


def application_answer(*, application: Application, applicant: User, message: str, meta: RequestMeta) -> Application:
    if application.applicant_id != applicant.pk:
        raise NotAllowed("Only the applicant can answer this application's questions.")
    message = message.strip()
    if not message:
        raise InvalidInput("Write your answer before sending it.", field="message")
    with transaction.atomic():
        application = transition(
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
            only=[application.reviewer] if application.reviewer is not None else None,
        )
    return application


def application_withdraw(*, application: Application, applicant: User, meta: RequestMeta) -> Application:
    if application.applicant_id != applicant.pk:
        raise NotAllowed("Only the applicant can withdraw an application.")
    with transaction.atomic():
        application = transition(
            application,
            actor=applicant,
            action="application.withdraw",
            to=ApplicationStatus.WITHDRAWN,
            allowed_from=OPEN_STATUSES,
            meta=meta,
        )
        notify_applicant(application, ApplicationStatus.WITHDRAWN)
    return application
