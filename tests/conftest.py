"""Personas and catalog rows shared by every Django test.

Personas (healthchecks' alice/bob/charlie): `anonymous`, `applicant`, `other_applicant`, `reviewer`,
`admin`. The catalog rows are minimal; `seed_catalog` has its own tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import factories


@pytest.fixture(autouse=True)
def _fast_and_isolated(settings: Any) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import cache

    cache.clear()
    from portal.celery import app

    # Tasks run in-process in unit tests; integration tests start a real worker instead.
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield


PASSWORD = factories.PASSWORD


@pytest.fixture
def anonymous() -> Any:
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


@pytest.fixture
def applicant(db: Any) -> Any:
    return factories.make_user("alice@uni-heidelberg.de", full_name="Alice Adams", affiliation="Heidelberg University")


@pytest.fixture
def other_applicant(db: Any) -> Any:
    return factories.make_user("bob@ethz.ch", full_name="Bob Brown", affiliation="ETH Zurich")


@pytest.fixture
def reviewer(db: Any) -> Any:
    return factories.make_reviewer("rita@release.example", full_name="Rita Reviewer")


@pytest.fixture
def second_reviewer(db: Any) -> Any:
    return factories.make_reviewer("rob@release.example", full_name="Rob Reviewer")


@pytest.fixture
def admin(db: Any) -> Any:
    from access.models import User

    return User.objects.create_superuser("admin@release.example", PASSWORD, full_name="Ada Admin")


# Personas of the authorization matrices (tests/<app>/test_*authz.py): someone who applied for the gated
# release and was not yet decided, and the holder of a grant to it (`applicant`, once granted).
@pytest.fixture
def applicant_no_grant(db: Any, gated_release: Any) -> Any:
    user = factories.make_user("carol@uni-mannheim.de", full_name="Carol Clark", affiliation="Mannheim")
    factories.make_application(user, gated_release)  # applied, not decided
    return user


@pytest.fixture
def holder(applicant: Any) -> Any:
    return applicant


@pytest.fixture
def gated_release(db: Any) -> Any:
    return factories.make_release(slug="opt-175b", name="OPT-175B", gated=True)


@pytest.fixture
def open_release(db: Any) -> Any:
    return factories.make_release(slug="opt-125m", name="OPT-125M", gated=False)


@pytest.fixture
def application(applicant: Any, gated_release: Any) -> Any:
    return factories.make_application(applicant, gated_release)


def login(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client
