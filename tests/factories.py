"""Rows for tests, made through the services wherever a service exists."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.utils import timezone

PASSWORD = "correct horse battery staple"
RESEARCH_PURPOSE = (
    "We study how the calibration of large language models changes with scale, comparing the "
    "confidence of next-token predictions with accuracy on held-out question answering benchmarks, "
    "and we need the largest checkpoint to complete the scaling curve for our paper."
)


def make_user(email: str, *, full_name: str = "", affiliation: str = "", verified: bool = True) -> Any:
    from access.models import User

    user = User.objects.create_user(email, PASSWORD, full_name=full_name, affiliation=affiliation)
    if verified:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
    return user


def make_reviewer(email: str, *, full_name: str = "") -> Any:
    from access.services.accounts import reviewer_group

    user = make_user(email, full_name=full_name, affiliation="Release team")
    user.groups.add(reviewer_group())
    return user


def make_license(slug: str = "opt-175b-license", version: str = "1.0") -> Any:
    from access.models import License, LicenseVersion

    license_, _ = License.objects.get_or_create(slug=slug, defaults={"name": f"{slug} license"})
    LicenseVersion.objects.get_or_create(
        license=license_,
        version=version,
        defaults={"text": f"Non-commercial research license, version {version}.", "published_at": timezone.now()},
    )
    return license_


def make_release(*, slug: str, name: str, gated: bool) -> Any:
    from access.models import AccessTier, Architecture, DataCard, ModelCard, ModelFamily, Release

    family, _ = ModelFamily.objects.get_or_create(
        slug="opt",
        defaults={
            "name": "OPT",
            "organization": "Meta AI",
            "summary": "Open pre-trained transformers.",
            "architecture": Architecture.OPT,
        },
    )
    data_card, _ = DataCard.objects.get_or_create(
        slug="opt-data",
        defaults={
            "title": "OPT pre-training corpus",
            "motivation": "m",
            "datasets": [{"name": "The Pile", "share": 1.0}],
            "size_tokens": 180_000_000_000,
            "raw_data": "r",
            "labels": "l",
            "splits": "s",
            "collection": "c",
            "preprocessing": "p",
        },
    )
    release = Release.objects.create(
        family=family,
        slug=slug,
        name=name,
        size_label=name.split("-")[-1],
        access_tier=AccessTier.GATED if gated else AccessTier.OPEN,
        license=make_license(f"{slug}-license"),
        data_card=data_card,
        parameters=125_000_000,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        hidden_size=768,
        ffn_size=3072,
        vocab_size=50272,
        max_positions=2048,
    )
    ModelCard.objects.create(
        release=release,
        release_date=date(2022, 5, 3),
        version="1.0",
        model_type="decoder-only transformer",
        intended_use="research",
        out_of_scope_use="production",
        evaluation_data="e",
        limitations="l",
        training_compute="t",
    )
    return release


def application_input(release: Any, **overrides: Any) -> Any:
    from access.services.applications import ApplicationInput

    values: dict[str, Any] = dict(
        full_name="Alice Adams",
        affiliation="Heidelberg University",
        organization_type="academic",
        role="PhD student",
        country="DE",
        research_purpose=RESEARCH_PURPOSE,
        intended_use="Evaluation only; no fine-tuning, no deployment.",
        publications=["10.1234/calibration.2024", "https://arxiv.org/abs/2205.01068"],
        license_version_id=release.license.current_version.pk,
        non_commercial_attested=True,
        accept_license=True,
    )
    values.update(overrides)
    return ApplicationInput(**values)


def make_application(user: Any, release: Any, **overrides: Any) -> Any:
    from access.services.applications import application_submit
    from access.services.audit import RequestMeta

    return application_submit(
        applicant=user,
        release=release,
        data=application_input(release, **overrides),
        meta=RequestMeta(ip="127.0.0.1", user_agent="pytest"),
    )
