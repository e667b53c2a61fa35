# Placeholder: replaced by the real views.
from __future__ import annotations

from django.http import Http404
from django.views import View

class PasswordResetCompleteView(View):
    def get(self, request, *a, **k):
        raise Http404

class PasswordResetConfirmView(View):
    def get(self, request, *a, **k):
        raise Http404

class PasswordResetDoneView(View):
    def get(self, request, *a, **k):
        raise Http404

class PasswordResetView(View):
    def get(self, request, *a, **k):
        raise Http404

def api_key_revoke(request, *args, **kwargs):
    raise Http404

def api_keys(request, *args, **kwargs):
    raise Http404

def login_view(request, *args, **kwargs):
    raise Http404

def logout_view(request, *args, **kwargs):
    raise Http404

def profile(request, *args, **kwargs):
    raise Http404

def signup(request, *args, **kwargs):
    raise Http404

def verify_email(request, *args, **kwargs):
    raise Http404

def verify_resend(request, *args, **kwargs):
    raise Http404
