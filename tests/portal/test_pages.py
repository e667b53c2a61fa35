"""The portal's own pages: 404/500 with DEBUG off, the API docs from local files, the CSP nonce."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.urls import reverse

from tests.conftest import login


class _Assets(HTMLParser):
    """Collects every URL a page makes the browser load (script src, link href, img src)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


@pytest.fixture
def debug_off(settings: Any) -> None:
    settings.DEBUG = False


def test_missing_page_gets_the_portal_404_with_debug_off(debug_off: None, client: Any) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert [t.name for t in response.templates][0] == "404.html"
    assert b"There is nothing here" in response.content and b"site.css" in response.content


def test_server_fault_gets_the_portal_500_with_debug_off(debug_off: None, client: Any, settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.portal.failing_urls"
    client.raise_request_exception = False
    page = client.get("/boom/")
    assert page.status_code == 500
    assert b"Something went wrong on our side" in page.content and b"site.css" in page.content
    api = client.get("/api/v1/boom/")
    assert api.status_code == 500 and api.json()["code"] == "server_error"


def test_api_docs_load_only_local_assets_and_they_are_served(client: Any, settings: Any) -> None:
    # The test run has no collectstatic: let whitenoise find files where runserver would.
    settings.WHITENOISE_USE_FINDERS = True
    page = client.get(reverse("api-docs"))
    assert page.status_code == 200
    parser = _Assets()
    parser.feed(page.content.decode())
    assert len(parser.urls) >= 4  # stylesheet, two Swagger UI bundles, the start-up script
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not on this site"
        asset = client.get(url)
        assert asset.status_code == 200, url
        body = b"".join(asset.streaming_content) if asset.streaming else asset.content
        assert body, url
    # No inline script: the start-up code comes from the split view's ?script URL.
    assert not re.search(rb"<script>", page.content)


def test_inline_scripts_carry_this_requests_nonce(client: Any, applicant: Any, gated_release: Any) -> None:
    login(client, applicant)
    url = reverse("release-apply", args=[gated_release.slug])
    first, second = client.get(url), client.get(url)
    assert first.status_code == 200
    nonces = []
    for response in (first, second):
        policy = response.headers["Content-Security-Policy-Report-Only"]
        nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
        scripts = re.findall(rb"<script([^>]*)>", response.content)
        inline = [attrs for attrs in scripts if b"src=" not in attrs and b"application/json" not in attrs]
        assert inline and all(f'nonce="{nonce}"'.encode() in attrs for attrs in inline)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]


def test_production_mode_enforces_the_policy(db: Any, client: Any, settings: Any) -> None:
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = False
    response = client.get(reverse("catalog"))
    assert "script-src 'self' 'nonce-" in response.headers["Content-Security-Policy"]
    assert "Content-Security-Policy-Report-Only" not in response.headers
