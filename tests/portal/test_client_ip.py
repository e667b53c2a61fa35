"""The client address: REMOTE_ADDR unless proxies are configured, then the entry our proxy appended,
never the client-supplied first entry of X-Forwarded-For. Recorded the same way everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import RequestFactory
from django.urls import reverse

from access.models import AuditEvent, LicenseAcceptance
from portal.client_ip import client_ip
from tests.conftest import login

SPOOFED = "6.6.6.6"


def _request(remote_addr: str = "10.0.0.2", forwarded: str | None = None) -> Any:
    extra = {"REMOTE_ADDR": remote_addr}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_trusted_proxies_the_header_is_ignored(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip(_request(forwarded=f"{SPOOFED}, 198.51.100.4")) == "10.0.0.2"


def test_one_trusted_proxy_gives_the_last_entry(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip(_request(forwarded=f"{SPOOFED}, 198.51.100.4")) == "198.51.100.4"


def test_two_trusted_proxies_give_the_second_entry_from_the_right(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(_request(forwarded=f"{SPOOFED}, 198.51.100.4, 10.1.1.1")) == "198.51.100.4"


def test_header_shorter_than_the_proxy_chain_or_garbage_falls_back_to_the_peer(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(_request(forwarded="198.51.100.4")) == "10.0.0.2"
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip(_request(forwarded="not-an-address")) == "10.0.0.2"
    assert client_ip(_request(forwarded="2001:DB8::1")) == "2001:db8::1"


@pytest.mark.django_db
def test_spoofed_first_entry_is_never_recorded(client: Any, settings: Any, applicant: Any, open_release: Any) -> None:
    # Production mode once trusted the first entry; the setting alone decides now.
    settings.PRODUCTION = True
    settings.TRUSTED_PROXY_COUNT = 0
    login(client, applicant)
    version = open_release.license.current_version
    client.post(
        reverse("release-license", args=[open_release.slug]),
        {"accept": "on", "license_version_id": version.pk},
        REMOTE_ADDR="192.0.2.7",
        HTTP_X_FORWARDED_FOR=SPOOFED,
    )
    acceptance = LicenseAcceptance.objects.get(user=applicant, release=open_release)
    assert acceptance.ip_address == "192.0.2.7"
    assert not AuditEvent.objects.filter(ip_address=SPOOFED).exists()


@pytest.mark.django_db
def test_with_one_trusted_proxy_the_last_entry_is_recorded(
    client: Any, settings: Any, applicant: Any, open_release: Any
) -> None:
    settings.PRODUCTION = True
    settings.TRUSTED_PROXY_COUNT = 1
    login(client, applicant)
    client.post(
        reverse("release-license", args=[open_release.slug]),
        {"accept": "on", "license_version_id": open_release.license.current_version.pk},
        REMOTE_ADDR="10.0.0.2",  # the proxy
        HTTP_X_FORWARDED_FOR=f"{SPOOFED}, 203.0.113.8",
    )
    assert LicenseAcceptance.objects.get(user=applicant, release=open_release).ip_address == "203.0.113.8"
    assert set(AuditEvent.objects.exclude(ip_address=None).values_list("ip_address", flat=True)) == {"203.0.113.8"}
