"""seed_catalog and seed_demo: idempotent, faithful to the published figures, safe around live rows."""

from __future__ import annotations

import dataclasses
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from access import catalog_data
from access.models import (
    AccessTier,
    Application,
    ApplicationMessage,
    ApplicationStatus,
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
    User,
)
from access.selectors import is_reviewer
from access.services.audit import RequestMeta
from access.services.licenses import license_accept
from access.services.reviews import rejection_template_render
from tests import factories

CATALOG_MODELS = (License, LicenseVersion, ModelFamily, DataCard, Release, ModelCard, RejectionTemplate)
DEMO_MODELS = (User, Application, ApplicationMessage, Grant, LicenseAcceptance, AuditEvent, Notification)


def seed(*, command: str = "seed_catalog") -> str:
    out = StringIO()
    call_command(command, stdout=out, stderr=StringIO())
    return out.getvalue()


def counts(models: tuple[Any, ...]) -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in models}


def replace_release(slug: str, **changes: Any) -> tuple[catalog_data.ReleaseData, ...]:
    return tuple(dataclasses.replace(r, **changes) if r.slug == slug else r for r in catalog_data.RELEASES)


@pytest.fixture
def seeded(db: Any) -> None:
    seed()


# --- seed_catalog -----------------------------------------------------------------------------


def test_seed_catalog_twice_gives_the_same_rows(db: Any) -> None:
    seed()
    first = counts(CATALOG_MODELS)
    pks = dict(Release.objects.values_list("slug", "pk"))
    output = seed()
    assert counts(CATALOG_MODELS) == first
    assert dict(Release.objects.values_list("slug", "pk")) == pks
    assert first["Release"] == len(catalog_data.RELEASES) == 15
    assert first["ModelFamily"] == 3 and first["License"] == 4 and first["RejectionTemplate"] == 4
    assert "created" not in output and "updated" not in output  # the second run wrote nothing


@pytest.mark.parametrize(
    ("slug", "layers", "heads", "hidden", "ffn", "vocab", "positions", "parameters", "tp"),
    [
        ("opt-125m", 12, 12, 768, 3072, 50272, 2048, 125_000_000, 2),
        ("opt-2-7b", 32, 32, 2560, 10240, 50272, 2048, 2_700_000_000, 4),
        ("opt-66b", 64, 72, 9216, 36864, 50272, 2048, 66_000_000_000, 8),
        ("opt-175b", 96, 96, 12288, 49152, 50272, 2048, 175_000_000_000, 8),
        ("llama-7b", 32, 32, 4096, 11008, 32000, 2048, 6_700_000_000, None),
        ("llama-33b", 60, 52, 6656, 17920, 32000, 2048, 32_500_000_000, None),
        ("llama-65b", 80, 64, 8192, 22016, 32000, 2048, 65_200_000_000, None),
    ],
)
def test_release_figures_match_the_published_sizes(
    seeded: None,
    slug: str,
    layers: int,
    heads: int,
    hidden: int,
    ffn: int,
    vocab: int,
    positions: int,
    parameters: int,
    tp: int | None,
) -> None:
    release = Release.objects.get(slug=slug)
    assert (release.n_layers, release.n_heads, release.hidden_size, release.ffn_size) == (layers, heads, hidden, ffn)
    assert release.n_kv_heads == heads  # multi-head attention in both families
    assert (release.vocab_size, release.max_positions) == (vocab, positions)
    assert release.parameters == parameters
    assert release.training_tp == tp
    assert release.n_experts is None and release.active_parameters is None


def test_opt_350m_summary_explains_its_different_layout(seeded: None) -> None:
    summary = Release.objects.get(slug="opt-350m").summary
    assert "post-LayerNorm" in summary and "512-wide" in summary and "project-in" in summary


def test_moe_releases_follow_the_glam_pattern(seeded: None) -> None:
    glam = Release.objects.get(slug="glam-moe-1-2t")
    assert (glam.n_experts, glam.experts_per_token, glam.moe_every) == (64, 2, 2)
    assert (glam.n_layers, glam.n_heads, glam.hidden_size, glam.ffn_size, glam.vocab_size) == (
        64,
        128,
        8192,
        32768,
        256000,
    )
    assert glam.parameters == 1_200_000_000_000
    assert glam.active_parameters is not None and 0.07 < glam.active_parameters / glam.parameters < 0.09
    small = Release.objects.get(slug="moe-small")
    assert (small.n_experts, small.experts_per_token, small.moe_every) == (64, 2, 2)
    assert small.family == glam.family and small.family.get_architecture_display().startswith("Top-2")
    assert "not Google's" in glam.family.summary


def test_moe_small_matches_the_training_stacks_entry(seeded: None) -> None:
    pytest.importorskip("torch")
    from training.config import get_config

    cfg = get_config("glam-0.1b-64e")
    small = Release.objects.get(slug="moe-small")
    assert (small.n_layers, small.n_heads, small.hidden_size, small.ffn_size) == (
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.ffn_dim,
    )
    assert (small.vocab_size, small.max_positions, small.n_experts, small.moe_every) == (
        cfg.vocab_size,
        cfg.max_seq_len,
        cfg.n_expert,
        cfg.moe_every,
    )
    assert small.parameters == cfg.num_parameters()
    assert small.active_parameters == cfg.num_parameters(active=True)


def test_dense_releases_match_the_training_stacks_size_table(seeded: None) -> None:
    pytest.importorskip("torch")
    from training.config import get_config

    for release in Release.objects.filter(family__slug__in=["opt", "llama"]):
        cfg = get_config(release.slug.replace("-1-3b", "-1.3b").replace("-2-7b", "-2.7b").replace("-6-7b", "-6.7b"))
        assert (release.n_layers, release.n_heads, release.hidden_size, release.ffn_size) == (
            cfg.n_layer,
            cfg.n_head,
            cfg.n_embd,
            cfg.ffn_dim,
        ), release.slug


def test_every_release_has_cards_and_a_current_license(seeded: None) -> None:
    for release in Release.objects.select_related("license", "data_card", "model_card"):
        assert release.model_card.intended_use and release.model_card.training_compute, release.slug
        assert release.data_card.datasets, release.slug
        current = release.license.current_version
        assert current is not None and current.version == "1.0", release.slug
        assert "non-commercial" in current.text.lower() and "no warranty" in current.text.lower()
        assert release.is_listed


def test_model_cards_carry_the_release_dates_and_size_specific_compute(seeded: None) -> None:
    assert {c.release_date.isoformat() for c in ModelCard.objects.filter(release__family__slug="opt")} == {"2022-05-03"}
    assert {c.release_date.isoformat() for c in ModelCard.objects.filter(release__family__slug="llama")} == {
        "2023-02-24"
    }
    assert "992" in ModelCard.objects.get(release__slug="opt-175b").training_compute
    assert "992" not in ModelCard.objects.get(release__slug="opt-13b").training_compute
    assert "1.0T" in ModelCard.objects.get(release__slug="llama-7b").training_compute
    assert "1.4T" in ModelCard.objects.get(release__slug="llama-65b").training_compute


def test_access_tiers_and_licenses(seeded: None) -> None:
    opt = Release.objects.filter(family__slug="opt")
    assert set(opt.exclude(slug="opt-175b").values_list("access_tier", flat=True)) == {AccessTier.OPEN}
    assert opt.exclude(slug="opt-175b").count() == 8
    assert Release.objects.get(slug="opt-175b").access_tier == AccessTier.GATED
    others = Release.objects.filter(family__slug__in=["llama", "glam-moe"])
    assert others.count() == 6
    assert set(others.values_list("access_tier", flat=True)) == {AccessTier.GATED}
    assert Release.objects.get(slug="opt-175b").license.slug == "opt-175b-license"
    assert set(opt.exclude(slug="opt-175b").values_list("license__slug", flat=True)) == {"opt-open-license"}
    assert set(Release.objects.filter(family__slug="llama").values_list("license__slug", flat=True)) == {
        "llama-license"
    }
    assert set(Release.objects.filter(family__slug="glam-moe").values_list("license__slug", flat=True)) == {
        "moe-research-license"
    }


def test_data_card_shares_are_fractions_summing_to_one(seeded: None) -> None:
    cards = {card.slug: card for card in DataCard.objects.all()}
    assert set(cards) == {"opt-data", "llama-data", "glam-data"}
    for card in cards.values():
        shares = [entry["share"] for entry in card.datasets]
        assert all(0 < share <= 1 for share in shares), card.slug
        assert sum(shares) == pytest.approx(1.0, abs=0.01), card.slug
    llama = {entry["name"]: entry["share"] for entry in cards["llama-data"].datasets}
    assert llama["English CommonCrawl"] == 0.67 and llama["C4"] == 0.15 and llama["StackExchange"] == 0.02
    assert cards["opt-data"].size_tokens == 180_000_000_000
    assert cards["llama-data"].size_tokens == 1_400_000_000_000
    assert cards["glam-data"].size_tokens == 1_600_000_000_000
    assert "MinHash" in cards["opt-data"].preprocessing


def test_every_slug_can_be_linked(seeded: None) -> None:
    for slug in Release.objects.values_list("slug", flat=True):
        assert reverse("release-detail", args=[slug]).endswith(f"/{slug}/")


def test_changed_text_updates_rows_in_place(seeded: None, monkeypatch: pytest.MonkeyPatch) -> None:
    release = Release.objects.get(slug="opt-175b")
    before = counts(CATALOG_MODELS)
    card = dataclasses.replace(release_data("opt-175b").model_card, limitations="Rewritten limitations.")
    monkeypatch.setattr(catalog_data, "RELEASES", replace_release("opt-175b", summary="New summary.", model_card=card))
    monkeypatch.setattr(
        catalog_data,
        "FAMILIES",
        tuple(
            dataclasses.replace(f, summary="New OPT summary.") if f.slug == "opt" else f for f in catalog_data.FAMILIES
        ),
    )
    output = seed()
    assert "releases: 1 updated, 14 unchanged" in output
    release.refresh_from_db()
    assert release.summary == "New summary."
    assert ModelCard.objects.get(release=release).limitations == "Rewritten limitations."
    assert ModelFamily.objects.get(slug="opt").summary == "New OPT summary."
    assert counts(CATALOG_MODELS) == before
    assert Release.objects.get(slug="opt-175b").pk == release.pk


def release_data(slug: str) -> catalog_data.ReleaseData:
    return next(r for r in catalog_data.RELEASES if r.slug == slug)


def test_reseeding_keeps_applications_and_never_deletes_releases(
    seeded: None, applicant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = Release.objects.get(slug="opt-175b")
    application = factories.make_application(applicant, release)
    monkeypatch.setattr(catalog_data, "RELEASES", tuple(r for r in catalog_data.RELEASES if r.slug != "opt-175b"))
    seed()
    assert Release.objects.filter(pk=release.pk).exists()
    application.refresh_from_db()
    assert application.release_id == release.pk and application.license_acceptance.license_version.version == "1.0"


def test_license_text_changes_in_place_only_while_nobody_accepted_it(
    seeded: None, applicant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_llama_text(text: str) -> tuple[catalog_data.LicenseData, ...]:
        return tuple(
            dataclasses.replace(lic, versions=(dataclasses.replace(lic.versions[0], text=text),))
            if lic.slug == "llama-license"
            else lic
            for lic in catalog_data.LICENSES
        )

    monkeypatch.setattr(catalog_data, "LICENSES", with_llama_text("Edited before anyone accepted."))
    seed()
    version = License.objects.get(slug="llama-license").current_version
    assert version is not None and version.text == "Edited before anyone accepted."

    release = Release.objects.get(slug="llama-7b")
    license_accept(user=applicant, release=release, license_version_id=version.pk, meta=RequestMeta())
    monkeypatch.setattr(catalog_data, "LICENSES", with_llama_text("Edited after someone accepted."))
    with pytest.raises(CommandError, match="new LicenseVersionData with a higher version number"):
        seed()
    version.refresh_from_db()
    assert version.text == "Edited before anyone accepted."


def test_rejection_templates_keep_operator_edits_and_render_placeholders(seeded: None, applicant: Any) -> None:
    template = RejectionTemplate.objects.get(title="Commercial use indicated")
    template.body = "Edited by an operator for {name}: {release}."
    template.save()
    seed()
    template.refresh_from_db()
    assert template.body == "Edited by an operator for {name}: {release}."

    default = RejectionTemplate.objects.get(title="Insufficient detail about research purpose")
    application = factories.make_application(applicant, Release.objects.get(slug="opt-175b"))
    rendered = rejection_template_render(template=default, application=application)
    assert "Alice Adams" in rendered and "OPT-175B" in rendered and "{" not in rendered


def test_reviewers_group_has_the_review_permission(seeded: None) -> None:
    user = factories.make_user("new-reviewer@example.org")
    from django.contrib.auth.models import Group

    user.groups.add(Group.objects.get(name="Reviewers"))
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    assert is_reviewer(user)


# --- seed_demo --------------------------------------------------------------------------------


def test_seed_demo_creates_the_personas(db: Any) -> None:
    output = seed(command="seed_demo")
    admin = User.objects.get(email="admin@demo.local")
    assert admin.is_superuser and admin.is_staff and admin.check_password("admin-demo-pass")
    reviewer = User.objects.get(email="reviewer@demo.local")
    assert is_reviewer(reviewer) and not reviewer.is_staff and reviewer.check_password("reviewer-demo-pass")
    researcher = User.objects.get(email="researcher@demo.local")
    assert researcher.email_verified and researcher.affiliation == "University of Example"
    assert not is_reviewer(researcher) and researcher.check_password("researcher-demo-pass")
    second = User.objects.get(email="applicant@demo.local")
    assert second.email_verified and not is_reviewer(second)
    for email, password in [
        ("admin@demo.local", "admin-demo-pass"),
        ("reviewer@demo.local", "reviewer-demo-pass"),
        ("researcher@demo.local", "researcher-demo-pass"),
        ("applicant@demo.local", "applicant-demo-pass"),
    ]:
        assert email in output and password in output
    assert Release.objects.count() == 15  # the catalog came first


def test_seed_demo_creates_one_application_in_each_state(db: Any) -> None:
    seed(command="seed_demo")
    statuses = {a.status: a for a in Application.objects.select_related("applicant", "release")}
    assert set(statuses) == {
        ApplicationStatus.SUBMITTED,
        ApplicationStatus.NEEDS_INFO,
        ApplicationStatus.APPROVED,
        ApplicationStatus.REJECTED,
    }
    approved = statuses[ApplicationStatus.APPROVED]
    grant = Grant.objects.get(application=approved)
    assert grant.status == GrantStatus.ACTIVE and grant.user == approved.applicant and grant.is_current()
    question = statuses[ApplicationStatus.NEEDS_INFO].messages.get()
    assert question.kind == ApplicationMessage.Kind.INFO_REQUEST and question.author.email == "reviewer@demo.local"
    rejected = statuses[ApplicationStatus.REJECTED]
    assert rejected.release.name in rejected.rejection_reason and "{" not in rejected.rejection_reason
    assert rejected.decided_by.email == "reviewer@demo.local"
    assert all(a.release.is_gated for a in statuses.values())
    # Made through the services: each submission is in the audit log.
    assert AuditEvent.objects.filter(action="application.submit").count() == 4


def test_seed_demo_is_idempotent_and_resets_demo_passwords(db: Any) -> None:
    seed(command="seed_demo")
    first = counts(DEMO_MODELS + CATALOG_MODELS)
    researcher = User.objects.get(email="researcher@demo.local")
    researcher.set_password("changed during the demo")
    researcher.save()
    output = seed(command="seed_demo")
    assert counts(DEMO_MODELS + CATALOG_MODELS) == first
    assert output.count(" kept: ") == 4
    researcher.refresh_from_db()
    assert researcher.check_password("researcher-demo-pass")


def test_seed_demo_refuses_in_production(db: Any, settings: Any) -> None:
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="PORTAL_ENV"):
        seed(command="seed_demo")
    assert not User.objects.filter(email__endswith="@demo.local").exists()
    assert not Release.objects.exists()
