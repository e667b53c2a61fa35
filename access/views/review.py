# Placeholder: replaced by the real views.
from __future__ import annotations

from django.http import Http404
from django.views import View

def add_note(request, *args, **kwargs):
    raise Http404

def application_audit_csv(request, *args, **kwargs):
    raise Http404

def approve(request, *args, **kwargs):
    raise Http404

def audit_csv(request, *args, **kwargs):
    raise Http404

def bulk_decide(request, *args, **kwargs):
    raise Http404

def detail(request, *args, **kwargs):
    raise Http404

def grant_revoke(request, *args, **kwargs):
    raise Http404

def grants(request, *args, **kwargs):
    raise Http404

def queue(request, *args, **kwargs):
    raise Http404

def reject(request, *args, **kwargs):
    raise Http404

def request_info(request, *args, **kwargs):
    raise Http404

def start_review(request, *args, **kwargs):
    raise Http404
