"""Accounts: registration, email verification, profile, and the reviewers group."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from access.errors import InvalidInput
from access.models import User
from access.notifications import notify
from access.services.audit import RequestMeta, audit_record

_EMAIL_VERIFY_SALT = "access.email-verify"


def user_register(
    *, email: str, password: str, full_name: str, affiliation: str, meta: RequestMeta, next_path: str = ""
) -> User:
    """A new account, and the verification email; its link leads back to `next_path` (a local path)."""
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput("Enter a valid email address.", field="email") from None
    if User.objects.filter(email__iexact=email).exists():
        raise InvalidInput("An account with this email already exists. Sign in, or reset your password.", field="email")
    candidate = User(email=email, full_name=full_name.strip(), affiliation=affiliation.strip())
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from None
    with transaction.atomic():
        user = User.objects.create_user(
            email, password, full_name=candidate.full_name, affiliation=candidate.affiliation
        )
        audit_record(actor=user, action="user.register", target=user, meta=meta, after={"email": email})
        user_send_verification(user=user, next_path=next_path)
    return user


def email_verification_token(user: User) -> str:
    return signing.TimestampSigner(salt=_EMAIL_VERIFY_SALT).sign_object({"u": user.pk, "e": user.email})


def user_send_verification(*, user: User, next_path: str = "") -> None:
    link = settings.SITE_URL + reverse("verify-email", args=[email_verification_token(user)])
    if next_path:
        # Back to where the user was (the application they started); the view checks it is local again.
        link += "?" + urlencode({"next": next_path})
    notify(
        user=user,
        subject="Confirm your email address",
        body=(
            f"Hello {user.get_short_name()},\n\nConfirm this address to apply for model access:\n{link}\n\n"
            f"The link is valid for {settings.EMAIL_VERIFICATION_MAX_AGE.days} days."
        ),
    )


def user_verify_email(*, token: str, meta: RequestMeta) -> User:
    try:
        data = signing.TimestampSigner(salt=_EMAIL_VERIFY_SALT).unsign_object(
            token, max_age=settings.EMAIL_VERIFICATION_MAX_AGE
        )
    except signing.SignatureExpired:
        raise InvalidInput("This verification link has expired. Sign in and ask for a new one.") from None
    except signing.BadSignature:
        raise InvalidInput("This verification link is not valid. Copy the whole link from the email.") from None
    user = User.objects.filter(pk=data.get("u"), email=data.get("e")).first()
    if user is None:
        raise InvalidInput("This verification link no longer matches an account. Ask for a new one.")
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        audit_record(actor=user, action="user.verify_email", target=user, meta=meta, after={"email": user.email})
    return user


def user_update_profile(*, user: User, full_name: str, affiliation: str, meta: RequestMeta) -> User:
    before = {"full_name": user.full_name, "affiliation": user.affiliation}
    user.full_name = full_name.strip()
    user.affiliation = affiliation.strip()
    user.save(update_fields=["full_name", "affiliation"])
    audit_record(
        actor=user,
        action="user.update_profile",
        target=user,
        meta=meta,
        before=before,
        after={"full_name": user.full_name, "affiliation": user.affiliation},
    )
    return user


def reviewer_group() -> Group:
    from django.contrib.auth.models import Permission

    group, _ = Group.objects.get_or_create(name=settings.REVIEWER_GROUP)
    group.permissions.add(Permission.objects.get(codename="review_application", content_type__app_label="access"))
    return group
