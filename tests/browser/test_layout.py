"""Layout and scripts in a real browser: wide tables scroll in their own box, disabled buttons look
disabled, and every page's scripts run under the enforced Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests import factories

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
# Records every CSP violation (enforced or report-only) the page meets, for the test to read.
COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolations.push(event.violatedDirective + " " + (event.blockedURI || "inline"));
});
"""


def _page_as(browser: Any, base: str, user: Any | None, *, width: int) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(15_000)
    context.add_init_script(COLLECT_VIOLATIONS)
    if user is not None:
        client = Client()
        client.force_login(user)
        context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}])
    return context.new_page()


@pytest.fixture
def base(live_server: Any, transactional_db: Any, settings: Any) -> Iterator[str]:
    settings.SITE_URL = live_server.url
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = False  # enforce, as production does
    yield live_server.url


def _overflow(page: Any, selector: str) -> dict[str, int]:
    return page.evaluate(
        """(selector) => {
          const box = document.querySelector(selector).closest(".table-scroll");
          const root = document.documentElement;
          return {box: box.scrollWidth - box.clientWidth, page: root.scrollWidth - root.clientWidth};
        }""",
        selector,
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_wide_table_scrolls_inside_its_box_and_the_page_does_not(browser: Any, base: str, width: int) -> None:
    release = factories.make_release(slug="opt-175b", name="OPT-175B", gated=True)
    reviewer = factories.make_reviewer("rita@release.example", full_name="Rita Reviewer")
    for number in range(3):
        user = factories.make_user(f"applicant{number}@uni-heidelberg.de", full_name=f"Applicant Number{number}")
        # An affiliation with no break opportunity (as pasted URLs and compound names are) makes the
        # table wider than the page at any width.
        factories.make_application(user, release, affiliation="Forschungsinstitut" * 6)
    page = _page_as(browser, base, reviewer, width=width)
    page.goto(f"{base}{reverse('review-queue')}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"review-queue-{width}.png"), full_page=True)
    overflow = _overflow(page, "table[data-testid=queue]")
    assert overflow["box"] > 0, "the wide table should scroll inside its box"
    assert overflow["page"] <= 0, "the page itself must not scroll sideways"
    assert page.evaluate("window.__cspViolations") == []
    page.context.close()


def test_disabled_button_looks_disabled(browser: Any, base: str) -> None:
    release = factories.make_release(slug="opt-175b", name="OPT-175B", gated=True)
    unverified = factories.make_user("new@uni-heidelberg.de", full_name="New Person", verified=False)
    page = _page_as(browser, base, unverified, width=1280)
    page.goto(f"{base}{reverse('release-apply', args=[release.slug])}")
    button = page.locator("main form button[type=submit][disabled]")
    style = button.evaluate("(b) => { const s = getComputedStyle(b); return [s.opacity, s.cursor]; }")
    assert style == ["0.5", "not-allowed"]
    page.context.close()


def test_page_scripts_run_under_the_enforced_policy(browser: Any, base: str) -> None:
    release = factories.make_release(slug="opt-175b", name="OPT-175B", gated=True)
    applicant = factories.make_user("alice@uni-heidelberg.de", full_name="Alice Adams")
    page = _page_as(browser, base, applicant, width=1280)

    # The apply page's inline script (nonce) counts the research purpose's characters.
    page.goto(f"{base}{reverse('release-apply', args=[release.slug])}")
    page.fill("textarea[name=research_purpose]", "x" * 12)
    assert page.inner_text("#purpose-count").startswith("12 characters")
    assert page.evaluate("window.__cspViolations") == []

    # The API keys page wires its confirm dialog and copy button from a nonced script.
    page.goto(f"{base}{reverse('api-keys')}")
    assert page.evaluate("window.__cspViolations") == []

    # The reviewer's page (rejection templates script) and the Django admin.
    reviewer = factories.make_reviewer("rita@release.example", full_name="Rita Reviewer")
    application = factories.make_application(applicant, release)
    review = _page_as(browser, base, reviewer, width=1280)
    review.goto(f"{base}{reverse('review-detail', args=[application.pk])}")
    assert review.evaluate("window.__cspViolations") == []
    review.context.close()
    admin = factories.make_user("ada@release.example", full_name="Ada Admin")
    admin.is_staff = admin.is_superuser = True
    admin.save()
    operator = _page_as(browser, base, admin, width=1280)
    operator.goto(f"{base}/admin/access/application/{application.pk}/change/")
    assert operator.evaluate("window.__cspViolations") == []
    operator.context.close()

    # Swagger UI comes from local static files and its start-up script from the split view.
    page.goto(f"{base}{reverse('api-docs')}")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "OpenRelease API" in page.inner_text(".swagger-ui .info .title")
    assert page.evaluate("window.__cspViolations") == []
    page.context.close()
