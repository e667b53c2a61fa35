"""The application workflow through its services, against the real database."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import Application, ApplicationStatus, AuditEvent, Grant, LicenseVersion
from access.selectors import release_access_check
from access.services.applications import application_answer, application_withdraw
from access.services.audit import RequestMeta
from access.services.grants import grant_request_renewal, grant_revoke
from access.services.licenses import license_accept
from access.services.reviews import (
    application_approve,
    application_reject,
    application_request_info,
    application_start_review,
    applications_bulk_decide,
)
from tests import factories

META = RequestMeta(ip="10.0.0.1", user_agent="pytest")
pytestmark = pytest.mark.django_db


def test_full_workflow_creates_grant_and_audit_trail(application: Any, reviewer: Any, applicant: Any) -> None:
    assert not release_access_check(user=applicant, release=application.release)
    application_start_review(application=application, reviewer=reviewer, meta=META)
    application_request_info(application=application, reviewer=reviewer, message="Which benchmarks?", meta=META)
    assert application.status == ApplicationStatus.NEEDS_INFO
    application_answer(application=application, applicant=applicant, message="MMLU and TriviaQA.", meta=META)
    assert application.status == ApplicationStatus.IN_REVIEW
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    decision = release_access_check(user=applicant, release=application.release)
    assert decision.allowed and decision.grant == grant
    actions = list(AuditEvent.objects.filter(application=application).values_list("action", flat=True))
    assert actions == [
        "application.submit",
        "application.start_review",
        "application.request_info",
        "application.answer",
        "application.approve",
        "grant.create",
    ]
    first = AuditEvent.objects.get(application=application, action="application.approve")
    assert (
        first.before["status"] == "in_review" and first.after["status"] == "approved" and first.ip_address == "10.0.0.1"
    )


def test_second_decision_is_a_conflict(application: Any, reviewer: Any, second_reviewer: Any) -> None:
    application_approve(application=application, reviewer=reviewer, meta=META)
    stale = Application.objects.get(pk=application.pk)
    stale.status = ApplicationStatus.SUBMITTED  # what the second reviewer's page still shows
    with pytest.raises(Conflict, match="already approved by Rita Reviewer"):
        application_reject(application=stale, reviewer=second_reviewer, reason="No.", meta=META)
    assert Grant.objects.filter(application=application).count() == 1


def test_stale_version_cannot_decide(application: Any, reviewer: Any, applicant: Any) -> None:
    seen_version = application.version
    application_request_info(application=application, reviewer=reviewer, message="More?", meta=META)
    application_answer(application=application, applicant=applicant, message="Here.", meta=META)
    with pytest.raises(Conflict, match="changed since you opened it"):
        application_approve(application=application, reviewer=reviewer, meta=META, expected_version=seen_version)


@pytest.mark.django_db(transaction=True)
def test_concurrent_decisions_yield_one(
    applicant: Any, gated_release: Any, reviewer: Any, second_reviewer: Any
) -> None:
    application = factories.make_application(applicant, gated_release)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(who: Any, approve: bool) -> None:
        try:
            row = Application.objects.get(pk=application.pk)
            barrier.wait()
            if approve:
                application_approve(application=row, reviewer=who, meta=META)
            else:
                application_reject(application=row, reviewer=who, reason="Out of scope.", meta=META)
            outcomes.append("decided")
        except Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(reviewer, True)),
        threading.Thread(target=decide, args=(second_reviewer, False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "decided"]
    application.refresh_from_db()
    assert application.status in (ApplicationStatus.APPROVED, ApplicationStatus.REJECTED)
    assert Grant.objects.filter(application=application).count() == (1 if application.status == "approved" else 0)
    assert (
        AuditEvent.objects.filter(
            application=application, action__in=["application.approve", "application.reject"]
        ).count()
        == 1
    )


def test_one_open_application_per_user_and_release(application: Any, applicant: Any, gated_release: Any) -> None:
    with pytest.raises(Conflict, match="already have an open application"):
        factories.make_application(applicant, gated_release)


def test_reapply_after_rejection_waits_for_cooldown(
    application: Any, reviewer: Any, applicant: Any, gated_release: Any, settings: Any
) -> None:
    settings.REAPPLY_COOLDOWN_DAYS = 14
    application_reject(application=application, reviewer=reviewer, reason="Not enough detail.", meta=META)
    with pytest.raises(NotAllowed, match="apply again from"):
        factories.make_application(applicant, gated_release)
    Application.objects.filter(pk=application.pk).update(decided_at=timezone.now() - timedelta(days=15))
    assert factories.make_application(applicant, gated_release).status == ApplicationStatus.SUBMITTED


def test_unverified_email_cannot_apply(gated_release: Any) -> None:
    user = factories.make_user("new@uni.edu", verified=False)
    with pytest.raises(NotAllowed, match="Verify your email"):
        factories.make_application(user, gated_release)


def test_field_errors_are_reported_together(applicant: Any, gated_release: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        factories.make_application(
            applicant,
            gated_release,
            research_purpose="too short",
            country="XX",
            publications=["not a link"],
            non_commercial_attested=False,
        )
    errors = info.value.errors  # type: ignore[attr-defined]
    assert set(errors) == {"research_purpose", "country", "publications", "non_commercial_attested"}
    assert "at least" in errors["research_purpose"]
    assert not Application.objects.exists()


def test_publications_normalised(applicant: Any, gated_release: Any) -> None:
    app = factories.make_application(
        applicant, gated_release, publications=["https://doi.org/10.1000/XYZ.1", "doi:10.48550/arXiv.2205.01068", " "]
    )
    assert app.publications == ["doi:10.1000/XYZ.1", "doi:10.48550/arXiv.2205.01068"]


def test_revocation_applies_to_the_next_check(application: Any, reviewer: Any, applicant: Any) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    assert release_access_check(user=applicant, release=application.release).allowed
    grant_revoke(grant=grant, actor=reviewer, reason="Terms breached.", meta=META)
    decision = release_access_check(user=applicant, release=application.release)
    assert not decision.allowed and decision.reason == "grant_revoked"


def test_expired_grant_is_refused(application: Any, reviewer: Any, applicant: Any) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    Grant.objects.filter(pk=grant.pk).update(
        starts_at=timezone.now() - timedelta(days=400), expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert release_access_check(user=applicant, release=application.release).reason == "grant_expired"


def test_new_license_version_requires_reacceptance(application: Any, reviewer: Any, applicant: Any) -> None:
    release = application.release
    application_approve(application=application, reviewer=reviewer, meta=META)
    LicenseVersion.objects.create(
        license=release.license, version="2.0", text="New terms.", published_at=timezone.now() + timedelta(seconds=1)
    )
    assert release_access_check(user=applicant, release=release).reason == "license_changed"
    with pytest.raises(Conflict, match="changed while you were reading"):
        license_accept(
            user=applicant,
            release=release,
            license_version_id=release.license.versions.get(version="1.0").pk,
            meta=META,
        )
    license_accept(user=applicant, release=release, license_version_id=release.license.current_version.pk, meta=META)
    assert release_access_check(user=applicant, release=release).allowed


def test_renewal_extends_the_grant(application: Any, reviewer: Any, applicant: Any, settings: Any) -> None:
    grant = application_approve(
        application=application, reviewer=reviewer, meta=META, expires_at=timezone.now() + timedelta(days=400)
    )
    with pytest.raises(NotAllowed, match="Renewal opens"):
        grant_request_renewal(
            grant=grant, user=applicant, meta=META, license_version_id=application.release.license.current_version.pk
        )
    Grant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() + timedelta(days=5))
    grant.refresh_from_db()
    renewal = grant_request_renewal(
        grant=grant, user=applicant, meta=META, license_version_id=application.release.license.current_version.pk
    )
    assert renewal.renewal_of == grant and renewal.status == ApplicationStatus.SUBMITTED
    renewed = application_approve(application=renewal, reviewer=reviewer, meta=META)
    assert renewed.pk == grant.pk
    assert renewed.expires_at > timezone.now() + timedelta(days=300)


def test_withdraw_and_bulk(applicant: Any, other_applicant: Any, gated_release: Any, reviewer: Any) -> None:
    first = factories.make_application(applicant, gated_release)
    second = factories.make_application(other_applicant, gated_release)
    application_withdraw(application=first, applicant=applicant, meta=META)
    result = applications_bulk_decide(
        application_ids=[first.pk, second.pk, 99999], reviewer=reviewer, decision="approve", meta=META
    )
    assert result.decided == [second.pk]
    assert set(result.conflicts) == {first.pk, 99999}


def test_non_reviewer_cannot_decide(application: Any, other_applicant: Any) -> None:
    with pytest.raises(NotAllowed):
        application_approve(application=application, reviewer=other_applicant, meta=META)


def test_every_transition_notifies_the_applicant(
    application: Any, reviewer: Any, applicant: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        application_request_info(application=application, reviewer=reviewer, message="Q?", meta=META)
        application_answer(application=application, applicant=applicant, message="A.", meta=META)
        application_approve(application=application, reviewer=reviewer, meta=META)
    subjects = [m.subject for m in mail.outbox if m.to == [applicant.email]]
    assert any("need more information" in s for s in subjects)
    assert any("is approved" in s for s in subjects)
    assert any(m.to == [reviewer.email] and "answered" in m.subject for m in mail.outbox)


def test_audit_log_is_append_only(application: Any) -> None:
    event = AuditEvent.objects.filter(application=application).first()
    event.action = "tampered"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(action="x")


def test_postgres_refuses_audit_tampering_in_sql(application: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the trigger exists on PostgreSQL only")
    from django.db import DatabaseError, transaction

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE access_auditevent SET action = 'tampered'")


def test_expiry_reminder_sent_once(application: Any, reviewer: Any, applicant: Any) -> None:
    from access.models import Notification
    from access.services.grants import grants_remind_expiring

    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    assert grants_remind_expiring() == 0
    Grant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() + timedelta(days=3))
    assert grants_remind_expiring() == 1
    assert grants_remind_expiring() == 0
    assert Notification.objects.filter(user=applicant, subject__contains="expires on").count() == 1


def test_sweeper_resends_lost_emails(applicant: Any) -> None:
    from access.models import Notification
    from access.tasks import sweep_unsent_notifications

    lost = Notification.objects.create(user=applicant, subject="Lost in the broker", body="b")
    Notification.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    assert sweep_unsent_notifications() == 1
    lost.refresh_from_db()
    assert lost.email_sent_at is not None and any(m.subject == "Lost in the broker" for m in mail.outbox)
    assert sweep_unsent_notifications() == 0


def test_postgres_has_trigram_indexes_for_queue_search() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("trigram indexes exist on PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'access_application'")
        names = {row[0] for row in cursor.fetchall()}
    assert {f"access_application_{c}_trgm" for c in ("full_name", "email", "affiliation")} <= names


def test_a_dead_broker_does_not_fail_a_committed_action(
    application: Any, reviewer: Any, applicant: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The transition commits and the page succeeds; the sweeper sends the email later."""
    from access.models import Notification
    from portal.celery import app

    saved = {key: app.conf[key] for key in ("broker_url", "broker_transport_options")}
    app.conf.update(
        task_always_eager=False,
        broker_url="redis://127.0.0.1:1/0",  # nothing listens there
        broker_transport_options={"max_retries": 0},
    )
    try:
        with django_capture_on_commit_callbacks(execute=True):
            application_approve(application=application, reviewer=reviewer, meta=META)
    finally:
        app.conf.update(task_always_eager=True, **saved)
    application.refresh_from_db()
    assert application.status == ApplicationStatus.APPROVED
    assert Notification.objects.filter(
        user=applicant, subject__contains="approved", email_sent_at__isnull=True
    ).exists()


def test_reviewer_signals(gated_release: Any) -> None:
    from access.selectors import application_signals

    matching = factories.make_application(
        factories.make_user("ann@uni-heidelberg.de", full_name="Ann A"),
        gated_release,
        affiliation="Universität Heidelberg",
        full_name="Ann A",  # both apply from loopback, which matches no one: the name must
    )
    assert application_signals(matching) == []

    disposable = factories.make_application(factories.make_user("x@mailinator.com"), gated_release, full_name="Ann A")
    messages = [s.message for s in application_signals(disposable)]
    assert any("disposable" in m for m in messages)
    assert any(f"#{matching.pk}" in m and "the same name “Ann A”" in m for m in messages)

    mismatch = factories.make_application(
        factories.make_user("carl@acme-widgets.com"),
        gated_release,
        full_name="Carl C",
        affiliation="Stanford University",
    )
    warnings = [s for s in application_signals(mismatch) if s.level == "warn"]
    assert any("does not obviously match" in s.message for s in warnings)

    free = factories.make_application(factories.make_user("dora@gmail.com"), gated_release, full_name="Dora D")
    assert any(s.level == "info" and "free-mail" in s.message for s in application_signals(free))


def test_duplicate_signal_names_the_matching_address_and_ignores_loopback(gated_release: Any) -> None:
    from access.selectors import application_signals

    def apply(email: str, full_name: str, ip: str) -> Any:
        user = factories.make_user(email, full_name=full_name)
        application = factories.make_application(user, gated_release, full_name=full_name)
        Application.objects.filter(pk=application.pk).update(submitted_ip=ip)
        application.refresh_from_db()
        return application

    first = apply("dan@uni-heidelberg.de", "Dan D", "203.0.113.5")
    second = apply("eve@uni-heidelberg.de", "Eve E", "203.0.113.5")
    messages = [s.message for s in application_signals(second)]
    assert (
        f"Possible duplicate: application #{first.pk} from dan@uni-heidelberg.de has the same address 203.0.113.5."
        in messages
    )
    # Everyone on the demo machine or behind a local tool applies from loopback: that matches no one.
    apply("fay@uni-heidelberg.de", "Fay F", "127.0.0.1")
    apply("gus@uni-heidelberg.de", "Gus G", "::1")
    for local in (apply("hal@uni-heidelberg.de", "Hal H", "127.0.0.1"), apply("ida@uni-heidelberg.de", "Ida I", "::1")):
        assert not [s for s in application_signals(local) if "Possible duplicate" in s.message]
