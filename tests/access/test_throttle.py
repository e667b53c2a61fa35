"""The sign-in throttle: per account and address plus a looser per-address limit, the same for the
portal's form and the Django admin's, so a lockout never keeps an account's owner out from elsewhere."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from access import throttle
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.20"


def _login(client: Any, email: str, password: str, address: str) -> Any:
    return client.post(reverse("login"), {"email": email, "password": password}, REMOTE_ADDR=address)


def _admin_login(client: Any, email: str, password: str, address: str = ATTACKER) -> Any:
    return client.post(
        reverse("admin:login"), {"username": email, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def test_attacker_lockout_does_not_lock_the_owner_out_from_their_address(
    client: Any, applicant: Any, settings: Any
) -> None:
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(10):
        _login(client, applicant.email, "guess", ATTACKER)
    assert _login(client, applicant.email, PASSWORD, ATTACKER).status_code == 429
    assert _login(client, applicant.email, PASSWORD, VICTIM).status_code == 302


def test_owner_success_does_not_unlock_the_attacker(client: Any, applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        _login(client, applicant.email, "guess", ATTACKER)
    assert _login(client, applicant.email, PASSWORD, VICTIM).status_code == 302
    client.post(reverse("logout"))
    assert _login(client, applicant.email, PASSWORD, ATTACKER).status_code == 429


def test_ipv6_addresses_count_per_64_block(client: Any, applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 2
    _login(client, applicant.email, "guess", "2001:db8:1:2::10")
    _login(client, applicant.email, "guess", "2001:db8:1:2::11")
    assert _login(client, applicant.email, PASSWORD, "2001:db8:1:2::12").status_code == 429
    assert _login(client, applicant.email, PASSWORD, "2001:db8:1:3::12").status_code == 302


def test_admin_login_locks_out_after_max_failures(client: Any, admin: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert _admin_login(client, admin.email, "guess").status_code == 200
    response = _admin_login(client, admin.email, PASSWORD)
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    assert "Too many failed sign-in attempts" in response.content.decode()
    # From another address the operator still gets in.
    assert _admin_login(client, admin.email, PASSWORD, VICTIM).status_code == 302
    assert "_auth_user_id" in client.session


def test_admin_and_portal_failures_share_one_count(client: Any, admin: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 4
    for _ in range(2):
        _admin_login(client, admin.email, "guess")
        _login(client, admin.email, "guess", ATTACKER)
    assert _login(client, admin.email, PASSWORD, ATTACKER).status_code == 429


def test_password_reset_clears_the_account_from_every_address(applicant: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 1
    throttle.record_failure(email=applicant.email, ip=ATTACKER)
    throttle.record_failure(email=applicant.email, ip=VICTIM)
    throttle.reset_account(email=applicant.email)
    assert throttle.lockout(email=applicant.email, ip=ATTACKER) is None
    assert throttle.lockout(email=applicant.email, ip=VICTIM) is None
