from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from portal import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", include("access.urls.catalog")),
    path("accounts/", include("access.urls.accounts")),
    path("", include("access.urls.applicant")),
    path("review/", include("access.urls.review")),
    path("", include("artifacts.urls")),
    # The OpenAI-compatible API at /v1/ and the gateway pages.
    path("", include("gateway.urls")),
    path("", include("finetune.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file, so the page runs under the CSP.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("access.api.urls")),
    path("api/v1/", include("artifacts.api.urls")),
    path("api/v1/", include("finetune.api.urls")),
]

handler403 = "portal.views.forbidden"
handler404 = "portal.views.not_found"
handler500 = "portal.views.server_error"
