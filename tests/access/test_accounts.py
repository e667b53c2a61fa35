"""Accounts through the browser's eyes: sign-up and verification, throttled sign-in, password reset,
profile and API keys."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
from django.core import mail, signing
from django.urls import reverse
from django.utils import timezone

from access import throttle
from access.models import ApiKey, AuditEvent, User
from access.services.accounts import email_verification_token
from tests import factories
from tests.conftest import PASSWORD, login

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a different long passphrase"


def _link_path(body: str) -> str:
    url = re.search(r"https?://\S+", body)
    assert url, f"no link in email body: {body!r}"
    return urlparse(url.group(0)).path


def _signup(client: Any, **overrides: str) -> Any:
    data = {
        "email": "carol@mpi-inf.mpg.de",
        "full_name": "Carol Chen",
        "affiliation": "MPI for Informatics",
        "password": PASSWORD,
        "password_again": PASSWORD,
    }
    data.update(overrides)
    return client.post(reverse("signup"), data)


# --- Sign-up and verification -----------------------------------------------------------------


def test_signup_sends_verification_link_that_verifies(client: Any, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = _signup(client)
    assert response.status_code == 302
    user = User.objects.get(email="carol@mpi-inf.mpg.de")
    assert user.full_name == "Carol Chen" and user.affiliation == "MPI for Informatics"
    assert not user.email_verified
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["carol@mpi-inf.mpg.de"]
    assert mail.outbox[0].subject == "Confirm your email address"

    # Signed in right away, and told to verify on every page until done.
    page = client.get(reverse("profile"))
    assert page.status_code == 200
    assert b'data-testid="verify-banner"' in page.content
    assert b"Not verified" in page.content

    response = client.get(_link_path(mail.outbox[0].body), follow=True)
    assert response.status_code == 200
    user.refresh_from_db()
    assert user.email_verified
    assert b'data-testid="verify-banner"' not in response.content
    assert b"is verified" in response.content


def test_verification_link_works_when_signed_out(client: Any) -> None:
    user = factories.make_user("dora@uni.edu", verified=False)
    response = client.get(reverse("verify-email", args=[email_verification_token(user)]))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    user.refresh_from_db()
    assert user.email_verified


def test_bad_verification_token_says_so(client: Any) -> None:
    response = client.get(reverse("verify-email", args=["not-a-token"]))
    assert response.status_code == 400
    assert b"This verification link is not valid" in response.content


def test_expired_verification_token_says_so(client: Any, settings: Any) -> None:
    user = factories.make_user("dora@uni.edu", verified=False)
    token = email_verification_token(user)
    settings.EMAIL_VERIFICATION_MAX_AGE = timedelta(seconds=-1)
    response = client.get(reverse("verify-email", args=[token]))
    assert response.status_code == 400
    assert b"This verification link has expired" in response.content
    user.refresh_from_db()
    assert not user.email_verified


def test_resend_verification_for_signed_in_unverified_user(
    client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    user = factories.make_user("dora@uni.edu", verified=False)
    login(client, user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("verify-resend"), follow=True)
    assert b"We sent a new confirmation link" in response.content
    assert len(mail.outbox) == 1
    # A second click within the cooldown sends nothing.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("verify-resend"), follow=True)
    assert b"Wait a minute" in response.content
    assert len(mail.outbox) == 1


def test_resend_needs_sign_in_and_post(client: Any, applicant: Any) -> None:
    response = client.post(reverse("verify-resend"))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    login(client, applicant)
    assert client.get(reverse("verify-resend")).status_code == 405


def test_duplicate_email_is_an_error_on_the_field(client: Any, applicant: Any) -> None:
    response = _signup(client, email="ALICE@uni-heidelberg.de", full_name="Someone Else")
    assert response.status_code == 400
    form = response.context["form"]
    assert "An account with this email already exists" in form.errors["email"][0]
    assert b"Someone Else" in response.content  # nothing typed is lost
    assert User.objects.filter(email__iexact="alice@uni-heidelberg.de").count() == 1


def test_weak_password_and_mismatch_are_field_errors(client: Any) -> None:
    response = _signup(client, password="12345", password_again="12345")
    assert response.status_code == 400
    assert response.context["form"].errors["password"]
    response = _signup(client, password_again="something else entirely")
    assert "The two passwords differ" in response.context["form"].errors["password_again"][0]
    assert not User.objects.exists()


# --- Sign-in and throttling -------------------------------------------------------------------


def _login(client: Any, email: str, password: str, **extra: Any) -> Any:
    return client.post(reverse("login"), {"email": email, "password": password}, **extra)


def test_login_with_email_and_password_and_next(client: Any, applicant: Any) -> None:
    response = client.post(
        reverse("login") + "?next=/access/", {"email": "Alice@Uni-Heidelberg.de", "password": PASSWORD}
    )
    assert response.status_code == 302 and response.url == "/access/"
    assert client.get(reverse("profile")).status_code == 200


def test_login_refuses_offsite_next(client: Any, applicant: Any) -> None:
    response = client.post(
        reverse("login") + "?next=https://evil.example/", {"email": applicant.email, "password": PASSWORD}
    )
    assert response.status_code == 302 and "evil.example" not in response.url


def test_wrong_password_keeps_email_and_explains(client: Any, applicant: Any) -> None:
    response = _login(client, applicant.email, "wrong password")
    assert response.status_code == 400
    assert b"The email or password is incorrect" in response.content
    assert applicant.email.encode() in response.content
    assert "_auth_user_id" not in client.session


def test_lockout_after_max_failures_refuses_correct_password(client: Any, applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 3
    settings.LOGIN_LOCKOUT_SECONDS = 600
    for _ in range(2):
        assert _login(client, applicant.email, "wrong").status_code == 400
    third = _login(client, applicant.email, "wrong")
    assert third.status_code == 429
    response = _login(client, applicant.email, PASSWORD)
    assert response.status_code == 429
    assert response["Retry-After"]
    text = response.content.decode()
    assert "Too many failed sign-in attempts for this account. Try again in 10 minutes, or reset your password." in text
    assert "_auth_user_id" not in client.session


def test_lockout_ends_after_window_and_success_resets_counter(
    client: Any, applicant: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.LOGIN_MAX_FAILURES = 2
    settings.LOGIN_LOCKOUT_SECONDS = 60
    start = throttle._now()
    monkeypatch.setattr(throttle, "_now", lambda: start)
    _login(client, applicant.email, "wrong")
    _login(client, applicant.email, "wrong")
    assert _login(client, applicant.email, PASSWORD).status_code == 429

    monkeypatch.setattr(throttle, "_now", lambda: start + 61)
    assert _login(client, applicant.email, PASSWORD).status_code == 302
    client.post(reverse("logout"))
    # The success cleared the counter: one new failure does not lock.
    assert _login(client, applicant.email, "wrong").status_code == 400
    assert _login(client, applicant.email, PASSWORD).status_code == 302


def test_lockout_is_per_email(client: Any, applicant: Any, other_applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        _login(client, applicant.email, "wrong")
    assert _login(client, applicant.email, PASSWORD).status_code == 429
    assert _login(client, other_applicant.email, PASSWORD).status_code == 302


def test_ip_lockout_at_higher_limit_across_emails(client: Any, applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 2  # per IP: 2 * 4 = 8
    for i in range(8):
        _login(client, f"nobody{i}@example.org", "wrong", REMOTE_ADDR="203.0.113.9")
    response = _login(client, applicant.email, PASSWORD, REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 429
    assert b"from your network" in response.content
    assert _login(client, applicant.email, PASSWORD, REMOTE_ADDR="198.51.100.1").status_code == 302


def test_logout_is_post_only(client: Any, applicant: Any) -> None:
    login(client, applicant)
    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout")).status_code == 302
    assert "_auth_user_id" not in client.session


# --- Password reset ---------------------------------------------------------------------------


def test_password_reset_end_to_end_also_ends_lockout(client: Any, applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 2
    _login(client, applicant.email, "wrong")
    _login(client, applicant.email, "wrong")
    assert _login(client, applicant.email, PASSWORD).status_code == 429

    response = client.post(reverse("password_reset"), {"email": applicant.email})
    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [applicant.email]
    assert mail.outbox[0].subject == "Reset your OpenRelease password"
    path = _link_path(mail.outbox[0].body)

    form_page = client.get(path, follow=True)  # Django swaps the token for a session marker
    assert form_page.status_code == 200 and form_page.context["validlink"]
    set_url = form_page.redirect_chain[-1][0]
    done = client.post(set_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert done.status_code == 302 and done.url == reverse("password_reset_complete")

    assert _login(client, applicant.email, PASSWORD).status_code == 400
    assert _login(client, applicant.email, NEW_PASSWORD).status_code == 302
    # The link works once.
    client.post(reverse("logout"))
    again = client.get(path, follow=True)
    assert not again.context["validlink"]
    assert b"This link does not work" in again.content


def test_password_reset_for_unknown_email_reveals_nothing(client: Any) -> None:
    response = client.post(reverse("password_reset"), {"email": "ghost@example.org"})
    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert mail.outbox == []


# --- Profile ----------------------------------------------------------------------------------


def test_profile_update(client: Any, applicant: Any) -> None:
    login(client, applicant)
    page = client.get(reverse("profile"))
    assert b"Alice Adams" in page.content and b"Verified on" in page.content
    response = client.post(reverse("profile"), {"full_name": "Alice B. Adams", "affiliation": "EMBL"})
    assert response.status_code == 302
    applicant.refresh_from_db()
    assert (applicant.full_name, applicant.affiliation) == ("Alice B. Adams", "EMBL")
    assert AuditEvent.objects.filter(action="user.update_profile", actor=applicant).exists()


def test_profile_needs_sign_in(client: Any) -> None:
    response = client.get(reverse("profile"))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# --- API keys ---------------------------------------------------------------------------------


def test_api_key_created_shown_once_and_stored_hashed(client: Any, applicant: Any) -> None:
    login(client, applicant)
    expiry = (timezone.now() + timedelta(days=30)).date()
    response = client.post(reverse("api-keys"), {"name": "cluster", "expires_at": expiry.isoformat()})
    assert response.status_code == 200
    raw = response.context["raw_key"]
    assert raw.startswith("orp_") and raw.encode() in response.content
    key = ApiKey.objects.get(user=applicant)
    assert key.key_hash == ApiKey.hash(raw) and raw not in key.key_hash
    assert key.expires_at.date() == expiry
    # Never again.
    listing = client.get(reverse("api-keys"))
    assert raw.encode() not in listing.content
    assert key.key_prefix.encode() in listing.content and b"cluster" in listing.content


def test_api_key_form_errors_name_the_field(client: Any, applicant: Any) -> None:
    login(client, applicant)
    response = client.post(reverse("api-keys"), {"name": "old", "expires_at": "2000-01-01"})
    assert response.status_code == 400
    assert "The expiry must be in the future." in response.context["form"].errors["expires_at"]
    assert b'value="old"' in response.content
    assert not ApiKey.objects.exists()


def test_api_key_revoke_and_other_users_key_is_404(client: Any, applicant: Any, other_applicant: Any) -> None:
    from access.services.api_keys import api_key_create

    mine, _ = api_key_create(user=applicant, name="mine")
    theirs, _ = api_key_create(user=other_applicant, name="theirs")
    login(client, applicant)
    assert client.post(reverse("api-key-revoke", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert client.get(reverse("api-key-revoke", args=[mine.pk])).status_code == 405
    response = client.post(reverse("api-key-revoke", args=[mine.pk]), follow=True)
    assert response.status_code == 200 and b"is revoked" in response.content
    mine.refresh_from_db()
    assert mine.revoked_at is not None and not mine.is_usable


def test_api_keys_page_needs_sign_in(client: Any, applicant: Any) -> None:
    from access.services.api_keys import api_key_create

    key, _ = api_key_create(user=applicant, name="mine")
    assert client.get(reverse("api-keys")).status_code == 302
    assert client.post(reverse("api-key-revoke", args=[key.pk])).status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is None


def test_token_signed_for_another_purpose_does_not_verify(client: Any) -> None:
    user = factories.make_user("dora@uni.edu", verified=False)
    token = signing.TimestampSigner(salt="something-else").sign_object({"u": user.pk, "e": user.email})
    assert client.get(reverse("verify-email", args=[token])).status_code == 400
    user.refresh_from_db()
    assert not user.email_verified
