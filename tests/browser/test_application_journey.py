"""The whole path in a real browser: sign up, verify email, apply, reviewer asks for information,
applicant answers, reviewer approves, applicant sees the grant."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail

from access.models import Application, ApplicationStatus, Grant
from tests import factories

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _sign_in(page: Any, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]:not(.link)")
    page.wait_for_load_state()


def test_apply_review_and_grant_in_chromium(
    browser: Any, live_server: Any, transactional_db: Any, settings: Any
) -> None:
    settings.SITE_URL = live_server.url
    release = factories.make_release(slug="opt-175b", name="OPT-175B", gated=True)
    reviewer = factories.make_reviewer("rita@release.example", full_name="Rita Reviewer")
    base = live_server.url
    applicant_ctx, reviewer_ctx = browser.new_context(), browser.new_context()
    applicant_ctx.set_default_timeout(15_000)
    reviewer_ctx.set_default_timeout(15_000)
    me, rita = applicant_ctx.new_page(), reviewer_ctx.new_page()
    try:
        # 1. Sign up.
        me.goto(f"{base}/accounts/signup/")
        me.fill("input[name=email]", "dana@uni-heidelberg.de")
        me.fill("input[name=full_name]", "Dana Doe")
        me.fill("input[name=affiliation]", "Heidelberg University")
        me.fill("input[name=password]", factories.PASSWORD)
        me.fill("input[name=password_again]", factories.PASSWORD)
        me.click("main form button[type=submit]")
        me.wait_for_load_state()
        assert "verify" in me.content().lower()

        # 2. Verify the email address with the link from the email.
        verification = next(m for m in mail.outbox if m.to == ["dana@uni-heidelberg.de"] and "Confirm" in m.subject)
        link = re.search(r"https?://\S+/accounts/verify/\S+", verification.body).group(0)
        me.goto(link)
        me.wait_for_load_state()

        # 3. Apply for the gated release.
        me.goto(f"{base}/models/{release.slug}/apply/")
        assert me.input_value("input[name=full_name]") == "Dana Doe"
        me.select_option("select[name=organization_type]", "academic")
        me.fill("input[name=role]", "Postdoctoral researcher")
        me.select_option("select[name=country]", "DE")
        me.fill("textarea[name=research_purpose]", factories.RESEARCH_PURPOSE)
        me.fill("textarea[name=intended_use]", "Evaluation of calibration; no deployment.")
        me.fill("textarea[name=publications]", "10.1234/calibration.2024")
        me.check("input[name=accept_license]")
        me.check("input[name=non_commercial_attested]")
        me.click("main form button[type=submit]")
        me.wait_for_load_state()
        application = Application.objects.get(email="dana@uni-heidelberg.de")
        assert me.url.endswith(f"/applications/{application.pk}/")
        assert "Submitted" in me.inner_text("main")

        # 4. The reviewer finds it in the queue and asks for more information.
        _sign_in(rita, base, reviewer.email, factories.PASSWORD)
        rita.goto(f"{base}/review/")
        rita.click(f"a[href$='/review/{application.pk}/']")
        rita.wait_for_load_state()
        assert "Dana Doe" in rita.inner_text("main")
        rita.fill("form[action$='/request-info/'] textarea[name=message]", "Which benchmarks will you evaluate on?")
        rita.click("form[action$='/request-info/'] button[type=submit]")
        rita.wait_for_load_state()
        application.refresh_from_db()
        assert application.status == ApplicationStatus.NEEDS_INFO

        # 5. The applicant sees the question and answers it.
        me.goto(f"{base}/applications/{application.pk}/")
        assert "Which benchmarks will you evaluate on?" in me.inner_text("main")
        me.fill("form[action$='/answer/'] textarea[name=message]", "MMLU, TriviaQA and our own calibration set.")
        me.click("form[action$='/answer/'] button[type=submit]")
        me.wait_for_load_state()
        application.refresh_from_db()
        assert application.status == ApplicationStatus.IN_REVIEW

        # 6. The reviewer approves.
        rita.goto(f"{base}/review/{application.pk}/")
        assert "MMLU, TriviaQA" in rita.inner_text("main")
        rita.click("form[action$='/approve/'] button[type=submit]")
        rita.wait_for_load_state()
        application.refresh_from_db()
        assert application.status == ApplicationStatus.APPROVED

        # 7. The applicant sees the grant.
        grant = Grant.objects.get(user__email="dana@uni-heidelberg.de", release=release)
        me.goto(f"{base}/access/")
        text = me.inner_text("main")
        assert "OPT-175B" in text and grant.expires_at.strftime("%Y") in text
        assert re.search(r"active", text, re.IGNORECASE)
        me.goto(f"{base}/applications/{application.pk}/")
        assert "Approved" in me.inner_text("main")
    except Exception:
        me.screenshot(path="var/browser-applicant-failure.png", full_page=True)
        rita.screenshot(path="var/browser-reviewer-failure.png", full_page=True)
        raise
    finally:
        applicant_ctx.close()
        reviewer_ctx.close()
