"""What every authorization matrix shares (tests/<app>/test_*authz.py): a row per route, the walk over
the URL resolver that makes a route without a row fail, and the check of one response.

A matrix maps each persona to "ok" (any status in the matrix's OK set, and a redirect that is not
to the login page), "login" (302 to the login page) or an exact status code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.http import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

# The personas of the release-side matrices (artifacts, gateway, finetune): a signed-in user without a
# grant, a grant holder, another applicant, a reviewer and a superuser; and the outcomes they share.
PERSONAS = ("anonymous", "applicant_no_grant", "holder", "other_applicant", "reviewer", "admin")
SIGNED_IN = {**dict.fromkeys(PERSONAS, "ok"), "anonymous": "login"}
# Operator pages: the list pages refuse with 403; pages of one object hide it with 404.
OPERATOR_LISTS = {**dict.fromkeys(PERSONAS, 403), "anonymous": "login", "reviewer": "ok", "admin": "ok"}
OPERATOR_OBJECT = {**OPERATOR_LISTS, "applicant_no_grant": 404, "holder": 404, "other_applicant": 404}
# The API answers anonymous callers 401 (an API key or a session is needed), never a redirect.
API_SIGNED_IN = {**SIGNED_IN, "anonymous": 401}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    args: Callable[[dict[str, Any]], list[Any]]
    expect: dict[str, Any]


def no_args(objects: dict[str, Any]) -> list[Any]:
    return []


def routes_of_app(app: str, patterns: list[Any] | None = None, namespace: str = "") -> set[str]:
    """Names (with their namespaces) of every route whose view lives in ``app``, wherever it is mounted."""
    names: set[str] = set()
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= routes_of_app(app, pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern):
            view = getattr(pattern.callback, "view_class", None) or pattern.callback
            if view.__module__.split(".")[0] == app:
                assert pattern.name, f"{app} route {pattern.pattern} has no name; name it and add it to the matrix"
                names.add(namespace + pattern.name)
    return names


def client_as(persona: str, request: pytest.FixtureRequest) -> Client:
    """A test client signed in as the persona (the fixture of that name), or anonymous."""
    client = Client()
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    return client


def assert_outcome(response: HttpResponseBase, expected: Any, *, url: str, persona: str, ok: set[int]) -> None:
    login_url = reverse("login")
    status = response.status_code
    if expected == "login":
        assert status == 302 and response["Location"].startswith(login_url), (url, status)
    elif expected == "ok":
        assert status in ok, (url, status)
        if status == 302 and persona != "anonymous":
            assert not response["Location"].startswith(login_url), (url, response["Location"])
    else:
        assert status == expected, (url, status)
