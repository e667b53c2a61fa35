# Placeholder: replaced by the real views.
from __future__ import annotations

from django.http import Http404
from django.views import View

def catalog_index(request, *args, **kwargs):
    raise Http404

def release_apply(request, *args, **kwargs):
    raise Http404

def release_detail(request, *args, **kwargs):
    raise Http404

def release_license(request, *args, **kwargs):
    raise Http404
