"""Accounts: sign-up, email verification, throttled sign-in, password reset, profile and API keys."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_http_methods, require_POST

from access import selectors, throttle
from access.errors import InvalidInput
from access.forms import ApiKeyForm, LoginForm, ProfileForm, SignupForm, apply_service_error
from access.services import api_keys as api_key_services
from access.services.accounts import user_register, user_send_verification, user_update_profile, user_verify_email
from access.services.audit import RequestMeta

_MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
RESEND_COOLDOWN_SECONDS = 60


def _safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def _local_next(request: HttpRequest) -> str:
    """The `next` path when it stays on this site (a path, not a URL), else ""; it goes into emails."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target.startswith("/") and url_has_allowed_host_and_scheme(target, allowed_hosts=set()):
        return target
    return ""


# --- Sign-up and verification -----------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("profile")
    form = SignupForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                user = user_register(
                    email=data["email"],
                    password=data["password"],
                    full_name=data["full_name"],
                    affiliation=data["affiliation"],
                    meta=RequestMeta.from_request(request),
                    next_path=_local_next(request),
                )
            except InvalidInput as exc:
                apply_service_error(form, exc)
            else:
                login(request, user, backend=_MODEL_BACKEND)
                messages.success(
                    request,
                    f"Welcome! We sent a confirmation link to {user.email}. Open it to verify your address; "
                    "you need a verified address to apply for gated models.",
                )
                return redirect(_safe_next(request, reverse("catalog")))
        status = 400
    return render(
        request, "access/accounts/signup.html", {"form": form, "next": _safe_next(request, "")}, status=status
    )


@require_http_methods(["GET"])
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    # A GET is safe here: the signed token is the secret, and verifying twice changes nothing.
    try:
        user = user_verify_email(token=token, meta=RequestMeta.from_request(request))
    except InvalidInput as exc:
        return render(request, "access/accounts/verify_failed.html", {"message": exc.message}, status=400)
    messages.success(request, f"Thank you: {user.email} is verified.")
    # Back to the page the user signed up from (e.g. the application they started), else the profile.
    target = _local_next(request) or reverse("profile")
    if request.user.is_authenticated:
        return redirect(target)
    return redirect(f"{reverse('login')}?{urlencode({'next': target})}")


@login_required
@require_POST
def verify_resend(request: HttpRequest) -> HttpResponse:
    user = request.user
    if user.email_verified:
        messages.info(request, f"{user.email} is already verified.")
    elif not cache.add(f"verify-resend:{user.pk}", 1, timeout=RESEND_COOLDOWN_SECONDS):
        messages.warning(request, "We just sent you a link. Wait a minute before asking for another one.")
    else:
        user_send_verification(user=user, next_path=_local_next(request))
        messages.success(request, f"We sent a new confirmation link to {user.email}.")
    return redirect(_safe_next(request, reverse("profile")))


# --- Sign-in ----------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST or None)
    context: dict[str, Any] = {"form": form, "next": _safe_next(request, "")}
    if request.method == "GET":
        return render(request, "access/accounts/login.html", context)
    if not form.is_valid():
        return render(request, "access/accounts/login.html", context, status=400)
    user, locked = throttle.authenticate_throttled(
        request, email=form.cleaned_data["email"], password=form.cleaned_data["password"]
    )
    if user is not None:
        login(request, user)
        return redirect(_safe_next(request, reverse(settings.LOGIN_REDIRECT_URL)))
    if locked is None:
        form.add_error(None, "The email or password is incorrect. Check both, or reset your password.")
        return render(request, "access/accounts/login.html", context, status=400)
    form.add_error(None, locked.message)
    response = render(request, "access/accounts/login.html", {**context, "locked": locked}, status=429)
    response["Retry-After"] = str(locked.retry_after_seconds)
    return response


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect(settings.LOGOUT_REDIRECT_URL)


# --- Password reset (Django's views, our templates) -------------------------------------------


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "access/accounts/password_reset_form.html"
    email_template_name = "access/accounts/password_reset_email.txt"
    subject_template_name = "access/accounts/password_reset_subject.txt"
    success_url = reverse_lazy("password_reset_done")

    def form_valid(self, form: Any) -> HttpResponse:
        # Links point at the public site, as the verification emails do, not at whatever Host was sent.
        self.extra_email_context = {"site_url": settings.SITE_URL}
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "access/accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "access/accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        # A new password ends a lockout: the lockout message tells people to do exactly this.
        throttle.reset_account(email=form.user.email)
        return response


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "access/accounts/password_reset_complete.html"


# --- Profile and API keys ---------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def profile(request: HttpRequest) -> HttpResponse:
    # The audit log names the target's model class, so pass the User itself, not the lazy proxy.
    user = request.user._wrapped if hasattr(request.user, "_wrapped") else request.user
    initial = {"full_name": user.full_name, "affiliation": user.affiliation}
    form = ProfileForm(request.POST or None, initial=initial)
    if request.method == "POST":
        if form.is_valid():
            user_update_profile(
                user=user,
                full_name=form.cleaned_data["full_name"],
                affiliation=form.cleaned_data["affiliation"],
                meta=RequestMeta.from_request(request),
            )
            messages.success(request, "Your profile is saved.")
            return redirect("profile")
        return render(request, "access/accounts/profile.html", {"form": form}, status=400)
    return render(request, "access/accounts/profile.html", {"form": form})


def _end_of_day(day: Any) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=timezone.get_current_timezone())


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST or None)
    context: dict[str, Any] = {"form": form}
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            expires_on = form.cleaned_data["expires_at"]
            try:
                key, raw = api_key_services.api_key_create(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    expires_at=_end_of_day(expires_on) if expires_on else None,
                )
            except InvalidInput as exc:
                apply_service_error(form, exc)
            else:
                # Rendered, not redirected: the raw key must never be stored, not even in the session.
                context.update(form=ApiKeyForm(), new_key=key, raw_key=raw)
                status = 200
    context["keys"] = selectors.user_api_keys(user=request.user)
    return render(request, "access/accounts/api_keys.html", context, status=status)


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    # Scoped to the signed-in user's own keys: anyone else's key id is a 404.
    key = selectors.access_api_key(actor=request.user, key_id=key_id)
    api_key_services.api_key_revoke(key=key, actor=request.user)
    messages.success(request, f"API key “{key.name}” ({key.key_prefix}…) is revoked; it no longer works.")
    return redirect("api-keys")
