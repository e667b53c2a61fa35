"""Request bodies that are valid JSON but no usable text: each is a 400 naming the problem, in
OpenAI's error shape, and leaves a refusal row; never a 500 (they were: PostgreSQL refuses NUL in
text, and neither the database nor the JSON sent to the engine can hold an unpaired surrogate)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from gateway.models import UsageRecord, UsageStatus
from tests.gateway.conftest import add_deployment, api_key_for, closed_port_url

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(applicant: Any, holder_grant: Any, gated_release: Any, checkpoint: Any, secret_file: Any) -> str:
    add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)
    return api_key_for(applicant)[1]


def post_raw(raw_key: str, data: bytes) -> Any:
    client = Client(raise_request_exception=False)
    return client.post(
        "/v1/completions", data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw_key}"
    )


@pytest.mark.parametrize(
    ("data", "param", "words"),
    [
        (b'{"model": "opt-175b\\u0000", "prompt": "hi"}', "model", "NUL"),
        (b'{"model": "a\\u0000b", "prompt": "hi"}', "model", "NUL"),
        (b'{"model": "\\ud800", "prompt": "hi"}', None, "not valid Unicode"),
        (b'{"model": "opt-175b", "prompt": "hi \\udfff"}', None, "not valid Unicode"),
        (b'{"model": "opt-175b", "prompt": "hi", "stop": ["\\ud83d"]}', None, "not valid Unicode"),
    ],
)
def test_unusable_text_is_a_400_not_a_500(key: str, applicant: Any, data: bytes, param: str | None, words: str) -> None:
    response = post_raw(key, data)
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    row = UsageRecord.objects.get(user=applicant)
    assert (row.status, row.http_status) == (UsageStatus.REFUSED, 400)


def test_a_paired_surrogate_escape_is_ordinary_text(key: str) -> None:
    """ "\\ud83d\\ude00" is one character (an emoji): admitted, and here ends at the unreachable engine."""
    response = post_raw(key, b'{"model": "opt-175b", "prompt": "hi \\ud83d\\ude00"}')
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_engine"
