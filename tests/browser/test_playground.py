"""The playground in Chromium: a grant holder signs in, runs a prompt, and watches the answer arrive
token by token from the portal's /v1/completions (session + CSRF, no API key in the page), served by
uvicorn in front of a real engine; each piece carries its probabilities; "Copy as Python" gives the
equivalent API call."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from gateway.models import UsageRecord
from tests import factories
from tests.artifacts.conftest import grant_access, make_checkpoint
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import add_deployment, api_key_for

# The gateway's live fixtures: a real engine, the portal under uvicorn, the counters it shares.
engine = gateway_fixtures.engine
portal = gateway_fixtures.portal
live_settings = gateway_fixtures.live_settings

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROMPTS = ["hello world", "the quick brown fox", "once upon a time", "researchers score text"]


def long_greedy_prompt(portal: Any, raw_key: str) -> str:
    """A prompt whose greedy continuation runs 200 tokens without an end-of-text: the stream lasts seconds."""
    client = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=raw_key, max_retries=0)
    for prompt in PROMPTS:
        if (
            client.completions.create(model="opt-175b", prompt=prompt, max_tokens=200, temperature=0)
            .choices[0]
            .finish_reason
            == "length"
        ):
            return prompt
    pytest.skip("every greedy continuation of the tiny model ended early")


def test_playground_streams_tokens_with_probabilities(
    browser: Any,
    portal: Any,
    engine: Any,
    applicant: Any,
    reviewer: Any,
    gated_release: Any,
    tmp_path: Any,
    live_settings: Any,
) -> None:
    grant_access(applicant, gated_release, reviewer)
    # The portal process hashes passwords as in production (the test settings use MD5 for speed).
    applicant.password = PBKDF2PasswordHasher().encode(factories.PASSWORD, "playgroundsalt", iterations=1000)
    applicant.save(update_fields=["password"])
    add_deployment(gated_release, make_checkpoint(gated_release, tmp_path), [engine.url], engine.secret_file)
    prompt = long_greedy_prompt(portal, api_key_for(applicant)[1])
    base = portal.url.replace("127.0.0.1", "localhost")  # a secure context: the Clipboard API exists
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=email]", applicant.email)
        page.fill("input[name=password]", factories.PASSWORD)
        page.click("form button[type=submit]:not(.link)")
        page.wait_for_load_state()
        page.goto(f"{base}/playground/")
        assert page.locator("#pg-model option").all_text_contents() == ["OPT-175B (opt-175b)"], page.content()
        assert "orp_" not in page.content()  # no key in the page
        page.fill("#pg-prompt", prompt)
        page.fill("#pg-temperature", "0")
        page.fill("#pg-max-tokens", "200")
        page.click("#pg-run")
        # Tokens are on the page while the answer is still being generated: streamed, not buffered.
        page.wait_for_function(
            "document.querySelectorAll('#pg-output .token').length >= 3"
            " && document.getElementById('pg-status').textContent === 'Generating…'"
        )
        page.wait_for_function("document.getElementById('pg-status').textContent.startsWith('Done')")
        assert "200 completion tokens" in page.text_content("#pg-status")
        tokens = page.locator("#pg-output .token")
        assert tokens.count() >= 100
        first = tokens.first
        assert "p=" in first.get_attribute("title") and "top:" in first.get_attribute("title")
        assert first.get_attribute("style").startswith("background-color")
        record = UsageRecord.objects.get(user=applicant, stream=True)
        assert record.api_key_id is None and record.completion_tokens == 200 and record.usage_exact
        page.click("#pg-copy-python")
        snippet = page.text_content("[data-testid=playground-snippet]")
        assert 'api_key=os.environ["ORP_API_KEY"]' in snippet and 'model="opt-175b",' in snippet
        assert "client.completions.create(" in snippet and "max_tokens=200," in snippet
        page.click("#pg-copy-curl")
        assert page.evaluate("navigator.clipboard.readText()").startswith(f"curl {base}/v1/completions")
    finally:
        context.close()
