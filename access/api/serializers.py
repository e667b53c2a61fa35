"""Serializers of the API.

Input serializers check types and sizes strictly, so nothing reaches a service as the wrong type;
the rules of the workflow (cool-downs, minimum lengths, DOIs...) stay in the services.
"""

from __future__ import annotations

from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from access.limits import (
    FILTER_DATE_ERROR,
    MAX_FILTER_DATE,
    MAX_ID,
    MAX_NAME,
    MAX_PUBLICATION,
    MAX_PUBLICATIONS,
    MAX_SEARCH,
    MAX_TEXT,
    MAX_VERSION,
    MIN_FILTER_DATE,
)
from access.models import (
    AccessTier,
    ApiKey,
    Application,
    ApplicationMessage,
    ApplicationStatus,
    Architecture,
    DataCard,
    Grant,
    LicenseAcceptance,
    ModelCard,
    ModelFamily,
    OrganizationType,
    Release,
    ReviewerNote,
)


def id_field(**kwargs: Any) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, **kwargs)


def filter_date_field(**kwargs: Any) -> serializers.DateField:
    """A date to filter by, bounded so that computing the day after it cannot overflow."""
    return serializers.DateField(
        validators=[
            MinValueValidator(MIN_FILTER_DATE, FILTER_DATE_ERROR),
            MaxValueValidator(MAX_FILTER_DATE, FILTER_DATE_ERROR),
        ],
        **kwargs,
    )


def inline_choice(choices: list[tuple[str, str]] | list[str], **kwargs: Any) -> serializers.ChoiceField:
    """A choice field whose enum is written inline in the schema, not as a shared component.

    drf-spectacular names enum components after the field; two different `status` sets (applications,
    grants), or one set under two names, would otherwise collide and warn.
    """
    values = [choice[0] if isinstance(choice, tuple) else choice for choice in choices]

    @extend_schema_field({"type": "string", "enum": values})
    class InlineChoiceField(serializers.ChoiceField):
        pass

    return InlineChoiceField(choices=choices, **kwargs)


class ErrorSerializer(serializers.Serializer):
    """Every error the API returns."""

    code = serializers.CharField(help_text="Stable machine-readable code: invalid, not_allowed, conflict, not_found…")
    detail = serializers.CharField(help_text="What went wrong and how to fix it, in a sentence.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Input errors by field name (present for 400 responses).",
    )


# --- Catalog ----------------------------------------------------------------------------------


class FamilySummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelFamily
        fields = ("slug", "name", "organization", "architecture")


class FamilySerializer(serializers.ModelSerializer):
    releases = serializers.SerializerMethodField()

    class Meta:
        model = ModelFamily
        fields = ("slug", "name", "organization", "summary", "architecture", "releases")

    @extend_schema_field(serializers.ListField(child=serializers.SlugField()))
    def get_releases(self, family: ModelFamily) -> list[str]:
        return [release.slug for release in family.releases.all() if release.is_listed]


class ArchitectureSerializer(serializers.Serializer):
    family = inline_choice(Architecture.choices, source="family.architecture", help_text="The family's architecture.")
    parameters = serializers.IntegerField()
    active_parameters = serializers.IntegerField(allow_null=True)
    n_layers = serializers.IntegerField()
    n_heads = serializers.IntegerField()
    n_kv_heads = serializers.IntegerField()
    head_dim = serializers.IntegerField()
    hidden_size = serializers.IntegerField()
    ffn_size = serializers.IntegerField()
    vocab_size = serializers.IntegerField()
    max_positions = serializers.IntegerField()
    n_experts = serializers.IntegerField(allow_null=True)
    experts_per_token = serializers.IntegerField(allow_null=True)
    moe_every = serializers.IntegerField(allow_null=True)
    training_tp = serializers.IntegerField(allow_null=True)


class LicenseSummarySerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    current_version_id = serializers.SerializerMethodField()
    current_version = serializers.SerializerMethodField()

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_current_version_id(self, license_: Any) -> int | None:
        current = self._current(license_)
        return current.pk if current else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_current_version(self, license_: Any) -> str | None:
        current = self._current(license_)
        return current.version if current else None

    def _current(self, license_: Any) -> Any:
        # One query per license, not two: both fields read the same row.
        cache = self.context.setdefault("_current_versions", {})
        if license_.pk not in cache:
            cache[license_.pk] = license_.current_version
        return cache[license_.pk]


class ModelCardSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelCard
        fields = (
            "release_date",
            "version",
            "model_type",
            "intended_use",
            "out_of_scope_use",
            "evaluation_data",
            "limitations",
            "training_compute",
        )


class DataCardSerializer(serializers.ModelSerializer):
    class Meta:
        model = DataCard
        fields = (
            "slug",
            "title",
            "motivation",
            "datasets",
            "size_tokens",
            "raw_data",
            "labels",
            "splits",
            "collection",
            "preprocessing",
        )


class ReleaseSerializer(serializers.ModelSerializer):
    family = FamilySummarySerializer()
    access_tier = serializers.ChoiceField(choices=AccessTier.choices)
    architecture = ArchitectureSerializer(source="*")
    license = LicenseSummarySerializer()
    model_card = serializers.SerializerMethodField()
    data_card = DataCardSerializer()

    class Meta:
        model = Release
        fields = (
            "slug",
            "name",
            "size_label",
            "summary",
            "family",
            "access_tier",
            "architecture",
            "license",
            "model_card",
            "data_card",
        )

    @extend_schema_field(ModelCardSerializer(allow_null=True))
    def get_model_card(self, release: Release) -> dict[str, Any] | None:
        # A missing reverse one-to-one raises RelatedObjectDoesNotExist, an AttributeError.
        card = getattr(release, "model_card", None)
        return ModelCardSerializer(card).data if card is not None else None


class LicenseTextSerializer(serializers.Serializer):
    release = serializers.SlugField()
    license = serializers.CharField(help_text="The license's name.")
    license_slug = serializers.SlugField()
    version_id = serializers.IntegerField(help_text="Send this back as `license_version_id` to accept it.")
    version = serializers.CharField()
    published_at = serializers.DateTimeField()
    text = serializers.CharField()


class LicenseAcceptInputSerializer(serializers.Serializer):
    license_version_id = id_field(help_text="The `version_id` of the license text you read.")


class LicenseAcceptanceSerializer(serializers.ModelSerializer):
    release = serializers.SlugField(source="release.slug")
    license_version_id = serializers.IntegerField()
    license_version = serializers.CharField(source="license_version.version")

    class Meta:
        model = LicenseAcceptance
        fields = ("id", "release", "license_version_id", "license_version", "accepted_at")


class AccessCheckSerializer(serializers.Serializer):
    allowed = serializers.BooleanField()
    reason = serializers.ChoiceField(
        choices=[
            "ok",
            "anonymous",
            "inactive",
            "license_not_accepted",
            "license_changed",
            "no_grant",
            "grant_expired",
            "grant_revoked",
        ]
    )
    message = serializers.CharField()
    grant_expires_at = serializers.DateTimeField(allow_null=True)


# --- Applications (applicant side) ------------------------------------------------------------


class ApplicationCreateSerializer(serializers.Serializer):
    """Mirrors services.applications.ApplicationInput, plus the release to apply for."""

    release = serializers.SlugField(max_length=50, help_text="Slug of a gated release, e.g. opt-175b.")
    full_name = serializers.CharField(max_length=MAX_NAME)
    affiliation = serializers.CharField(max_length=MAX_NAME)
    organization_type = serializers.ChoiceField(choices=OrganizationType.choices)
    role = serializers.CharField(max_length=MAX_NAME)
    country = serializers.CharField(max_length=2, help_text="ISO 3166-1 alpha-2 code such as DE or US.")
    research_purpose = serializers.CharField(max_length=MAX_TEXT)
    intended_use = serializers.CharField(max_length=MAX_TEXT)
    publications = serializers.ListField(
        child=serializers.CharField(max_length=MAX_PUBLICATION),
        max_length=MAX_PUBLICATIONS,
        required=False,
        default=list,
        help_text=f"DOIs or https URLs, at most {MAX_PUBLICATIONS}.",
    )
    license_version_id = id_field(help_text="The `version_id` of the license text you read and accept.")
    accept_license = serializers.BooleanField(help_text="Must be true.")
    non_commercial_attested = serializers.BooleanField(help_text="Must be true: the use is non-commercial.")


class MessageSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()

    class Meta:
        model = ApplicationMessage
        fields = ("id", "kind", "author", "body", "created_at")

    def get_author(self, message: ApplicationMessage) -> str:
        if message.kind == ApplicationMessage.Kind.INFO_REQUEST:
            # Applicants see "Reviewer", not the reviewer's name or address.
            return "Reviewer" if not self.context.get("reviewer_view") else message.author.get_full_name()
        return message.author.get_full_name()


class ApplicationSerializer(serializers.ModelSerializer):
    """What the applicant sees of their own application."""

    release = serializers.SlugField(source="release.slug")
    release_name = serializers.CharField(source="release.name")
    status = serializers.ChoiceField(choices=ApplicationStatus.choices)
    organization_type = serializers.ChoiceField(choices=OrganizationType.choices)
    publications = serializers.ListField(child=serializers.CharField())
    license_version = serializers.CharField(source="license_acceptance.license_version.version")
    renewal_of = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = Application
        fields = (
            "id",
            "release",
            "release_name",
            "status",
            "version",
            "renewal_of",
            "full_name",
            "email",
            "affiliation",
            "organization_type",
            "role",
            "country",
            "research_purpose",
            "intended_use",
            "publications",
            "license_version",
            "non_commercial_attested",
            "submitted_at",
            "updated_at",
            "decided_at",
            "rejection_reason",
        )


class ApplicationListQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ApplicationStatus.choices, required=False)


class AnswerInputSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=MAX_TEXT, help_text="Your answer to the reviewer's question.")


# --- Review -----------------------------------------------------------------------------------


class QueueQuerySerializer(serializers.Serializer):
    """The dashboard's filters (selectors.QueueFilters). Without `status`: submitted and in review."""

    status = serializers.MultipleChoiceField(choices=ApplicationStatus.choices, required=False)
    release = serializers.SlugField(max_length=50, required=False)
    organization_type = serializers.ChoiceField(choices=OrganizationType.choices, required=False)
    country = serializers.CharField(max_length=2, required=False, help_text="ISO 3166-1 alpha-2 code.")
    submitted_from = filter_date_field(required=False)
    submitted_to = filter_date_field(required=False)
    search = serializers.CharField(
        max_length=MAX_SEARCH, required=False, allow_blank=True, help_text="Matches name, email or affiliation."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("submitted_from"), attrs.get("submitted_to")
        if start and end and start > end:
            raise serializers.ValidationError({"submitted_to": "Must not be before submitted_from."})
        return attrs


class QueueItemSerializer(serializers.ModelSerializer):
    release = serializers.SlugField(source="release.slug")
    status = serializers.ChoiceField(choices=ApplicationStatus.choices)
    organization_type = serializers.ChoiceField(choices=OrganizationType.choices)
    reviewer = serializers.SerializerMethodField()

    class Meta:
        model = Application
        fields = (
            "id",
            "release",
            "status",
            "version",
            "full_name",
            "email",
            "affiliation",
            "organization_type",
            "country",
            "submitted_at",
            "reviewer",
        )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_reviewer(self, application: Application) -> str | None:
        return application.reviewer.get_full_name() if application.reviewer_id else None


class NoteSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()

    class Meta:
        model = ReviewerNote
        fields = ("id", "author", "body", "created_at")

    def get_author(self, note: ReviewerNote) -> str:
        return note.author.get_full_name()


class SignalSerializer(serializers.Serializer):
    level = serializers.ChoiceField(choices=["warn", "info"])
    message = serializers.CharField()


class ReviewApplicationSerializer(ApplicationSerializer):
    """Everything a reviewer sees: the application, the thread, internal notes and risk signals."""

    applicant_id = serializers.IntegerField()
    reviewer = serializers.SerializerMethodField()
    decided_by = serializers.SerializerMethodField()
    submitted_ip = serializers.IPAddressField(allow_null=True)
    messages = serializers.SerializerMethodField()
    notes = serializers.SerializerMethodField()
    signals = serializers.SerializerMethodField()

    class Meta(ApplicationSerializer.Meta):
        fields = (
            *ApplicationSerializer.Meta.fields,
            "applicant_id",
            "reviewer",
            "decided_by",
            "submitted_ip",
            "messages",
            "notes",
            "signals",
        )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_reviewer(self, application: Application) -> str | None:
        return application.reviewer.get_full_name() if application.reviewer_id else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_decided_by(self, application: Application) -> str | None:
        return application.decided_by.get_full_name() if application.decided_by_id else None

    @extend_schema_field(MessageSerializer(many=True))
    def get_messages(self, application: Application) -> list[dict[str, Any]]:
        rows = application.messages.select_related("author")
        return MessageSerializer(rows, many=True, context={"reviewer_view": True}).data

    @extend_schema_field(NoteSerializer(many=True))
    def get_notes(self, application: Application) -> list[dict[str, Any]]:
        return NoteSerializer(application.notes.select_related("author"), many=True).data

    @extend_schema_field(SignalSerializer(many=True))
    def get_signals(self, application: Application) -> list[dict[str, Any]]:
        return SignalSerializer(self.context.get("signals", []), many=True).data


class StartReviewInputSerializer(serializers.Serializer):
    expected_version = serializers.IntegerField(
        min_value=1,
        max_value=MAX_VERSION,
        required=False,
        allow_null=True,
        help_text="The application `version` you saw; a newer version answers 409.",
    )


class ApproveInputSerializer(serializers.Serializer):
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When the grant ends; default: the standard grant length."
    )
    expected_version = serializers.IntegerField(
        min_value=1,
        max_value=MAX_VERSION,
        required=False,
        allow_null=True,
        help_text="The application `version` you reviewed; a newer version answers 409.",
    )


class RejectInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_TEXT, help_text="Shown to the applicant.")
    expected_version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION, required=False, allow_null=True)


class RequestInfoInputSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=MAX_TEXT, help_text="The question the applicant should answer.")
    expected_version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION, required=False, allow_null=True)


class NoteInputSerializer(serializers.Serializer):
    body = serializers.CharField(max_length=MAX_TEXT, help_text="Internal; never shown to the applicant.")


class BulkInputSerializer(serializers.Serializer):
    ids = serializers.ListField(child=id_field(), min_length=1, max_length=200)
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    reason = serializers.CharField(
        max_length=MAX_TEXT, required=False, default="", allow_blank=True, help_text="Required to reject."
    )


class BulkResultSerializer(serializers.Serializer):
    decided = serializers.ListField(child=serializers.IntegerField())
    conflicts = serializers.DictField(
        child=serializers.CharField(), help_text="Application id → why it was not decided."
    )


class WeekSerializer(serializers.Serializer):
    week_start = serializers.DateField()
    decisions = serializers.IntegerField()


class MetricsSerializer(serializers.Serializer):
    pending = serializers.IntegerField()
    decided_30d = serializers.IntegerField()
    median_hours_30d = serializers.FloatField(allow_null=True)
    p90_hours_30d = serializers.FloatField(allow_null=True)
    weekly = WeekSerializer(many=True)


# --- Grants and API keys ----------------------------------------------------------------------


class GrantSerializer(serializers.ModelSerializer):
    release = serializers.SlugField(source="release.slug")
    release_name = serializers.CharField(source="release.name")
    # Not an enum in the schema on purpose: drf-spectacular names enums after the field, and other apps'
    # `status`/`state` enums would collide with this one (a schema warning).
    state = serializers.CharField(source="display_status", help_text="active, expired or revoked (derived).")
    active = serializers.SerializerMethodField()

    class Meta:
        model = Grant
        fields = (
            "id",
            "release",
            "release_name",
            "application",
            "state",
            "active",
            "starts_at",
            "expires_at",
            "revoked_at",
            "revoke_reason",
        )

    def get_active(self, grant: Grant) -> bool:
        return grant.is_current()


class ApiKeySerializer(serializers.ModelSerializer):
    usable = serializers.BooleanField(source="is_usable")

    class Meta:
        model = ApiKey
        fields = ("id", "name", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at", "usable")


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="The key itself. Shown only in this response: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "key")


class ApiKeyCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
