from __future__ import annotations

from django.urls import path

from access.views import catalog as views

urlpatterns = [
    path("models/", views.catalog_index, name="catalog"),
    path("models/<slug:slug>/", views.release_detail, name="release-detail"),
    path("models/<slug:slug>/license/", views.release_license, name="release-license"),
    path("models/<slug:slug>/apply/", views.release_apply, name="release-apply"),
]
