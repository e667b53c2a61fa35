"""Content-Security-Policy header (Django 5.2 has none built in).

Scripts run only from our own origin or from an inline `<script nonce="{{ request.csp_nonce }}">`
block, so an injected `<script>` or `onclick=` attribute never runs. In development the policy is
sent as Report-Only: the browser console names every violation while Django's debug pages (inline
scripts of their own) keep working.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

NONCE_PLACEHOLDER = "{nonce}"


class ContentSecurityPolicyMiddleware:
    # Both modes, so under ASGI an async view (the gateway) is not run through a waiting thread.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        nonce = secrets.token_urlsafe(18)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
        if self._async:
            return self._acall(request, nonce)
        return self._set_policy(self.get_response(request), nonce)

    async def _acall(self, request: HttpRequest, nonce: str) -> HttpResponse:
        return self._set_policy(await self.get_response(request), nonce)

    @staticmethod
    def _set_policy(response: HttpResponse, nonce: str) -> HttpResponse:
        policy = settings.CONTENT_SECURITY_POLICY
        if policy:
            header = (
                "Content-Security-Policy-Report-Only"
                if settings.CONTENT_SECURITY_POLICY_REPORT_ONLY
                else "Content-Security-Policy"
            )
            # A view may set its own (stricter) policy; keep it.
            response.headers.setdefault(header, policy.replace(NONCE_PLACEHOLDER, nonce))
        return response
