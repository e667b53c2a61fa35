"""`manage.py seed_demo`: the catalog plus demo accounts and sample applications, for a laptop.

Idempotent: accounts are matched by email and reset to their demo password and role; a sample
application is created only when its applicant has no application for that release yet. Every
application goes through the same services the pages use, so the audit log and notifications look
like real traffic. Refuses to run in production: the passwords below are public.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from access.errors import AccessError
from access.models import Application, RejectionTemplate, Release, User
from access.services.accounts import reviewer_group
from access.services.applications import ApplicationInput, application_submit
from access.services.audit import RequestMeta
from access.services.reviews import (
    application_approve,
    application_reject,
    application_request_info,
    application_start_review,
    rejection_template_render,
)

DEMO_META = RequestMeta(ip="127.0.0.1", user_agent="manage.py seed_demo")


@dataclass(frozen=True)
class DemoAccount:
    email: str
    password: str
    full_name: str
    affiliation: str
    role: str  # shown in the table of logins
    superuser: bool = False
    reviewer: bool = False


ADMIN = DemoAccount(
    "admin@demo.local",
    "admin-demo-pass",
    "Ada Admin",
    "OpenRelease operations",
    "operator: superuser and staff (/admin/)",
    superuser=True,
)
REVIEWER = DemoAccount(
    "reviewer@demo.local",
    "reviewer-demo-pass",
    "Rita Reviewer",
    "OpenRelease review team",
    "reviewer (Reviewers group, /review/)",
    reviewer=True,
)
RESEARCHER = DemoAccount(
    "researcher@demo.local",
    "researcher-demo-pass",
    "Riley Researcher",
    "University of Example",
    "applicant: holds an OPT-175B grant, one question to answer",
)
SECOND_APPLICANT = DemoAccount(
    "applicant@demo.local",
    "applicant-demo-pass",
    "Sam Sample",
    "Example Institute of Technology",
    "applicant: one pending, one declined application",
)
DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (ADMIN, REVIEWER, RESEARCHER, SECOND_APPLICANT)


@dataclass(frozen=True)
class DemoApplication:
    applicant: DemoAccount
    release_slug: str
    outcome: str  # submitted | needs_info | approved | rejected
    role: str
    organization_type: str
    country: str
    research_purpose: str
    intended_use: str
    publications: tuple[str, ...] = field(default_factory=tuple)
    question: str = ""  # for needs_info
    rejection_template: str = ""  # RejectionTemplate title, for rejected


DEMO_APPLICATIONS: tuple[DemoApplication, ...] = (
    DemoApplication(
        applicant=RESEARCHER,
        release_slug="opt-175b",
        outcome="approved",
        role="Postdoctoral researcher",
        organization_type="academic",
        country="US",
        research_purpose=(
            "We study how few-shot accuracy and calibration change with model scale across the OPT suite. The open "
            "sizes up to 66B give us most of the curve; OPT-175B is the point we cannot extrapolate. We will run "
            "the standard zero- and few-shot benchmarks with fixed prompts, measure expected calibration error, and "
            "release our prompts, scripts and aggregate numbers with the paper."
        ),
        intended_use="Inference only, on our university's GPU cluster; no fine-tuning and no deployment.",
        publications=("https://arxiv.org/abs/2205.01068",),
    ),
    DemoApplication(
        applicant=RESEARCHER,
        release_slug="llama-65b",
        outcome="needs_info",
        role="Postdoctoral researcher",
        organization_type="academic",
        country="US",
        research_purpose=(
            "We want to compare how memorisation of training data differs between OPT and LLaMA at the largest "
            "sizes, using extraction attacks on documents that are known to be in both public training mixtures. "
            "The work measures a privacy risk of released models and will be reported in aggregate, without "
            "publishing any extracted personal data."
        ),
        intended_use="Generation from fixed prefixes on a secured cluster; outputs are deleted after scoring.",
        question=(
            "Thank you for the application. Could you describe how you will store and delete extracted text, and "
            "who at the University of Example reviews the handling of any personal data you find?"
        ),
    ),
    DemoApplication(
        applicant=SECOND_APPLICANT,
        release_slug="opt-175b",
        outcome="submitted",
        role="PhD student",
        organization_type="academic",
        country="GB",
        research_purpose=(
            "My thesis measures how instruction-free base models handle negation and quantifiers in natural "
            "language inference. I have results for the open OPT sizes and need OPT-175B to test whether the "
            "failures we see persist at the largest scale, using the same prompts and a public benchmark suite, "
            "with all code released alongside the thesis."
        ),
        intended_use="Zero- and few-shot evaluation only, on the institute's shared GPU nodes.",
        publications=("10.1234/demo.negation.2024",),
    ),
    DemoApplication(
        applicant=SECOND_APPLICANT,
        release_slug="llama-7b",
        outcome="rejected",
        role="PhD student",
        organization_type="academic",
        country="GB",
        research_purpose=(
            "I would like to fine-tune a small model on course material to build a study assistant for students "
            "in my department, and to measure whether it answers exam-style questions better than a search engine. "
            "The assistant would be offered to students through the department's website during the term."
        ),
        intended_use="Fine-tuning and hosting a study assistant for students.",
        rejection_template="Outside the license's scope",
    ),
)


def _ensure_account(account: DemoAccount) -> User:
    user = User.objects.filter(email__iexact=account.email).first()
    if user is None:
        user = User(email=account.email)
    user.full_name = account.full_name
    user.affiliation = account.affiliation
    user.is_active = True
    user.is_staff = account.superuser
    user.is_superuser = account.superuser
    user.email_verified_at = user.email_verified_at or timezone.now()
    # Reset every run, so the table printed at the end is always true.
    user.set_password(account.password)
    user.save()
    if account.reviewer:
        user.groups.add(reviewer_group())
    return user


def _ensure_application(sample: DemoApplication, *, users: dict[str, User], reviewer: User) -> tuple[Application, bool]:
    applicant = users[sample.applicant.email]
    release = Release.objects.select_related("license").get(slug=sample.release_slug)
    existing = Application.objects.filter(applicant=applicant, release=release).order_by("pk").first()
    if existing is not None:
        return existing, False
    current = release.license.current_version
    data = ApplicationInput(
        full_name=applicant.full_name,
        affiliation=applicant.affiliation,
        organization_type=sample.organization_type,
        role=sample.role,
        country=sample.country,
        research_purpose=sample.research_purpose,
        intended_use=sample.intended_use,
        publications=list(sample.publications),
        license_version_id=current.pk if current else None,
        non_commercial_attested=True,
        accept_license=True,
    )
    application = application_submit(applicant=applicant, release=release, data=data, meta=DEMO_META)
    if sample.outcome == "needs_info":
        application_request_info(application=application, reviewer=reviewer, message=sample.question, meta=DEMO_META)
    elif sample.outcome == "approved":
        application = application_start_review(application=application, reviewer=reviewer, meta=DEMO_META)
        application_approve(application=application, reviewer=reviewer, meta=DEMO_META)
    elif sample.outcome == "rejected":
        template = RejectionTemplate.objects.get(title=sample.rejection_template)
        reason = rejection_template_render(template=template, application=application)
        application_reject(application=application, reviewer=reviewer, reason=reason, meta=DEMO_META)
    application.refresh_from_db()
    return application, True


def seed_demo() -> tuple[dict[str, User], list[tuple[Application, bool]]]:
    """Create (or reset) the demo accounts and sample applications. The catalog must be seeded first."""
    with transaction.atomic():
        users = {account.email: _ensure_account(account) for account in DEMO_ACCOUNTS}
        reviewer = users[REVIEWER.email]
        applications = [_ensure_application(s, users=users, reviewer=reviewer) for s in DEMO_APPLICATIONS]
    return users, applications


class Command(BaseCommand):
    help = (
        "Seed the catalog, then create demo accounts with published passwords and sample applications. "
        "Development only; safe to re-run."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "seed_demo creates accounts with published passwords and refuses to run in production "
                "(PORTAL_ENV=production). Run it against a development database with PORTAL_ENV=development; "
                "to load only the catalog in production, run `manage.py seed_catalog`."
            )
        call_command("seed_catalog", stdout=self.stdout, stderr=self.stderr)
        try:
            _, applications = seed_demo()
        except AccessError as exc:
            raise CommandError(f"A sample application could not be created: {exc.message}") from exc
        for application, created in applications:
            verb = "created" if created else "kept"
            self.stdout.write(
                f"  application #{application.pk} {verb}: {application.email} -> {application.release.name} "
                f"({application.get_status_display()})"
            )
        # A small random-weight checkpoint for an open and a gated release, so the whole path from
        # application to a verified download can be tried.
        call_command("seed_demo_checkpoints", stdout=self.stdout, stderr=self.stderr)
        self._print_logins()

    def _print_logins(self) -> None:
        rows = [("email", "password", "role")] + [(a.email, a.password, a.role) for a in DEMO_ACCOUNTS]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        rule = "-" * (widths[0] + widths[1] + 30)
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS("Demo logins (development only: these passwords are public)"))
        self.stdout.write(rule)
        for email, password, role in rows:
            self.stdout.write(f"{email.ljust(widths[0])}  {password.ljust(widths[1])}  {role}")
        self.stdout.write(rule)
        self.stdout.write(f"Sign in at {settings.SITE_URL}{reverse('login')}")
