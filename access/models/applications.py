from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ApplicationStatus(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"
    IN_REVIEW = "in_review", "In review"
    NEEDS_INFO = "needs_info", "Needs information"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


# Statuses in which a reviewer may decide, and in which the application counts as open.
PENDING_STATUSES = (ApplicationStatus.SUBMITTED, ApplicationStatus.IN_REVIEW)
OPEN_STATUSES = (*PENDING_STATUSES, ApplicationStatus.NEEDS_INFO)


class OrganizationType(models.TextChoices):
    ACADEMIC = "academic", "Academic"
    GOVERNMENT = "government", "Government"
    CIVIL_SOCIETY = "civil_society", "Civil society"
    INDUSTRY_LAB = "industry_lab", "Industry research lab"
    OTHER = "other", "Other"


class Application(models.Model):
    """A request to use one gated release under its license."""

    applicant = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="applications")
    release = models.ForeignKey("access.Release", on_delete=models.PROTECT, related_name="applications")
    status = models.CharField(max_length=16, choices=ApplicationStatus.choices, default=ApplicationStatus.SUBMITTED)
    # Bumped by every transition: a decision names the version it saw, so a stale page cannot decide.
    version = models.PositiveIntegerField(default=1)
    renewal_of = models.ForeignKey(
        "access.Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="renewal_applications"
    )

    full_name = models.CharField(max_length=200)
    email = models.EmailField(help_text="The applicant's verified address at the time of applying.")
    affiliation = models.CharField(max_length=200)
    organization_type = models.CharField(max_length=16, choices=OrganizationType.choices)
    role = models.CharField(max_length=200)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2 code.")
    research_purpose = models.TextField()
    intended_use = models.TextField()
    publications = models.JSONField(default=list, blank=True)
    license_acceptance = models.ForeignKey(
        "access.LicenseAcceptance", on_delete=models.PROTECT, related_name="applications"
    )
    non_commercial_attested = models.BooleanField(default=False)
    submitted_ip = models.GenericIPAddressField(null=True, blank=True)

    submitted_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="decisions"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviewing"
    )
    rejection_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["submitted_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["applicant", "release"],
                condition=Q(status__in=["submitted", "in_review", "needs_info"]),
                name="one_open_application_per_user_release",
            )
        ]
        indexes = [
            models.Index(fields=["status", "submitted_at"]),
            models.Index(fields=["release", "status"]),
            models.Index(fields=["decided_at"]),
        ]
        permissions = [("review_application", "Can review and decide license applications")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.full_name} → {self.release}"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class ApplicationMessage(models.Model):
    """The thread between reviewers and the applicant (visible to both)."""

    class Kind(models.TextChoices):
        INFO_REQUEST = "info_request", "Information requested"
        APPLICANT_REPLY = "applicant_reply", "Applicant's answer"

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]


class ReviewerNote(models.Model):
    """Internal notes: never shown to the applicant."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]


class RejectionTemplate(models.Model):
    """Editable reason templates the reviewer starts a rejection from."""

    title = models.CharField(max_length=100, unique=True)
    body = models.TextField()
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title
