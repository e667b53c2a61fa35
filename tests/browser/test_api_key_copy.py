"""The new API key's Copy button puts the key on the clipboard, under the page's CSP (no inline handlers)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import factories

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_copy_button_copies_the_new_key(browser: Any, live_server: Any, transactional_db: Any) -> None:
    factories.make_user("kim@uni-heidelberg.de", full_name="Kim K")
    # localhost is a secure context, so the Clipboard API is there, as on the HTTPS site.
    base = live_server.url.replace("127.0.0.1", "localhost")
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=email]", "kim@uni-heidelberg.de")
        page.fill("input[name=password]", factories.PASSWORD)
        page.click("form button[type=submit]:not(.link)")
        page.wait_for_load_state()
        page.goto(f"{base}/accounts/api-keys/")
        page.fill("input[name=name]", "laptop")
        page.click("form[action$='/api-keys/'] button[type=submit]")
        page.wait_for_load_state()
        raw_key = page.input_value("#raw-key")
        assert raw_key.startswith("orp_")
        page.click("[data-testid=copy-key]")
        page.wait_for_function("document.getElementById('copy-key-status').textContent.length > 0")
        assert page.text_content("#copy-key-status") == "Copied."
        assert page.evaluate("navigator.clipboard.readText()") == raw_key
    finally:
        context.close()
