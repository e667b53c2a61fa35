"""The operators' admin.

Reviewers work in /review/; the admin is for operators who look after the catalog, accounts and
templates. Rows that are evidence (the audit log, license acceptances, API key hashes) are read-only
here, workflow state (status, decisions, versions) is read-only too so that decisions keep going through
the services, and the two state changes operators need here (publishing a license version, revoking a
grant or API key) call the same services as the portal, so they are audited the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from access.errors import AccessError
from access.forms import AdminLoginForm
from access.models import (
    ApiKey,
    Application,
    ApplicationMessage,
    AuditEvent,
    DataCard,
    Grant,
    GrantStatus,
    License,
    LicenseAcceptance,
    LicenseVersion,
    ModelCard,
    ModelFamily,
    Notification,
    RejectionTemplate,
    Release,
    ReviewerNote,
    User,
)
from access.services.api_keys import api_key_revoke
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from access.services.licenses import license_version_publish


def _admin_meta(request: HttpRequest) -> RequestMeta:
    return RequestMeta.from_request(request)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable, never added, changed or deleted from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Accounts ---------------------------------------------------------------------------------


class EmailUserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email already exists.")
        return email


class EmailUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name", "affiliation", "email_verified_at")}),
        (
            "Permissions",
            {
                "fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions"),
                "description": "Reviewers are the members of the Reviewers group.",
            },
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "usable_password", "password1", "password2")}),)
    list_display = ("email", "full_name", "affiliation", "email_verified_at", "is_staff", "is_active")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    search_fields = ("email", "full_name", "affiliation")
    ordering = ("email",)
    readonly_fields = ("last_login", "date_joined")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "key_prefix", "user__email")
    list_select_related = ("user",)
    readonly_fields = (
        "user",
        "name",
        "key_prefix",
        "key_hash",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    actions = ("revoke_keys",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created by their owner, who sees the raw key once

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead, so the audit trail keeps the key

    @admin.action(description="Revoke the selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset.filter(revoked_at__isnull=True))
        for key in keys:
            api_key_revoke(key=key, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, f"{len(keys)} API key(s) revoked.", messages.SUCCESS)


# --- Catalog ----------------------------------------------------------------------------------


class LicenseVersionInline(admin.StackedInline):
    """Versions are immutable: add a new one to change the license (holders then accept it again)."""

    model = LicenseVersion
    extra = 0
    fields = ("version", "text", "published_at")
    readonly_fields = ("published_at",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(License)
class LicenseAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "current")
    search_fields = ("name", "slug")
    prepopulated_fields: ClassVar[dict[str, tuple[str, ...]]] = {"slug": ("name",)}
    inlines = (LicenseVersionInline,)

    @admin.display(description="Current version")
    def current(self, obj: License) -> str:
        version = obj.current_version
        return version.version if version else "—"

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not LicenseVersion:
            return super().save_formset(request, form, formset, change)
        # New versions go through the service: it stamps the time and writes the audit event.
        for version in formset.save(commit=False):
            if version.pk is None:
                license_version_publish(
                    license_id=form.instance.pk,
                    version=version.version,
                    text=version.text,
                    actor=request.user,  # type: ignore[arg-type]
                )


@admin.register(LicenseVersion)
class LicenseVersionAdmin(ReadOnlyAdmin):
    list_display = ("license", "version", "published_at")
    list_filter = ("license",)
    list_select_related = ("license",)


@admin.register(ModelFamily)
class ModelFamilyAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "architecture")
    list_filter = ("architecture",)
    search_fields = ("name", "slug", "organization")
    prepopulated_fields: ClassVar[dict[str, tuple[str, ...]]] = {"slug": ("name",)}


@admin.register(DataCard)
class DataCardAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "size_tokens")
    search_fields = ("title", "slug")


class ModelCardInline(admin.StackedInline):
    model = ModelCard
    extra = 0
    max_num = 1


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ("name", "family", "size_label", "access_tier", "license", "is_listed", "sort_order")
    list_filter = ("access_tier", "is_listed", "family")
    list_editable = ("is_listed", "sort_order")
    list_select_related = ("family", "license")
    search_fields = ("name", "slug")
    prepopulated_fields: ClassVar[dict[str, tuple[str, ...]]] = {"slug": ("name",)}
    inlines = (ModelCardInline,)


@admin.register(ModelCard)
class ModelCardAdmin(admin.ModelAdmin):
    list_display = ("release", "version", "release_date")
    list_select_related = ("release",)


@admin.register(LicenseAcceptance)
class LicenseAcceptanceAdmin(ReadOnlyAdmin):
    list_display = ("user", "release", "license_version", "accepted_at", "ip_address")
    list_filter = ("release",)
    search_fields = ("user__email",)
    list_select_related = ("user", "release", "license_version__license")
    date_hierarchy = "accepted_at"


# --- Applications -----------------------------------------------------------------------------


class ApplicationMessageInline(admin.TabularInline):
    model = ApplicationMessage
    extra = 0
    fields = ("created_at", "author", "kind", "body")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReviewerNoteInline(ApplicationMessageInline):
    model = ReviewerNote
    fields = ("created_at", "author", "body")
    readonly_fields = fields


@admin.register(Application)
class ApplicationAdmin(admin.ModelAdmin):
    list_display = ("id", "full_name", "email", "affiliation", "release", "status", "submitted_at", "decided_by")
    list_filter = ("status", "release", "organization_type", "country")
    search_fields = ("full_name", "email", "affiliation", "=id")
    list_select_related = ("release", "decided_by")
    date_hierarchy = "submitted_at"
    inlines = (ApplicationMessageInline, ReviewerNoteInline)
    # Who applied, what they accepted and what was decided is evidence: decide in the reviewer dashboard.
    readonly_fields = (
        "review_link",
        "applicant",
        "release",
        "status",
        "version",
        "renewal_of",
        "email",
        "license_acceptance",
        "non_commercial_attested",
        "submitted_ip",
        "submitted_at",
        "updated_at",
        "decided_at",
        "decided_by",
        "reviewer",
        "rejection_reason",
    )

    @admin.display(description="Reviewer dashboard")
    def review_link(self, obj: Application) -> str:
        return format_html(
            '<a href="{}">Open #{} in the reviewer dashboard</a>', reverse("review-detail", args=[obj.pk]), obj.pk
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # applicants apply through the portal, which checks the license and the rules

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApplicationMessage)
class ApplicationMessageAdmin(ReadOnlyAdmin):
    list_display = ("application", "author", "kind", "created_at")
    list_filter = ("kind",)
    list_select_related = ("application__release", "author")


@admin.register(ReviewerNote)
class ReviewerNoteAdmin(ReadOnlyAdmin):
    list_display = ("application", "author", "created_at")
    list_select_related = ("application__release", "author")


@admin.register(RejectionTemplate)
class RejectionTemplateAdmin(admin.ModelAdmin):
    list_display = ("title", "is_active")
    list_editable = ("is_active",)
    search_fields = ("title", "body")
    fields = ("title", "body", "is_active")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.base_fields["body"].help_text = "{name} becomes the applicant's name and {release} the release's name."
        return form


# --- Grants -----------------------------------------------------------------------------------


class GrantActionForm(admin.helpers.ActionForm):
    reason = forms.CharField(required=False, label="Reason (for revoking)", max_length=2000)


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "release", "starts_at", "expires_at", "display_status", "application")
    list_filter = ("status", "release")
    search_fields = ("user__email", "=id")
    list_select_related = ("user", "release", "application")
    date_hierarchy = "starts_at"
    readonly_fields = (
        "user",
        "release",
        "application",
        "status",
        "starts_at",
        "expires_at",
        "created_at",
        "revoked_at",
        "revoked_by",
        "revoke_reason",
        "superseded_at",  # set by the approval that issued the next grant; clearing it would break the constraint
    )
    action_form = GrantActionForm
    actions = ("revoke_grants",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # grants come from approved applications

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Status")
    def display_status(self, obj: Grant) -> str:
        return obj.display_status

    @admin.action(description="Revoke the selected grants (give a reason above)")
    def revoke_grants(self, request: HttpRequest, queryset: QuerySet[Grant]) -> None:
        reason = request.POST.get("reason", "").strip()
        if not reason:
            self.message_user(
                request,
                "Nothing revoked: write the reason in the “Reason” box next to the action; the holder is told.",
                messages.ERROR,
            )
            return
        revoked = 0
        for grant in queryset.filter(status=GrantStatus.ACTIVE).select_related("user", "release", "application"):
            try:
                grant_revoke(grant=grant, actor=request.user, reason=reason, meta=_admin_meta(request))  # type: ignore[arg-type]
                revoked += 1
            except AccessError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"{revoked} grant(s) revoked.", messages.SUCCESS)


# --- Audit, notifications ---------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor", "action", "target_type", "target_id", "application", "ip_address")
    list_filter = ("action", "target_type")
    search_fields = ("actor__email", "target_id", "=application__id")
    list_select_related = ("actor", "application__release")
    date_hierarchy = "created_at"


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("user", "subject", "created_at", "read_at", "email_sent_at", "email_attempts")
    list_filter = ("email_sent_at",)
    search_fields = ("user__email", "subject")
    list_select_related = ("user",)
    readonly_fields = ("user", "subject", "body", "url", "created_at", "read_at", "email_sent_at", "email_attempts")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


# The admin's password form goes through the portal's sign-in throttle, so /admin/login/ is no side door.
admin.site.login_form = AdminLoginForm
