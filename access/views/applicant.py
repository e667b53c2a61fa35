# Placeholder: replaced by the real views.
from __future__ import annotations

from django.http import Http404
from django.views import View

def application_answer(request, *args, **kwargs):
    raise Http404

def application_detail(request, *args, **kwargs):
    raise Http404

def application_withdraw(request, *args, **kwargs):
    raise Http404

def grant_renew(request, *args, **kwargs):
    raise Http404

def my_applications(request, *args, **kwargs):
    raise Http404

def notifications(request, *args, **kwargs):
    raise Http404
