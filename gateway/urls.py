"""Routes of the gateway: the OpenAI-compatible API under /v1/ and the pages."""

from __future__ import annotations

from django.urls import path

from gateway import api, views

urlpatterns = [
    # The API (`openai.OpenAI(base_url="<portal>/v1", api_key="orp_…")`).
    path("v1/completions", api.completions, name="v1-completions"),
    path("v1/models", api.models, name="v1-models"),
    path("v1/models/<str:model>", api.model_detail, name="v1-model"),
    path("v1/openapi.json", api.openapi_schema, name="v1-openapi"),
    path("v1/<path:rest>", api.not_found, name="v1-not-found"),
    # Users
    path("playground/", views.playground, name="playground"),
    path("usage/", views.my_usage, name="my-usage"),
    # Operators
    path("gateway/deployments/", views.deployments, name="gateway-deployments"),
    path("gateway/deployments/add/", views.deployment_add, name="gateway-deployment-add"),
    path("gateway/deployments/<int:deployment_id>/", views.deployment_detail, name="gateway-deployment"),
    path("gateway/deployments/<int:deployment_id>/drain/", views.deployment_drain, name="gateway-deployment-drain"),
    path("gateway/deployments/<int:deployment_id>/remove/", views.deployment_remove, name="gateway-deployment-remove"),
    path("gateway/usage/", views.usage, name="gateway-usage"),
    path("gateway/usage.csv", views.usage_csv, name="gateway-usage-csv"),
    path("gateway/grants/<int:grant_id>/limits/", views.grant_limits, name="gateway-grant-limits"),
]
