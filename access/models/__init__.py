"""Rows owned by the access app: accounts, the catalog, applications, grants, audit, notifications."""

from __future__ import annotations

from access.models.accounts import ApiKey, User
from access.models.applications import (
    Application,
    ApplicationMessage,
    ApplicationStatus,
    OrganizationType,
    RejectionTemplate,
    ReviewerNote,
)
from access.models.audit import AuditEvent
from access.models.catalog import (
    AccessTier,
    Architecture,
    DataCard,
    License,
    LicenseAcceptance,
    LicenseVersion,
    ModelCard,
    ModelFamily,
    Release,
)
from access.models.grants import Grant, GrantStatus
from access.models.notifications import Notification

__all__ = [
    "AccessTier",
    "ApiKey",
    "Application",
    "ApplicationMessage",
    "ApplicationStatus",
    "Architecture",
    "AuditEvent",
    "DataCard",
    "Grant",
    "GrantStatus",
    "License",
    "LicenseAcceptance",
    "LicenseVersion",
    "ModelCard",
    "ModelFamily",
    "Notification",
    "OrganizationType",
    "RejectionTemplate",
    "Release",
    "ReviewerNote",
    "User",
]
