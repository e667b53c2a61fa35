"""`Authorization: Bearer orp_…` API keys. Only the key's SHA-256 is stored."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from access.models import ApiKey


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() not in {"bearer", "token"}:
            return None
        raw = raw.strip()
        if not raw:
            raise exceptions.AuthenticationFailed("The Authorization header has no key after 'Bearer'.")
        key = ApiKey.objects.select_related("user").filter(key_hash=ApiKey.hash(raw)).first()
        if key is None:
            raise exceptions.AuthenticationFailed("Unknown API key. Create one on your account page.")
        if not key.is_usable:
            raise exceptions.AuthenticationFailed("This API key is revoked or expired. Create a new one.")
        if not key.user.is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.")
        # Touch at most once a minute: a hot client must not turn every request into a write.
        now = timezone.now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return key.user, key

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "access.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key from your account page (orp_…)."}
